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
        ('price_band = ["1.00", "1000.00"]', 'price_band = ["1.005", "1000.00"]',
         "instruments[0].price_band[0]: 1.005 is not a multiple of tick size 0.01"),
        ('price_band = ["1.00", "1000.00"]', 'price_band = ["1000.00", "1.00"]',
         "instruments[0].price_band: expected 0 < low < high"),
        ('currency = "EUR"', 'currency = "euro"', "instruments[3].currency: expected a 3-letter ISO 4217 code"),
        ('symbol = "MSFT"', 'symbol = "AAPL"', "instruments[1].symbol: duplicate symbol 'AAPL'"),
        ('stp = "cancel_both"', 'stp = "sometimes"', "Invalid enum value 'sometimes' - at `$.accounts[2].stp`"),
        ('accounts = ["FUND1", "FUND2"]', 'accounts = ["FUND9"]', "users[0].accounts: unknown account 'FUND9'"),
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
