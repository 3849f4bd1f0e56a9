"""The config loader: the embedded defaults load; bad files stop start-up naming file and field."""

from pathlib import Path

import pytest

from engine.model import ConfigError
from kilat.config import DEFAULT_CONFIG, check_config, load_config

GOOD = DEFAULT_CONFIG.read_text()


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "kilat.toml"
    path.write_text(text)
    return path


def test_default_config_loads_with_instruments_in_several_currencies():
    config = load_config()
    ref = check_config(config)
    assert {i.currency for i in config.instruments} >= {"USD", "EUR", "JPY"}
    aapl = ref.instruments["AAPL"]
    assert (aapl.band_low, aapl.band_high) == (100, 100_000)  # 1.00 .. 1000.00 in 0.01 ticks
    assert ref.instruments["ESH4"].band_low == 4000  # 1000.00 in 0.25 ticks


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("lot_size = 100", 'lot_size = "many"', "Expected `int`, got `str` - at `$.instruments[4].lot_size`"),
        ('tick_size = "0.25"', 'tick_size = "-0.25"', "instruments[2].tick_size: expected a positive decimal"),
        ('tick_size = "0.25"', 'tick_size = "1e-999999999"', "instruments[2].tick_size: expected a positive decimal"),
        ('price_band = ["1.00", "1000.00"]', 'price_band = ["sNaN", "1000.00"]',
         "instruments[0].price_band[0]: expected a finite decimal price"),
        ('price_band = ["1.00", "1000.00"]', 'price_band = ["1.005", "1000.00"]',
         "instruments[0].price_band[0]: 1.005 is not a multiple of tick size 0.01"),
        ('price_band = ["1.00", "1000.00"]', 'price_band = ["1000.00", "1.00"]',
         "instruments[0].price_band: expected 0 < low < high"),
        ('currency = "EUR"', 'currency = "euro"', "instruments[3].currency: expected a 3-letter ISO 4217 code"),
        ('symbol = "MSFT"', 'symbol = "AAPL"', "instruments[1].symbol: duplicate symbol 'AAPL'"),
        ('stp = "cancel_both"', 'stp = "sometimes"', "Invalid enum value 'sometimes' - at `$.accounts[2].stp`"),
        ('accounts = ["FUND1", "FUND2", "BLOCK"]', 'accounts = ["FUND9"]', "users[0].accounts: unknown account 'FUND9'"),
        ("max_batch = 512", "max_batch = 512\nmystery = 1", "Object contains unknown field `mystery` - at `$.server`"),
    ],
)
def test_bad_config_is_refused_naming_file_field_and_expectation(tmp_path, old, new, expected):
    assert old in GOOD
    path = write(tmp_path, GOOD.replace(old, new, 1))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value)
    assert expected in str(err.value)


def test_config_that_is_not_toml_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[server\nendpoint ="))


def test_missing_config_file_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the config file"):
        load_config(tmp_path / "absent.toml")


# -- property: any damage to the file is a ConfigError naming the file, never another failure --

import msgspec  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_LINES = GOOD.splitlines()
_VALUE_LINES = [i for i, line in enumerate(_LINES) if "=" in line and not line.lstrip().startswith("#")]
_VALUES = st.one_of(
    st.integers(-(2**70), 2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(lambda f: repr(f).replace("inf", "inf")),
    st.text(max_size=12).map(lambda t: msgspec.json.encode(t).decode()),
    st.sampled_from(['""', "[]", "{}", "true", '["1", "2", "3"]', '"-1"', '"0"', '"1e400"', '"NaN"',
                     '"sNaN"', '"-Infinity"', '"1e-999999999"', '["sNaN", "1"]', '["1", "1e999999999"]']),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(line=st.sampled_from(_VALUE_LINES), value=_VALUES)
def test_any_changed_value_loads_or_is_refused_with_a_config_error(tmp_path, line, value):
    lines = list(_LINES)
    key = lines[line].split("=", 1)[0]
    lines[line] = f"{key}= {value}"
    path = write(tmp_path, "\n".join(lines))
    try:
        config = load_config(path)
    except ConfigError as exc:
        assert str(path) in str(exc)
    else:
        check_config(config)  # what loads is consistent


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(0, len(GOOD)), junk=st.text(max_size=20))
def test_truncated_or_garbled_file_is_a_config_error(tmp_path, cut, junk):
    path = write(tmp_path, GOOD[:cut] + junk)
    try:
        load_config(path)
    except ConfigError as exc:
        assert str(path) in str(exc)
