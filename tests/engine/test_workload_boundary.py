"""Property: any .npz a user hands `kilat bench book` loads or is refused with a WorkloadError."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from engine.workload import WorkloadError, load_workload

NAMES = ["op", "side", "price", "qty", "oid"]
_DTYPES = st.sampled_from([np.int64, np.int32, np.uint64, np.int8, np.float64, np.bool_, "U3", np.complex64])
_SHAPES = st.one_of(st.tuples(st.integers(0, 6)), st.tuples(st.integers(0, 3), st.integers(0, 2)))
_ARRAYS = st.tuples(_DTYPES, _SHAPES).flatmap(lambda ds: hnp.arrays(ds[0], ds[1]))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(arrays=st.dictionaries(st.sampled_from([*NAMES, "extra"]), _ARRAYS, max_size=6))
def test_any_npz_loads_or_is_a_workload_error(tmp_path, arrays):
    path = tmp_path / "flow.npz"
    np.savez(path, **arrays)
    try:
        loaded = load_workload(path)
    except WorkloadError as exc:
        assert str(exc)  # says what was expected
    else:
        assert set(loaded) >= set(NAMES)
        assert len({len(v) for v in loaded.values()}) == 1


def test_a_file_that_is_not_an_npz_is_a_workload_error(tmp_path):
    path = tmp_path / "flow.npz"
    path.write_bytes(b"not a zip file at all")
    with pytest.raises(WorkloadError, match=str(path)):
        load_workload(path)
