"""VERP tokens: they name the message, survive lower- or upper-casing, and cannot be forged."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.bounces.returnpath import ReturnPath, own_message_id
from gateway.config import from_dict
from gateway.errors import ConfigError
from gateway.security.secrets import SecretBox

KEY = b"k" * 32
RP = ReturnPath("bounce.example", KEY)
ID = "msg_0190abcdef01234567890abcdef"


def test_a_token_names_its_message_in_any_case() -> None:
    token = RP.token(ID)
    assert token is not None and token.startswith(ID + "-") and token == token.lower()
    assert RP.message_of(token) == ID
    assert RP.message_of(token.upper()) == ID
    address = RP.address(ID, "app@x.test")
    assert address == f"bounces+{token}@bounce.example" and len(address.split("@")[0]) <= 64
    assert RP.header(ID) == f"X-Postern-Ref: {token}\r\n".encode()


@pytest.mark.parametrize(
    "forged",
    [
        "msg_0190abcdef01234567890abcdee-aaaaaaaaaaaaaaaa",
        "",
        "msg_x",
        "not a token",
    ],
)
def test_a_forged_or_altered_token_names_nothing(forged: str) -> None:
    assert RP.message_of(forged) is None
    token = RP.token(ID)
    assert token is not None
    other = token[:-1] + ("a" if token[-1] != "a" else "b")
    assert RP.message_of(other) is None
    assert ReturnPath("bounce.example", b"o" * 32).message_of(token) is None  # another key


def test_off_keeps_the_clients_sender_and_adds_no_header() -> None:
    off = ReturnPath("", KEY)
    assert off.address(ID, "app@x.test") == "app@x.test" and off.header(ID) == b""


def test_the_key_is_derived_per_purpose() -> None:
    box = SecretBox(b"s" * 32)
    assert box.derive("verp") == SecretBox(b"s" * 32).derive("verp")
    assert box.derive("verp") != box.derive("other") and len(box.derive("verp")) == 32


def test_own_message_ids_are_read_back() -> None:
    assert own_message_id(f"<{ID}@postern.test>") == ID
    assert own_message_id("<abc@elsewhere.test>") is None


def test_bounce_config() -> None:
    config = from_dict({"bounces": {"domain": "Bounce.Example.", "soft_limit": 2}})
    assert config.bounces.domain == "bounce.example" and config.bounces.soft_limit == 2
    with pytest.raises(ConfigError, match=r"bounces\.domain"):
        from_dict({"bounces": {"domain": "not a host"}})


def test_a_bad_rules_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text('[[rule]]\nname = "x"\nclass = "nope"\nreason = "r"\nstatus = "5.1.1"\n')
    with pytest.raises(ConfigError, match=r"rules\.toml"):
        from_dict({"bounces": {"rules_file": str(path)}})
