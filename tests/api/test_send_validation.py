"""POST /v1/send input checks: every limit of seed 001 at the bound and one past it,
malformed JSON and wrong types, address syntax, and header injection attempts. A refusal is
always a 400 in the error shape, and nothing reaches the sink.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.api import Shared, auth, payload

pytestmark = [pytest.mark.timeout(30), pytest.mark.asyncio(loop_scope="module")]

SANDBOX = {"X-Postern-Sandbox": "true"}


def boxes(count: int, prefix: str) -> list[dict[str, str]]:
    return [{"email": f"{prefix}{i}@example.test"} for i in range(count)]


def assert_400(response: Any, field: str | None = None) -> None:
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["success"] is False
    assert body["code"] == "invalid_request"
    assert body["details"], body
    if field is not None:
        fields = [detail["field"] for detail in body["details"]]
        assert any(f == field or f.startswith(field) for f in fields), fields


# --- limits: at the bound accepted, one past it refused ------------------------------------

LIMITS = [
    ("to", lambda n: boxes(n, "to"), 100),
    ("cc", lambda n: boxes(n, "cc"), 50),
    ("bcc", lambda n: boxes(n, "bcc"), 50),
    ("subject", lambda n: "s" * n, 998),
    ("idempotency_key", lambda n: "k" * n, 128),
    ("tags", lambda n: [f"t{i}" for i in range(n)], 10),
]


@pytest.mark.parametrize(("field", "make", "limit"), LIMITS, ids=[case[0] for case in LIMITS])
async def test_limit_is_inclusive_and_one_more_is_400(
    shared: Shared, field: str, make: Any, limit: int
) -> None:
    before = len(shared.sink.messages)
    at_limit = await shared.api.send(
        payload(**{field: make(limit)}), key=shared.key, headers=SANDBOX
    )
    assert at_limit.status_code == 200, at_limit.text
    over = await shared.api.send(payload(**{field: make(limit + 1)}), key=shared.key)
    assert_400(over, field)
    assert len(shared.sink.messages) == before


async def test_hundred_recipients_all_reach_the_sink(shared: Shared) -> None:
    response = await shared.api.send(payload(to=boxes(100, "r")), key=shared.key)
    assert response.status_code == 200
    assert len(shared.sink.messages[-1].rcpt_tos) == 100


async def test_a_long_ascii_subject_is_folded_within_line_limits(shared: Shared) -> None:
    response = await shared.api.send(payload(subject="x" * 998), key=shared.key)
    assert response.status_code == 200
    assert max(len(line) for line in shared.sink.messages[-1].data.split(b"\r\n")) <= 998


@pytest.mark.parametrize(
    "fields",
    [
        {"text": None},  # neither html nor text
        {"text": ""},
        {"to": []},
        {"to": None},
        {"from_": None},
        {"subject": None},
        {"unknown_field": 1},
        {"tags": [""]},
        {"tags": ["x" * 65]},
        {"metadata": {"k": 1}},
        {"metadata": {"k": "v" * 2049}},
        {"metadata": {f"k{i}": "v" for i in range(51)}},
        {"alias_id": ""},
        {"idempotency_key": ""},
        {"from_": {"email": "a@sender.test", "name": "n" * 257}},
    ],
    ids=lambda fields: ",".join(fields),
)
async def test_missing_or_out_of_bounds_fields_are_400(
    shared: Shared, fields: dict[str, Any]
) -> None:
    assert_400(await shared.api.send(payload(**fields), key=shared.key))


# --- malformed JSON and wrong types --------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"{",
        b"[]",
        b"null",
        b'"a string"',
        b"\xff\xfe",
        b'{"from": {"email": "a@b.test"}} trailing',
        b'{"subject": "\\ud800"}',  # a lone surrogate
    ],
)
async def test_malformed_json_is_400(shared: Shared, raw: bytes) -> None:
    response = await shared.api.http.post("/v1/send", content=raw, headers=auth(shared.key))
    assert_400(response)


@pytest.mark.parametrize(
    "fields",
    [
        {"to": "rcpt@example.test"},
        {"to": [{"email": 42}]},
        {"to": ["rcpt@example.test"]},
        {"subject": 7},
        {"subject": True},
        {"text": ["a"]},
        {"tags": "a,b"},
        {"metadata": ["k", "v"]},
        {"from_": "app@sender.test"},
        {"reply_to": []},
        {"idempotency_key": 123},
    ],
    ids=lambda fields: ",".join(fields),
)
async def test_wrong_types_are_400_not_coerced(shared: Shared, fields: dict[str, Any]) -> None:
    assert_400(await shared.api.send(payload(**fields), key=shared.key))


# --- addresses --------------------------------------------------------------------------------

GARBAGE = [
    "plainaddress",
    "@example.test",
    "user@",
    "user@@example.test",
    "user@localhost",
    "us er@example.test",
    "user@exa mple.test",
    "user@-bad-.test",
    "user.@example.test",
    "user@example.test>",
    "<user@example.test>",
    "user@example.test\r\nRCPT TO:<evil@example.test>",
    "user\x00@example.test",
    "Name <user@example.test>",
]


@pytest.mark.parametrize("address", GARBAGE)
async def test_garbage_recipient_is_400(shared: Shared, address: str) -> None:
    before = len(shared.sink.messages)
    assert_400(
        await shared.api.send(payload(to=[{"email": address}]), key=shared.key), "to[0].email"
    )
    assert len(shared.sink.messages) == before


@pytest.mark.parametrize("address", GARBAGE[:6])
async def test_garbage_sender_is_400(shared: Shared, address: str) -> None:
    assert_400(
        await shared.api.send(payload(from_={"email": address}), key=shared.key), "from.email"
    )


@pytest.mark.parametrize(
    "address",
    ['"john doe"@example.test', "user+tag@example.test", "josé@example.test", "u@bücher.example"],
)
async def test_unusual_but_valid_addresses_are_accepted(shared: Shared, address: str) -> None:
    response = await shared.api.send(
        payload(to=[{"email": address}]), key=shared.key, headers=SANDBOX
    )
    assert response.status_code == 200, response.text


# --- header injection ------------------------------------------------------------------------

INJECTIONS = [
    "Hi\r\nBcc: evil@example.test",
    "Hi\nBcc: evil@example.test",
    "Hi\rBcc: evil@example.test",
    "Hi\u2028Bcc: evil@example.test",
    "Hi\x85Bcc: evil@example.test",
    "Hi\x0bthere",
    "=?utf-8?q?Hi=0D=0ABcc:_evil@example.test?=",
    "=?utf-8?b?SGkNCkJjYzogZXZpbEBleGFtcGxlLnRlc3Q=?=",
]


@pytest.mark.parametrize("value", INJECTIONS)
async def test_injection_in_subject_is_400(shared: Shared, value: str) -> None:
    before = len(shared.sink.messages)
    assert_400(await shared.api.send(payload(subject=value), key=shared.key), "subject")
    assert len(shared.sink.messages) == before


@pytest.mark.parametrize("value", INJECTIONS)
@pytest.mark.parametrize("where", ["from", "to", "cc", "reply_to"])
async def test_injection_in_display_names_is_400(shared: Shared, where: str, value: str) -> None:
    box = {"email": "x@example.test", "name": value}
    fields = {where: box if where in ("from", "reply_to") else [box]}
    before = len(shared.sink.messages)
    response = await shared.api.send(payload(**fields), key=shared.key)
    assert_400(response, where)
    assert len(shared.sink.messages) == before


@pytest.mark.parametrize(
    "fields",
    [
        {"tags": ["a\r\nb"]},
        {"idempotency_key": "k\nX-Evil: 1"},
        {"alias_id": "a\r\nb"},
        {"metadata": {"k\n": "v"}},
        {"metadata": {"k": "v\x00"}},
        {"text": "body with a NUL \x00"},
    ],
    ids=lambda fields: ",".join(fields),
)
async def test_control_characters_in_other_fields_are_400(
    shared: Shared, fields: dict[str, Any]
) -> None:
    assert_400(await shared.api.send(payload(**fields), key=shared.key))


async def test_quotes_and_specials_in_names_stay_inside_the_phrase(shared: Shared) -> None:
    name = 'Eve "The Boss" <evil@example.test>, Bcc: x@example.test; (c) \\'
    response = await shared.api.send(
        payload(from_={"email": "app@sender.test", "name": name}), key=shared.key
    )
    assert response.status_code == 200
    head = shared.sink.messages[-1].data.split(b"\r\n\r\n")[0]
    names = [line.split(b":")[0] for line in head.split(b"\r\n") if line[:1] not in b" \t"]
    assert b"Bcc" not in names
    assert names.count(b"From") == 1
