"""User input cannot forge a log line (issue 7): CR, LF, ESC, C1 controls, U+2028 and bidi
overrides sent through the SMTP commands, envelope and headers, and through API fields and
paths, come out of the log escaped: one record is one line, and every line is a record.
"""

from __future__ import annotations

import asyncio
import io
import logging
import re
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from gateway.addresses import escape_for_log
from gateway.process import logs
from gateway.process.logs import FORMAT, EscapingFormatter
from storage.keys import create_key
from tests.support.processes import REPO, child_env
from tests.support.service import ServiceFactory
from tests.support.sink import Sink
from tests.support.smtp import RawClient, smtp_send

pytestmark = pytest.mark.timeout(60)

FORGED = "\r\n2030-01-01T00:00:00.000+00:00 ERROR postern: FORGED\x1b[2J\u2028\u202e\x85"
RECORD_START = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d [A-Z]+ \S+: ")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("plain text", "plain text"),
        ("Grüße 日本 ✓", "Grüße 日本 ✓"),  # printable non-ASCII stays readable
        ("a\r\nb", "a\\r\\nb"),
        ("\x1b[31mred", "\\x1b[31mred"),
        ("x\u2028y\u2029z", "x\\u2028y\\u2029z"),
        ("\u202egnp.exe", "\\u202egnp.exe"),
        ("\x85\x00\x7f", "\\x85\\x00\\x7f"),
        ("back\\slash", "back\\\\slash"),  # so an escape in the input cannot pass for ours
        ("\udcff", "\\udcff"),  # a byte that was not UTF-8 (surrogateescape)
        ("\U000e0041", "\\U000e0041"),  # a tag character
    ],
)
def test_escape_for_log(text: str, expected: str) -> None:
    assert escape_for_log(text) == expected


@pytest.fixture
def log_output() -> Iterator[io.StringIO]:
    """The product's log format, captured: what `postern serve` writes to stderr."""
    output = io.StringIO()
    handler = logging.StreamHandler(output)
    handler.setFormatter(EscapingFormatter(FORMAT))
    root = logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield output
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)


def assert_no_forged_line(text: str) -> None:
    assert "FORGED" in text, "the hostile input never reached the log: nothing was tested"
    for line in text.splitlines():
        if RECORD_START.match(line):
            continue
        assert line.startswith("  | "), f"a line that is not a record: {line!r}"
    for line in text.splitlines():
        assert "\x1b" not in line and "\u2028" not in line and "\u202e" not in line, line
        if "FORGED" in line and RECORD_START.match(line):
            assert not line.startswith("2030-"), line
    assert "\r" not in text and "\x85" not in text


def test_formatter_escapes_the_message_and_indents_tracebacks(log_output: io.StringIO) -> None:
    log = logging.getLogger("postern.test")
    log.warning("refused %s", FORGED)
    try:
        raise ValueError(f"bad input {FORGED}")
    except ValueError:
        log.exception("failed on %s", FORGED)
    assert_no_forged_line(log_output.getvalue())


async def test_smtp_and_http_input_cannot_forge_a_log_line(
    service: ServiceFactory, sink: Sink, log_output: io.StringIO
) -> None:
    svc = await service()
    # aiosmtpd logs an unknown command verbatim (a CR and ESC survive its line split).
    client = await RawClient.connect(svc.smtp_port)
    await client.ehlo()
    reply = await client.command(b"X\rFORGED\x1b[2J" + FORGED.encode()[2:])
    assert reply.code >= 500
    await client.close()

    # The mail log names the recipient; the envelope allows any printable UTF-8 there.
    rcpt = "u\u2028FORGED\u202e@y.test"
    code, text = await smtp_send(
        svc.smtp_port,
        "a@x.test",
        [rcpt],
        b"From: a@x.test\r\nSubject: s\r\n\r\nbody\r\n",
        mail_options=["SMTPUTF8"],
    )
    assert code == 250, text
    assert await sink.wait_for_async(1, timeout=10)

    # An API route that logs the path of a failed request (percent-decoded by uvicorn).
    _, key = await create_key(svc.db, "logs", ["send"])
    host, port = svc.config.http.listen
    async with httpx.AsyncClient(base_url=f"http://{host}:{port}") as http:
        await svc.writer.stop()  # storage fails: the route logs method and path
        try:
            response = await http.get(
                "/v1/messages/%0D%0A2030-01-01T00:00:00.000+00:00%20ERROR%20x:%20FORGED",
                headers={"Authorization": f"Bearer {key}"},
            )
        finally:
            svc.writer.start()
    assert response.status_code in (404, 503), response.text
    await asyncio.sleep(0.2)
    assert_no_forged_line(log_output.getvalue())


def test_the_log_thread_renders_plain_records_as_the_handoff_would() -> None:
    """`postern serve`'s chain (the handoff on the loop, the formatter in the log thread):
    plain arguments rendered by the thread, an object argument and a traceback by the
    handoff; either way each line escaped exactly once, as EscapingFormatter alone does."""
    threaded_output, direct_output = io.StringIO(), io.StringIO()
    handoff, listener = logs.threaded(threaded_output)
    direct = logging.StreamHandler(direct_output)
    direct.setFormatter(EscapingFormatter(FORMAT))
    log = logging.getLogger("postern.test.threaded")
    log.propagate = False
    log.addHandler(handoff)
    log.addHandler(direct)
    listener.start()
    try:
        shown = [FORGED]  # its text at the call, not after

        class Shown:
            def __str__(self) -> str:
                return shown[0]

        log.warning("plain %s size=%d ratio=%.1f none=%s back\\slash", FORGED, 3, 0.5, None)
        log.warning("object %s", Shown())
        shown[0] = "changed"
        try:
            raise ValueError(f"bad input {FORGED}")
        except ValueError:
            log.exception("failed on %s", FORGED)
    finally:
        listener.stop()
        log.removeHandler(handoff)
        log.removeHandler(direct)
    text = threaded_output.getvalue()
    assert_no_forged_line(text)
    assert "changed" not in text and "back\\\\slash" in text
    # The same lines as the formatter alone writes (each line's time aside).
    assert [line[29:] for line in text.splitlines()] == [
        line[29:] for line in direct_output.getvalue().splitlines()
    ]


def test_the_log_thread_writes_every_record_in_order_past_a_bad_one() -> None:
    """Records taken by the batch write: all there, in order, each its own line, and a
    record that cannot be formatted costs only itself."""
    output = io.StringIO()
    handoff, listener = logs.threaded(output)
    log = logging.getLogger("postern.test.batch")
    log.propagate = False
    log.addHandler(handoff)
    saved, logging.raiseExceptions = logging.raiseExceptions, False  # handleError: quiet
    listener.start()
    try:
        for n in range(300):
            log.warning("line %d", n)
            if n == 150:
                log.warning("bad %d", "not a number")
    finally:
        listener.stop()
        log.removeHandler(handoff)
        logging.raiseExceptions = saved
    lines = output.getvalue().splitlines()
    assert [line.rsplit(" ", 1)[1] for line in lines] == [str(n) for n in range(300)]
    assert all(RECORD_START.match(line) for line in lines)


def test_a_backlog_is_written_as_fast_as_it_formats() -> None:
    """The thread waits LINGER only when it had to wait for a record: 20,000 records put
    at once (a client pipelining refused commands makes lines that fast) are written far
    faster than a wait per 64 records allowed (3.1 s: ~6,300 lines/s, less than one client
    can make), so the queue cannot grow without bound and a shutdown writes it at once."""
    output = io.StringIO()
    handoff, listener = logs.threaded(output)
    log = logging.getLogger("postern.test.backlog")
    log.propagate = False
    log.addHandler(handoff)
    try:
        for n in range(20_000):
            log.warning("line %d", n)
        listener.start()
        started = time.monotonic()
        listener.stop()
        took = time.monotonic() - started
    finally:
        log.removeHandler(handoff)
    assert len(output.getvalue().splitlines()) == 20_000
    capped = 20_000 / 64 * logs.Listener.LINGER
    assert took < capped / 2, (took, capped)


def test_uvicorns_records_reach_the_escaping_log_not_a_handler_of_their_own() -> None:
    """With the HTTP door's uvicorn config, a record of uvicorn's (its "Exception in ASGI
    application" carries a traceback; its warnings may quote a request) goes to the root
    logger: one escaped line, as every line of the mail log (not raw on stderr)."""
    probe = """
import asyncio, logging, socket
from gateway.process import logs
from gateway.process.http_server import HttpDoor, DoorLimits
logs.setup("info")
async def main():
    sock = socket.socket(); sock.bind(("127.0.0.1", 0))
    door = HttpDoor(lambda *a: None, sock, DoorLimits("http", 10, 5.0))
    door.close(); sock.close()
    logging.getLogger("uvicorn.error").warning("forged %s", "x\\r\\n2026-01-01T00:00:00 INFO fake")
asyncio.run(main())
"""
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, env=child_env(),
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    lines = done.stderr.splitlines()
    forged = [line for line in lines if "forged" in line]
    assert len(forged) == 1 and RECORD_START.match(forged[0]), done.stderr
    assert "fake" in forged[0]  # escaped within the line, not a record of its own
    assert not any(line.startswith("2026-01-01T00:00:00") for line in lines), done.stderr
