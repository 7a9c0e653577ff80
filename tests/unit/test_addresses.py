"""Envelope address checks (gateway.addresses): pure functions, no I/O."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.addresses import (
    breaks_a_command,
    envelope_problem,
    has_control,
    mailbox_key,
    normalise,
)


@pytest.mark.parametrize(
    "address",
    [
        "alice@example.com",
        "Alice.Smith+tag@mail.example.co.uk",
        "o'brien@example.com",
        "x!#$%&'*+/=?^_`{|}~-y@example.com",
        "user@sub-domain.example-site.com",
        "user@localhost",
        "用户@例子.广告",  # UTF-8 local part, IDN domain (SMTPUTF8)
        "δοκιμή@παράδειγμα.δοκιμή",
        "josé@bücher.de",
        "user@xn--bcher-kva.de",
        '"john doe"@example.com',  # quoted local part
        '"a@b"@example.com',
        '"quote\\"inside"@example.com',
        "user@[192.0.2.1]",  # address literals
        "user@[IPv6:2001:db8::1]",
        "a" * 64 + "@example.com",
        "a@" + ".".join(["b" * 63] * 3) + "." + "c" * 57,  # 2 + 249 = 251 bytes
    ],
)
def test_good_addresses(address: str) -> None:
    assert envelope_problem(address) is None


@pytest.mark.parametrize(
    "address",
    [
        "alice@example.com\r\nRCPT TO:<evil@example.com>",
        "alice@example.com\x01",
        "ali\x00ce@example.com",
        "alice@exa\tmple.com",
        "alice\x7f@example.com",
        "alice@example.com\n",
    ],
)
def test_ascii_control_characters_are_refused(address: str) -> None:
    assert has_control(address)
    assert envelope_problem(address) is not None


@pytest.mark.parametrize(
    "address",
    [
        "ali\x85ce@example.com",  # NEL, a C1 control
        "alice@exam\x9bple.com",  # CSI, a C1 control
        "alice\x80@example.com",
    ],
)
def test_c1_control_characters_are_refused(address: str) -> None:
    assert envelope_problem(address) is not None


def test_invalid_utf8_is_refused() -> None:
    # What surrogateescape decoding makes of the invalid byte 0xff: not an address.
    assert envelope_problem("ali\udcffce@example.com") is not None


@pytest.mark.parametrize(
    "address",
    [
        "",
        "alice",
        "alice.example.com",
        "@example.com",
        "alice@",
        "@",
        "al ice@example.com",
        "alice@exa mple.com",
        " alice@example.com",
        "alice@example.com ",
        "a@b@c",
        "a@b@example.com",
        "<alice@example.com>",
        "alice@example.com>",
        ".alice@example.com",
        "alice.@example.com",
        "ali..ce@example.com",
        '"unterminated@example.com',
        '"a"b"@example.com',
        '"trailing\\"@example.com',
        "alice@-example.com",
        "alice@example-.com",
        "alice@exa_mple.com",
        "alice@example..com",  # empty labels
        "alice@.example.com",
        "alice@.",
        "alice@example.com..",
        "a" * 65 + "@example.com",  # local part over 64 bytes
        "é" * 33 + "@example.com",  # 66 bytes of UTF-8
        "a@" + "b" * 64 + ".com",  # label over 63
        "a@" + ".".join(["b" * 63] * 4),  # 256 bytes in all
        "alice@[192.0.2.1",
        "alice@[not an ip]",
        "alice@[...]",
        "alice@[999.1.2.3]",
        "alice@[IPv6:zz::1]",
    ],
)
def test_bad_addresses(address: str) -> None:
    assert envelope_problem(address) is not None


def test_trailing_dot_cannot_dodge_the_suppression_key() -> None:
    """`a@example.com.` is the same mailbox: refuse it, or give it the same comparison key."""
    dotted = "alice@Example.COM."
    assert envelope_problem(dotted) is not None or normalise(dotted) == "alice@example.com"


def test_normalise_lowercases_the_domain_only() -> None:
    assert normalise("Alice.Smith@Example.COM") == "Alice.Smith@example.com"
    assert normalise("alice@example.com") == "alice@example.com"
    assert normalise('"John Doe"@EXAMPLE.com') == '"John Doe"@example.com'
    assert normalise('"a@B"@EXAMPLE.com') == '"a@B"@example.com'
    assert normalise("José@BÜCHER.de") == "José@xn--bcher-kva.de"
    assert normalise("NoAtSign") == "noatsign"


def test_normalise_is_idempotent() -> None:
    for address in ["Alice@Example.COM", '"X Y"@Z.org', "用户@例子.广告"]:
        assert normalise(normalise(address)) == normalise(address)


def test_normalise_treats_idn_forms_alike() -> None:
    """The U-label and A-label spellings of a domain are the same mailbox (suppression key)."""
    assert normalise("josé@bücher.de") == normalise("josé@xn--bcher-kva.de")


@pytest.mark.parametrize(
    ("spelling", "key"),
    [
        ("GONE@EXAMPLE.ORG", "gone@example.org"),
        ('"gone"@example.org', "gone@example.org"),
        ('"Gone"@Example.ORG.', "gone@example.org"),
        ('"John Doe"@EXAMPLE.com', "john doe@example.com"),
        ('"a\\"b"@x.test', 'a"b@x.test'),  # a quoted pair stands for its character
        ("José@BÜCHER.de", "josé@xn--bcher-kva.de"),
        ("NoAtSign", "noatsign"),
    ],
)
def test_mailbox_key_unquotes_and_lowercases_the_whole_address(spelling: str, key: str) -> None:
    assert mailbox_key(spelling) == key
    assert mailbox_key(key) == key  # idempotent


_PIECES = st.sampled_from(['"', "\\", "@", ".", "a", "B", " ", "é", "İ", "ß", "ü", "ｘ", "-"])
_TEXT = st.lists(st.one_of(_PIECES, st.text(max_size=3)), max_size=12).map("".join)
_QUOTED = st.builds(lambda local, domain: f'"{local}"@{domain}', _TEXT, _TEXT)


@settings(max_examples=2000, deadline=None)
@given(st.one_of(_TEXT, _QUOTED, st.builds(lambda a, b: f"{a}@{b}", _TEXT, _TEXT)))
def test_mailbox_key_is_idempotent(address: str) -> None:
    """A key is its own key: rows stored under a key (or re-keyed by an upgrade, or by a
    cache load) match whatever spelling is looked up, however often it is keyed."""
    key = mailbox_key(address)
    assert mailbox_key(key) == key


def test_nested_quotes_key_alike() -> None:
    assert mailbox_key('"\\"a\\""@x.test') == mailbox_key('"a"@x.test') == "a@x.test"


@pytest.mark.parametrize("char", ["\r", "\n", "\x00", "\t", "\x7f"])
def test_c0_and_del_break_an_smtp_command(char: str) -> None:
    assert breaks_a_command(f"a{char}b@example.com")
    assert has_control(f"a{char}b@example.com")


def test_c1_is_control_but_does_not_break_a_command() -> None:
    """Delivery's last check is about the wire; the doors refuse C1 as well."""
    assert has_control("a\x85b@example.com")
    assert not breaks_a_command("a\x85b@example.com")
