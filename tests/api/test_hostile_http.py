"""Hostile HTTP clients (issue 7): JSON nested to the bottom of any recursion limit, odd
JSON (NaN, huge numbers, duplicate keys, a non-object top level, invalid UTF-8), bodies
trickled in slowly, and declared sizes far over `[http] max_body_size`, against the real
uvicorn on loopback. Every one is a 4xx in the API's error shape, never a 5xx.

CR/LF in header-bound fields: tests/api/test_send_validation.py (injection tests).
"""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from tests.support.api import VALID, Shared, auth

pytestmark = [pytest.mark.timeout(60), pytest.mark.asyncio(loop_scope="module")]

DEPTH = 100_000

# Every route that reads a JSON body (the unknown ids are fine: bodies are parsed first).
BODY_ROUTES = [
    ("POST", "/v1/send"),
    ("POST", "/api/v1/aliases"),
    ("PATCH", "/api/v1/aliases/al_unknown"),
    ("POST", "/api/v1/smtp-pools"),
    ("PATCH", "/api/v1/smtp-pools/unknown"),
    ("POST", "/api/v1/smtp/configs"),
    ("POST", "/api/v1/keys"),
    ("POST", "/api/v1/suppressions"),
    ("POST", "/api/v1/domains"),
]


async def _admin(shared: Shared) -> str:
    return await shared.api.key("admin", name="hostile")


def assert_refused_4xx(response: httpx.Response, status: int = 400) -> None:
    assert response.status_code == status, (response.status_code, response.text[:300])
    body = response.json()
    assert body["success"] is False and body["code"], body


@pytest.mark.parametrize(("method", "path"), BODY_ROUTES)
@pytest.mark.parametrize(
    "body",
    [b"[" * DEPTH, b'{"a":' * DEPTH, b'{"to":' + b"[" * DEPTH + b"]" * DEPTH + b"}"],
    ids=["deep-arrays", "deep-objects", "deep-closed-in-a-field"],
)
async def test_deep_nesting_is_400_not_a_recursion_error(
    shared: Shared, method: str, path: str, body: bytes
) -> None:
    key = await _admin(shared)
    response = await shared.api.http.request(method, path, content=body, headers=auth(key))
    assert_refused_4xx(response)


@pytest.mark.parametrize(
    "raw",
    [
        b"{" + VALID + b', "metadata": {"k": NaN}}',
        b"{" + VALID + b', "metadata": {"k": Infinity}}',
        b"{" + VALID + b', "metadata": {"k": -Infinity}}',
        b"{" + VALID + b', "metadata": {"k": 1e400}}',
        b"{" + VALID + b', "metadata": {"k": ' + b"9" * 10_000 + b"}}",
        b"{" + VALID + b', "tags": [' + b"1" * 5_000 + b"]}",
        b"{" + VALID + b', "subject": "second"}',  # duplicate top-level key
        b'{"to": [{"email": "a@x.test"}], ' + VALID + b"}",  # duplicate "to"
        b"{" + VALID + b', "reply_to": {"email": "a@x.test", "email": "b@x.test"}}',
        b"[]",
        b"[{" + VALID + b"}]",
        b"42",
        b'"{}"',
        b"null",
        b"true",
        b"{" + VALID.replace(b'"s"', b'"\xff\xfe"') + b"}",  # invalid UTF-8
        b"\xef\xbb\xbf{" + VALID + b"}",  # a byte-order mark
        "{".encode("utf-16") + VALID.decode().encode("utf-16-le") + b"}\x00",
        b"{" + VALID.replace(b'"s"', b'"\\udc80"') + b"}",  # a lone surrogate escape
        b"{" + VALID + b"}\x00",
    ],
    ids=[
        "nan",
        "infinity",
        "minus-infinity",
        "float-overflow",
        "huge-integer",
        "huge-integer-in-list",
        "duplicate-subject",
        "duplicate-to",
        "duplicate-nested",
        "empty-array",
        "array-top-level",
        "number-top-level",
        "string-top-level",
        "null-top-level",
        "bool-top-level",
        "invalid-utf8",
        "bom",
        "utf16",
        "lone-surrogate",
        "trailing-nul",
    ],
)
async def test_odd_json_is_400(shared: Shared, raw: bytes) -> None:
    response = await shared.api.http.post("/v1/send", content=raw, headers=auth(shared.key))
    assert_refused_4xx(response)
    await asyncio.sleep(0)


async def test_duplicate_keys_send_nothing(shared: Shared) -> None:
    """A proxy or WAF may read the first of two keys and Postern the last: refused."""
    before = len(shared.sink.messages)
    raw = b'{"to": [{"email": "allowed@example.test"}], ' + VALID + b"}"
    assert_refused_4xx(
        await shared.api.http.post("/v1/send", content=raw, headers=auth(shared.key))
    )
    await asyncio.sleep(0.3)
    assert len(shared.sink.messages) == before


# --- slow and oversized clients --------------------------------------------------------


async def _open(shared: Shared) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = shared.api.svc.config.http.listen
    return await asyncio.open_connection(host, port)


async def test_slow_clients_do_not_block_other_requests(shared: Shared) -> None:
    """Ten clients trickle their bodies (and one its headers) a byte at a time; meanwhile
    other requests are answered at once."""
    body = b"{" + VALID + b"}"
    slow: list[asyncio.StreamWriter] = []
    stop = asyncio.Event()

    async def trickle(head: bytes, rest: bytes) -> None:
        _, writer = await _open(shared)
        slow.append(writer)
        writer.write(head)
        for byte in rest:
            if stop.is_set():
                return
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.1)

    head = (
        b"POST /v1/send HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {shared.key}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    )
    tasks = [asyncio.create_task(trickle(head, body)) for _ in range(10)]
    tasks.append(asyncio.create_task(trickle(b"GET /healthz HTTP/1.1\r\n", b"Host: x\r\n" * 50)))
    try:
        await asyncio.sleep(0.5)  # every slow client is connected and mid-request
        for _ in range(5):
            started = time.monotonic()
            health = await shared.api.http.get("/healthz")
            sent = await shared.api.send(key=shared.key)
            took = time.monotonic() - started
            assert health.status_code == 200, health.text
            assert sent.status_code in (200, 202), sent.text
            assert took < 3.0, f"a request took {took:.2f}s beside the slow clients"
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
        for writer in slow:
            writer.close()


@pytest.mark.parametrize(("method", "path"), BODY_ROUTES)
async def test_a_declared_body_over_max_body_size_is_413_before_it_is_read(
    shared: Shared, method: str, path: str
) -> None:
    """Headers only, Content-Length far over [http] max_body_size: a server that waited for
    the body would never answer."""
    key = await _admin(shared)
    reader, writer = await _open(shared)
    try:
        writer.write(
            f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer {key}\r\nContent-Length: 99999999999\r\n\r\n".encode()
        )
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
    finally:
        writer.close()
    assert head.startswith(b"HTTP/1.1 413 "), head
