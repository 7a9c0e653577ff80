"""[reputation]: its defaults, its checks (each a ConfigError naming the key)."""

from __future__ import annotations

import pytest

from gateway.config import ConfigError, from_dict


def test_defaults() -> None:
    reputation = from_dict({}).reputation
    assert reputation.enabled and reputation.threshold == 70 and not reputation.pause_on_risk
    assert reputation.interval == 300.0 and reputation.setup_interval == 6 * 3600.0


def test_values_are_read() -> None:
    raw = {"threshold": 60, "pause_on_risk": True, "interval": "10m", "setup_interval": "1d"}
    reputation = from_dict({"reputation": raw}).reputation
    assert reputation.threshold == 60 and reputation.pause_on_risk
    assert reputation.interval == 600.0 and reputation.setup_interval == 86400.0


@pytest.mark.parametrize(
    ("raw", "named"),
    [
        ({"threshold": 0}, "reputation.threshold"),
        ({"threshold": 101}, "reputation.threshold"),
        ({"threshold": "70"}, "reputation.threshold"),
        ({"interval": "30s"}, "reputation.interval"),
        ({"pause_on_risk": "yes"}, "reputation.pause_on_risk"),
        ({"nope": 1}, "nope"),
    ],
)
def test_bad_values_name_the_key(raw: dict[str, object], named: str) -> None:
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        from_dict({"reputation": raw})
