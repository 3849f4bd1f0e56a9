"""Book dumps: the logical state round-trips, across books, and trading goes on identically."""

import numpy as np
import pytest

from engine.book import NumbaBook
from engine.refbook import ReferenceBook
from engine.workload import generate_workload

ARGS = (3, 2_000, 64, 100)
BOOKS = {"numba": NumbaBook, "reference": ReferenceBook}


@pytest.mark.parametrize(("source", "target"), [(a, b) for a in BOOKS for b in BOOKS])
def test_dump_then_load_into_either_book_gives_same_state_and_same_future(source, target):
    cmds = generate_workload(12_000, seed=21, n_instruments=3, features=True, n_accounts=3)
    original = BOOKS[source](*ARGS)
    original.process_batch(cmds[:8_000])
    restored = BOOKS[target](*ARGS)
    restored.load(original.dump())
    restored.validate()
    assert restored.state_hash() == original.state_hash()
    assert restored.stats() == original.stats()
    assert restored.next_expiry() == original.next_expiry()
    for k in range(8_000, len(cmds)):
        row = cmds[k : k + 1]
        assert np.array_equal(restored.process_batch(row), original.process_batch(row)), k
    assert restored.state_hash() == original.state_hash()


def test_load_refuses_a_dump_that_does_not_fit_or_is_not_a_dump():
    big = NumbaBook(3, 2_000, 64, 100)
    big.process_batch(generate_workload(3_000, seed=1, n_instruments=3))
    assert big.resting_orders() > 10
    with pytest.raises(ValueError, match="does not fit"):
        NumbaBook(3, 10, 64, 100).load(big.dump())
    with pytest.raises(ValueError, match="not a Kilat book dump"):
        NumbaBook(*ARGS).load(b"garbage!")
    with pytest.raises(ValueError, match="needs an empty book"):
        big.load(big.dump())
