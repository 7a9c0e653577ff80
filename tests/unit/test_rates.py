"""One rate grammar (gateway.rates) for `[http] rate_limit` and a pool's `rate`: the two
config keys accept and refuse the same strings (the pattern /openapi.json states for it:
tests/unit/test_stated_rules.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import ConfigError, load
from gateway.rates import Rate, parse_rate

SAMPLES = [
    "100/hour", "1000/h", "50/s", "50/sec", "14/seconds", "100/min", "100/m", "3/minutes",
    "20/10s", "1000/24h", "1/1440min", "1/86400s", " 7/MIN\t", "0100/s", "1000000/s",
    "0/s", "1000001/s", "1/86401s", "1/25h", "1/1441m", "1/0s", "5/d", "5/day", "10",
    "/s", "1.5/s", "-1/s", "10 per minute", "1/ s", "٣/s", "1/s\n", "",
]  # fmt: skip


def _loads(tmp_path: Path, text: str) -> bool:
    path = tmp_path / "postern.toml"
    path.write_text(text, encoding="utf-8")
    try:
        load(path)
    except ConfigError:
        return False
    return True


def _parses(text: str) -> bool:
    try:
        return parse_rate(text) is not None
    except ValueError:
        return False


@pytest.mark.parametrize("rate", SAMPLES)
def test_http_rate_limit_and_pool_rate_take_the_same_strings(tmp_path: Path, rate: str) -> None:
    quoted = rate.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t")
    http = _loads(tmp_path, f'[http]\nrate_limit = "{quoted}"\n')
    pool = _loads(
        tmp_path,
        f'[[pools]]\nname = "p"\nhost = "127.0.0.1"\nport = 25\nencryption = "none"\n'
        f'rate = "{quoted}"\n',
    )
    assert http == _parses(rate), rate
    assert pool == (http or rate.strip(" \t") == ""), rate  # a pool may have no rate


def test_the_forms_of_one_rate() -> None:
    assert parse_rate("100/hour") == parse_rate("100/h") == Rate(100, 3600.0)
    assert parse_rate("20/10s") == Rate(20, 10.0)
    assert parse_rate(" \t") is None
