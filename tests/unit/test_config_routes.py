"""`[[routes]]` in the config: routes by recipient domain, and every refusal one line naming
the entry and its key."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import ConfigError, load
from gateway.routing import DomainRoute


def _load(tmp_path: Path, text: str) -> tuple[DomainRoute, ...]:
    path = tmp_path / "postern.toml"
    path.write_text(text)
    return load(path).routes


def _refusal(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, text)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_routes_load_normalised_in_order(tmp_path: Path) -> None:
    text = (
        '[[routes]]\nrecipient_domain = "Gmail.com"\npool = "gmail-relay"\n'
        '[[routes]]\nrecipient_domain = ".example.com"\nip_pool = "bulk"\n'
    )
    assert _load(tmp_path, text) == (
        DomainRoute("gmail.com", pool="gmail-relay", source="config"),
        DomainRoute(".example.com", ip_pool="bulk", source="config"),
    )
    assert _load(tmp_path, "") == ()


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('[[routes]]\npool = "x"\n', "routes[0]: missing required key 'recipient_domain'"),
        ('[[routes]]\nrecipient_domain = "a.com"\n', "exactly one of pool"),
        (
            '[[routes]]\nrecipient_domain = "a.com"\npool = "x"\nip_pool = "y"\n',
            "exactly one of pool",
        ),
        ('[[routes]]\nrecipient_domain = "a b.com"\npool = "x"\n', "routes[0].recipient_domain"),
        ('[[routes]]\nrecipient_domain = 5\npool = "x"\n', "routes[0].recipient_domain"),
        ('[[routes]]\nrecipient_domain = "a.com"\npool = ""\n', "pool is empty"),
        ('[[routes]]\nrecipient_domain = "a.com"\nhost = "x"\n', "unknown key 'host'"),
        ('routes = "gmail.com"\n', "[[routes]]: expected an array of tables"),
        (
            '[[routes]]\nrecipient_domain = "a.com"\npool = "x"\n'
            '[[routes]]\nrecipient_domain = "A.com"\nip_pool = "y"\n',
            "'a.com' is given twice (routes[0] and routes[1])",
        ),
    ],
)
def test_refusals_name_the_entry_and_key(tmp_path: Path, text: str, words: str) -> None:
    assert words in _refusal(tmp_path, text)
