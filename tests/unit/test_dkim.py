"""DKIM keys, records and signing, checked with dkimpy's own verifier against the exact
zone-file text that `postern dkim generate` prints (parsed by a real zone parser)."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import re
from collections.abc import Callable

import dkim as dkimpy
import dns.zone
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from dkim.canonicalization import Relaxed
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.dkim.canonical import (
    parse_message,
    relaxed_body,
    relaxed_header_value,
    select_fields,
    signed_header_names,
)
from gateway.dkim.errors import DkimError, KeyFormatError, MessageFormatError, NotCanonicalError
from gateway.dkim.keys import DnsRecord, KeyPair, dns_record, generate_key
from gateway.dkim.names import default_selector, from_domain, normalise_domain, normalise_selector
from gateway.dkim.signer import Signer

DOMAIN = "example.com"
MESSAGE = (
    b"From: Example App <app@example.com>\r\n"
    b"To: Alice <alice@example.net>, bob@example.org\r\n"
    b"Cc: carol@example.org\r\n"
    b"Subject: Your receipt\r\n"
    b"Date: Mon, 02 Jun 2025 10:00:00 +0000\r\n"
    b"Message-ID: <abc123@example.com>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"X-Mailer: something unsigned\r\n"
    b"\r\n"
    b"Hello Alice,\r\n"
    b"\r\n"
    b"thank you.\r\n"
)


@pytest.fixture(scope="module")
def rsa_key() -> KeyPair:
    return generate_key("rsa")


@pytest.fixture(scope="module")
def ed_key() -> KeyPair:
    return generate_key("ed25519")


@pytest.fixture(params=["rsa", "ed25519"])
def key(request: pytest.FixtureRequest, rsa_key: KeyPair, ed_key: KeyPair) -> KeyPair:
    return rsa_key if request.param == "rsa" else ed_key


def published(*zone_lines: str) -> Callable[..., bytes | None]:
    """A dkimpy `dnsfunc` serving the TXT records of zone-file lines, parsed as a zone."""
    zone = dns.zone.from_text(
        "$TTL 3600\n" + "\n".join(zone_lines) + "\n",
        origin=DOMAIN + ".",
        relativize=False,
        check_origin=False,
    )
    records: dict[str, bytes] = {}
    for name, rdataset in zone.iterate_rdatasets("TXT"):
        records[name.to_text().lower()] = b"".join(next(iter(rdataset)).strings)

    def dnsfunc(name: bytes | str, timeout: float = 5) -> bytes | None:
        text = name.decode() if isinstance(name, bytes) else name
        return records.get(text.lower())

    return dnsfunc


def verifies(message: bytes, *zone_lines: str) -> bool:
    return bool(dkimpy.verify(message, dnsfunc=published(*zone_lines)))


def tags(signature: bytes) -> dict[str, str]:
    value = signature.split(b":", 1)[1].decode()
    unfolded = re.sub(r"\s+", "", value)
    return dict(item.split("=", 1) for item in unfolded.split(";") if item)


# --- keys and records --------------------------------------------------------------------


def test_rsa_key_is_2048_bits_by_default(rsa_key: KeyPair) -> None:
    private = serialization.load_pem_private_key(rsa_key.private_pem, None)
    assert isinstance(private, rsa.RSAPrivateKey)
    assert private.key_size == 2048
    assert rsa_key.private_pem.startswith(b"-----BEGIN PRIVATE KEY-----")


def test_ed25519_public_key_is_the_raw_32_bytes(ed_key: KeyPair) -> None:
    private = serialization.load_pem_private_key(ed_key.private_pem, None)
    assert isinstance(private, ed25519.Ed25519PrivateKey)
    assert len(base64.b64decode(ed_key.public_key)) == 32


def test_key_repr_never_shows_the_private_key(rsa_key: KeyPair) -> None:
    assert "PRIVATE" not in repr(rsa_key)


def test_too_small_or_unknown_keys_are_refused() -> None:
    with pytest.raises(KeyFormatError):
        generate_key("rsa", bits=512)
    with pytest.raises(KeyFormatError, match="more than 4096 bits"):
        generate_key("rsa", bits=8192)  # refused before any prime is sought
    with pytest.raises(KeyFormatError):
        generate_key("dsa")
    with pytest.raises(KeyFormatError):
        Signer(DOMAIN, "s1", b"-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n")


def test_record_value_and_name(key: KeyPair) -> None:
    record = dns_record("s1", DOMAIN, key.algorithm, key.public_key)
    assert record.name == "s1._domainkey.example.com"
    assert record.value == f"v=DKIM1; k={key.algorithm}; p={key.public_key}"


def test_rsa_record_is_split_into_strings_of_at_most_255_bytes(rsa_key: KeyPair) -> None:
    record = dns_record("s1", DOMAIN, "rsa", rsa_key.public_key)
    assert len(record.value) > 255
    assert len(record.strings) == 2
    assert all(len(part.encode()) <= 255 for part in record.strings)
    assert "".join(record.strings) == record.value
    line = record.zone()
    assert line.startswith('s1._domainkey.example.com. IN TXT "v=DKIM1; k=rsa; p=')
    assert line.count('"') == 4


def test_zone_line_parses_back_to_the_whole_value(key: KeyPair) -> None:
    record = dns_record("s1", DOMAIN, key.algorithm, key.public_key)
    served = published(record.zone(ttl=3600))
    assert served(b"s1._domainkey.example.com.") == record.value.encode()


def test_names_are_normalised_and_checked() -> None:
    assert normalise_domain("Example.COM.") == "example.com"
    assert normalise_domain("bücher.example") == "xn--bcher-kva.example"
    assert normalise_selector("Mail-2025.A") == "mail-2025.a"
    for bad in ("", "-x", "a b", "x_y", "a..b"):
        with pytest.raises(DkimError):
            normalise_selector(bad)
    for bad in ("", "exa mple.com", "-a.com", "a..com"):
        with pytest.raises(DkimError):
            normalise_domain(bad)


def test_default_selector_avoids_taken_names() -> None:
    day = dt.date(2025, 6, 2)
    assert default_selector([], day) == "p20250602"
    assert default_selector(["p20250602"], day) == "p20250602-2"
    assert default_selector(["P20250602", "p20250602-2"], day) == "p20250602-3"


def test_from_domain() -> None:
    assert from_domain(MESSAGE) == "example.com"
    assert from_domain(b"From: =?utf-8?q?J=C3=B6rg?= <j@Mail.Example.COM>\r\n\r\n") == (
        "mail.example.com"
    )
    assert from_domain(b"From: a@x.test,\r\n b@x.test\r\n\r\nbody\r\n") == "x.test"
    assert from_domain(b"From: a@x.test, b@y.test\r\n\r\n") is None
    assert from_domain(b"To: a@x.test\r\n\r\n") is None
    assert from_domain(b"From: a@x.test\r\nFrom: b@x.test\r\n\r\n") is None
    assert from_domain(b"From: undisclosed\r\n\r\n") is None


# --- signing -------------------------------------------------------------------------------


def signer_for(key: KeyPair, selector: str = "s1") -> tuple[Signer, DnsRecord]:
    signer = Signer(DOMAIN, selector, key.private_pem)
    return signer, dns_record(selector, DOMAIN, key.algorithm, key.public_key)


def test_signature_verifies_against_the_printed_record(key: KeyPair) -> None:
    signer, record = signer_for(key)
    signed = signer.signed(MESSAGE)
    assert verifies(signed, record.zone())
    assert signer.record() == record


def test_signature_header_tags(key: KeyPair) -> None:
    signer, _ = signer_for(key)
    header = signer.sign(MESSAGE, now=1_750_000_000)
    assert header.startswith(b"DKIM-Signature: ")
    assert header.endswith(b"\r\n")
    assert header.count(b"\n") == header.count(b"\r\n")
    assert all(len(line) <= 78 for line in header.split(b"\r\n"))
    found = tags(header)
    assert found["a"] == ("rsa-sha256" if key.algorithm == "rsa" else "ed25519-sha256")
    assert found["c"] == "relaxed/relaxed"
    assert (found["d"], found["s"], found["t"]) == (DOMAIN, "s1", "1750000000")
    # the RFC 6376 §5.4 set, only the fields present, From over-signed; X-Mailer not signed
    assert found["h"].split(":") == [
        "from", "to", "cc", "subject", "date", "message-id", "mime-version", "content-type",
        "from",
    ]  # fmt: skip


def test_signed_header_names_cover_the_list_headers() -> None:
    names = signed_header_names(
        [b"List-Unsubscribe-Post", b"Reply-To", b"FROM", b"List-Unsubscribe", b"Received"]
    )
    assert names == (b"from", b"reply-to", b"list-unsubscribe", b"list-unsubscribe-post", b"from")


def test_eight_bit_body_and_headers_and_long_lines_verify(key: KeyPair) -> None:
    signer, record = signer_for(key)
    header = (
        b"From: =?utf-8?q?J=C3=B6rg?= <app@example.com>\r\n"
        b"To: \xc3\xa9lodie@example.net\r\n"
        b"Subject: Gr\xc3\xbc\xc3\x9fe aus K\xc3\xb6ln \xe2\x9c\x93\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n"
        b"\r\n"
    )
    lines = [
        b"\xc3\xa4\xc3\xb6\xc3\xbc " * 20,
        b"x" * 998,  # the longest line SMTP allows
        b"\xe2\x82\xac" * 332,  # 996 bytes of 3-byte characters
        b"\ttabs\t and  runs   of spaces, trailing spaces   ",
        b"",
        b"",
    ]
    message = header + b"\r\n".join(lines) + b"\r\n"
    assert verifies(signer.signed(message), record.zone())


def test_relaxed_canonicalisation_survives_refolding(key: KeyPair) -> None:
    signer, record = signer_for(key)
    signed = signer.signed(MESSAGE)
    refolded = signed.replace(b"Subject: Your receipt", b"Subject:   Your\r\n\treceipt  ")
    assert verifies(refolded, record.zone())


def test_tampering_breaks_the_signature(key: KeyPair) -> None:
    signer, record = signer_for(key)
    signed = signer.signed(MESSAGE)
    assert not verifies(signed.replace(b"receipt", b"invoice"), record.zone())
    assert not verifies(signed.replace(b"thank you.", b"pay here."), record.zone())
    assert not verifies(signed.replace(b"Cc: carol", b"Cc: mallory"), record.zone())


def test_an_added_from_header_breaks_verification(key: KeyPair) -> None:
    signer, record = signer_for(key)
    signed = signer.signed(MESSAGE)
    assert tags(signer.sign(MESSAGE))["h"].split(":").count("from") == 2
    forged_on_top = signed.replace(
        b"From: Example App", b"From: Security Team <evil@attacker.test>\r\nFrom: Example App"
    )
    forged_at_end = signed.replace(b"\r\n\r\n", b"\r\nFrom: evil@attacker.test\r\n\r\n", 1)
    assert not verifies(forged_on_top, record.zone())
    assert not verifies(forged_at_end, record.zone())


def test_an_added_unsigned_header_keeps_the_signature_valid(key: KeyPair) -> None:
    signer, record = signer_for(key)
    signed = signer.signed(MESSAGE)
    assert verifies(b"Received: from relay.test\r\n" + signed, record.zone())


def test_unsigned_fields_between_signed_ones_and_repeats_verify(key: KeyPair) -> None:
    """Only signed fields are canonicalised: unsigned ones between them (Received, X-*) and
    a repeated signed field must not change which occurrences are hashed."""
    signer, record = signer_for(key)
    message = (
        b"Received: from a.test\r\n\tby b.test\r\nTo: ann@example.com\r\n"
        b"X-Mailer:  odd   spacing\r\n"
        b"From: App <app@example.com>\r\nTo:   bob@example.com\r\nReceived: from c.test\r\n"
        b"Subject:  Hello\r\n\tworld\r\n\r\nbody\r\n"
    )
    signed = signer.signed(message)
    assert tags(signer.sign(message))["h"].split(":").count("to") == 2
    assert verifies(signed, record.zone())
    assert not verifies(signed.replace(b"To:   bob", b"To:   eve"), record.zone())


def test_key_rotation_keeps_old_mail_verifiable(rsa_key: KeyPair, ed_key: KeyPair) -> None:
    old, old_record = signer_for(rsa_key, "2024")
    new, new_record = signer_for(ed_key, "2025")
    signed_before = old.signed(MESSAGE)
    signed_after = new.signed(MESSAGE)
    both = (old_record.zone(), new_record.zone())
    assert verifies(signed_before, *both)
    assert verifies(signed_after, *both)
    assert tags(signed_before.split(b"\r\nFrom:")[0])["s"] == "2024"
    # once the old record is withdrawn, only mail signed with the new selector verifies
    assert not verifies(signed_before, new_record.zone())
    assert verifies(signed_after, new_record.zone())


def test_another_keys_record_does_not_verify(ed_key: KeyPair) -> None:
    signer, _ = signer_for(ed_key)
    other = generate_key("ed25519")
    assert not verifies(
        signer.signed(MESSAGE), dns_record("s1", DOMAIN, "ed25519", other.public_key).zone()
    )


@pytest.mark.parametrize(
    "content",
    [
        b"From: app@example.com\nSubject: x\n\nbody\n",
        b"From: app@example.com\r\nSubject: x\r\n\r\nbare\rCR\r\n",
        b"From: app@example.com\r\nSubject: x\r\n\r\nbare\nLF\r\n",
        b"From: app@example.com\r\nSubject: x\r\n\r\nNUL\0\r\n",
    ],
)
def test_non_canonical_content_is_refused(rsa_key: KeyPair, content: bytes) -> None:
    signer, _ = signer_for(rsa_key)
    with pytest.raises(NotCanonicalError):
        signer.sign(content)


def test_message_without_from_is_refused(ed_key: KeyPair) -> None:
    signer, _ = signer_for(ed_key)
    with pytest.raises(MessageFormatError):
        signer.sign(b"To: a@example.net\r\nSubject: x\r\n\r\nbody\r\n")
    with pytest.raises(MessageFormatError):
        signer.sign(b"From app@example.com\r\nnot a header\r\n\r\nbody\r\n")


def test_message_without_body_verifies(key: KeyPair) -> None:
    signer, record = signer_for(key)
    message = b"From: app@example.com\r\nSubject: empty\r\n"
    assert verifies(signer.signed(message), record.zone())


def test_signing_does_not_change_the_message(rsa_key: KeyPair) -> None:
    signer, _ = signer_for(rsa_key)
    signed = signer.signed(MESSAGE)
    assert signed.endswith(MESSAGE)
    assert signed.count(b"DKIM-Signature:") == 1


def test_body_hash_and_header_list_match_dkimpys_own_signer(rsa_key: KeyPair) -> None:
    """The same message through dkimpy's pure-Python signer: same bh= and h=, both verify."""
    signer, record = signer_for(rsa_key)
    private = serialization.load_pem_private_key(rsa_key.private_pem, None)
    pkcs1 = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    reference = dkimpy.DKIM(MESSAGE)
    include = signed_header_names(name for name, _ in reference.headers)
    theirs = reference.sign(
        b"s1", DOMAIN.encode(), pkcs1, canonicalize=(b"relaxed", b"relaxed"),
        include_headers=list(include),
    )  # fmt: skip
    ours = signer.sign(MESSAGE)
    assert tags(ours)["bh"] == tags(theirs)["bh"]
    assert tags(ours)["h"] == tags(theirs)["h"]
    assert verifies(theirs + MESSAGE, record.zone())
    assert verifies(ours + MESSAGE, record.zone())


@given(
    st.lists(
        st.sampled_from([b"a", b"b", b" ", b"\t", b"\r\n", b"\xc3\xa9", b".", b"  "]),
        max_size=60,
    )
)
@settings(max_examples=400, deadline=None)
def test_relaxed_body_is_byte_for_byte_dkimpys(parts: list[bytes]) -> None:
    body = b"".join(parts)
    assert relaxed_body(body) == Relaxed.canonicalize_body(body)


# --- the signer's own header parsing and canonicalisation, held to dkimpy's ----------------

FIELD_NAMES = [b"From", b"from", b"To", b"Cc", b"Subject", b"Date", b"Message-ID", b"Reply-To",
               b"X-Mailer", b"Received", b"List-Unsubscribe", b"Content-Type"]  # fmt: skip
VALUE_PARTS = [b"a", b"b@example.com", b" ", b"\t", b"  ", b"\r\n ", b"\r\n\t", b":", b";",
               b"\xc3\xa9", b"=?utf-8?q?x?="]  # fmt: skip
fields_strategy = st.lists(
    st.tuples(
        st.sampled_from(FIELD_NAMES),
        st.lists(st.sampled_from(VALUE_PARTS), max_size=12).map(b"".join),
    ),
    min_size=1,
    max_size=12,
)


def header_block(fields: list[tuple[bytes, bytes]]) -> bytes:
    # a value must not end with a fold (that would be an empty continuation line)
    return b"".join(name + b":" + value.rstrip(b"\r\n \t") + b"\r\n" for name, value in fields)


@given(fields_strategy, st.lists(st.sampled_from([b"x", b" ", b"\r\n"]), max_size=20))
@settings(max_examples=300, deadline=None)
def test_header_parse_is_dkimpys_rfc822_parse(
    fields: list[tuple[bytes, bytes]], body_parts: list[bytes]
) -> None:
    block = header_block(fields)
    body = b"".join(body_parts)
    theirs, their_body = dkimpy.rfc822_parse(block + b"\r\n" + body)
    ours, our_body = parse_message(block + b"\r\n" + body)
    assert [(bytes(n), bytes(v)) for n, v in theirs] == ours
    assert their_body == our_body


@pytest.mark.parametrize(
    "block",
    [b"From a@b Mon Jan  1 00:00:00 2024\r\nFrom: a@example.com\r\n",  # mbox line: skipped
     b"Subject : spaced name\r\n", b"no colon here\r\n", b": empty name\r\n"],
)  # fmt: skip
def test_header_parse_agrees_with_dkimpy_on_odd_lines(block: bytes) -> None:
    try:
        theirs = [(bytes(n), bytes(v)) for n, v in dkimpy.rfc822_parse(block + b"\r\n")[0]]
    except dkimpy.MessageFormatError:
        with pytest.raises(MessageFormatError):
            parse_message(block + b"\r\n")
    else:
        assert parse_message(block + b"\r\n")[0] == theirs


def test_a_header_starting_with_a_continuation_line_is_a_format_error() -> None:
    with pytest.raises(MessageFormatError):
        parse_message(b" folded: x\r\nFrom: a@example.com\r\n\r\nbody\r\n")


@given(fields_strategy)
@settings(max_examples=300, deadline=None)
def test_relaxed_header_values_and_selection_are_dkimpys(
    fields: list[tuple[bytes, bytes]],
) -> None:
    parsed, _ = parse_message(header_block(fields) + b"\r\n")
    include = signed_header_names(name for name, _ in parsed)
    theirs = dkimpy.select_headers(Relaxed.canonicalize_headers(parsed), list(include))
    ours = [(name, relaxed_header_value(value) + b"\r\n")
            for name, value in select_fields(parsed, include)]  # fmt: skip
    assert ours == theirs


@given(fields_strategy, st.lists(st.sampled_from([b"x", b" ", b"\t", b"\r\n"]), max_size=30))
@settings(max_examples=150, deadline=None)
def test_any_header_set_verifies_with_dkimpy(
    ed_key: KeyPair, fields: list[tuple[bytes, bytes]], body_parts: list[bytes]
) -> None:
    message = b"From: App <app@example.com>\r\n" + header_block(fields) + b"\r\n"
    message += b"".join(body_parts)
    signer, record = signer_for(ed_key)
    header = signer.sign(message)
    assert verifies(header + message, record.zone())
    assert all(len(line) <= 78 for line in header.split(b"\r\n"))


def test_long_names_fold_only_at_spaces_and_still_verify(rsa_key: KeyPair) -> None:
    """A 63-character selector and a long domain leave little room on a line: folds still
    fall only between tags, in h= or inside b=."""
    domain = "a" * 60 + ".example.com"
    selector = "s" * 63
    signer = Signer(domain, selector, rsa_key.private_pem)
    message = MESSAGE.replace(b"example.com>", domain.encode() + b">", 1)
    header = signer.sign(message)
    assert verifies(header + message, signer.record().zone())
    assert all(len(line) <= 78 for line in header.split(b"\r\n"))
    assert tags(header)["s"] == selector


async def test_sign_async_signs_as_sign_does(key: KeyPair) -> None:
    signer, record = signer_for(key)
    header = await signer.sign_async(MESSAGE, now=1_750_000_000)
    assert header == signer.sign(MESSAGE, now=1_750_000_000)  # both schemes are deterministic
    assert verifies(header + MESSAGE, record.zone())


async def test_sign_async_prepares_a_large_message_in_a_thread_and_it_verifies(
    key: KeyPair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over 1 MiB the message is hashed in a thread; the key operation stays on the loop."""
    large = MESSAGE + b"A line of a large message, long enough to count.\r\n" * 25_000
    threads: list[object] = []
    real = asyncio.to_thread

    async def counted(work: Callable[..., object], *args: object) -> object:
        threads.append(work)
        return await real(work, *args)

    monkeypatch.setattr(asyncio, "to_thread", counted)
    signer, record = signer_for(key)
    header = await signer.sign_async(large, now=1_750_000_000)
    assert len(threads) == 1 and len(large) > 1 << 20
    assert header == signer.sign(large, now=1_750_000_000)
    assert verifies(header + large, record.zone())
