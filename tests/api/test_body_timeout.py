"""[http] body_timeout: a client trickling its request body cannot hold a connection (and a
request handler) forever; past the limit it gets a 408 and nothing is stored."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from tests.support.api import VALID
from tests.support.rows import query


async def test_a_body_trickled_past_body_timeout_gets_408(api_client: Any) -> None:
    """A client may not hold a connection (and a handler) forever by sending its body
    slowly: past [http] body_timeout it gets a 408 and the connection is done."""
    api = await api_client(http={"body_timeout": "1s"})
    key = await api.key("send")
    body = b"{" + VALID + b"}"
    host, port = api.svc.config.http.listen
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(
            b"POST /v1/send HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {key}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body[:5]
        )
        started = time.monotonic()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 408"), head
        assert time.monotonic() - started < 8.0
    finally:
        writer.close()
    assert not await query(api.svc, "SELECT id FROM message")  # nothing half-taken


async def test_a_handler_slower_than_body_timeout_is_not_cut_off(
    api_client: Any, sink: Any
) -> None:
    """The limit is on receiving the body, not on answering: a send that waits for a hung
    upstream longer than body_timeout still gets its 202 (queued)."""
    sink.hang("data", seconds=10)
    api = await api_client(
        http={"body_timeout": "1s"}, delivery={"handoff_timeout": "2.5s", "command_timeout": "5s"}
    )
    key = await api.key("send")
    started = time.monotonic()
    sent = await api.send(key=key)
    assert sent.status_code == 202, sent.text
    assert time.monotonic() - started >= 2.0
