"""Sandbox: the test mail, as Mailpit's inbox shows it (newest first: from, to, subject,
when), each row a link to the message's own page (/messages/{id}: headers, body, source).

Two inboxes: the messages sent with the sandbox flag (`X-Postern-Sandbox: true` or the API's
field; stored with status `sandbox`, never delivered, their body kept as any final message's)
and the messages sent to the simulator (`*@simulator.postern.invalid`, delivered by the
simulator pool with a scripted outcome; as any message, its body is deleted
storage.body_retention after it is final, and then the list says so instead of a subject).
Both are the Messages page's search (status `sandbox`, or pool `simulator`), restricted as
the API restricts the caller (api.message_ops.restriction): a member sees their own test
mail only.

The subject lives only in the stored body: the page reads the header fields of its own rows'
bodies (a page at a time, at most LIMIT), never a scan.
"""

from __future__ import annotations

import asyncio
from email.parser import BytesHeaderParser
from email.policy import default
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from api.context import ApiContext
from api.message_ops import restriction
from gateway.message import SIMULATOR_POOL
from gateway.queue.operations import make_filter
from storage.message_search import InvalidCursor, MessageSummary, search
from storage.queue_sql import body_prefixes
from web.guard import signed_in
from web.render import page

PATH = "/sandbox"
LIMIT = 50
HEADER_BYTES = 16 * 1024  # the header fields of a body: enough for a subject, bounded
KINDS = {"sandbox": {"status": "sandbox"}, "simulator": {"pool": SIMULATOR_POOL}}


def subject_of(data: bytes) -> str:
    """The Subject of a stored message, decoded; "" when it has none or is unreadable."""
    head = data[:HEADER_BYTES].split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    try:
        value = BytesHeaderParser(policy=default).parsebytes(head).get("subject", "")
        return str(value)[:200]
    except (ValueError, TypeError, LookupError):  # hostile MIME: no subject shown
        return ""


async def subjects(ctx: ApiContext, rows: list[MessageSummary]) -> dict[str, str | None]:
    """Each row's subject, None when its body is no longer stored. Only each body's first
    HEADER_BYTES are read: a page of 20 MB messages must not read (and join) them whole."""
    ids = [row.id for row in rows]
    bodies = await ctx.db.read(lambda conn: body_prefixes(conn, ids, HEADER_BYTES)) if ids else {}
    found = await asyncio.to_thread(lambda: {i: subject_of(d) for i, d in bodies.items()})
    return {row.id: found.get(row.id) for row in rows}


async def sandbox(request: Request) -> Response:
    ctx, caller = await signed_in(request)
    kind = request.query_params.get("kind", "sandbox")
    kind = kind if kind in KINDS else "sandbox"
    cursor = request.query_params.get("cursor") or None
    flt = make_filter(KINDS[kind], **restriction(caller))
    problem, next_cursor = "", None
    rows: list[MessageSummary] = []
    try:
        rows, next_cursor = await search(ctx.db, flt, LIMIT, cursor)
    except InvalidCursor:
        problem = "This page's position is not one this list gave: start again."
    more = f"{PATH}?{urlencode({'kind': kind, 'cursor': next_cursor})}" if next_cursor else ""
    return page(
        request, "sandbox.html", caller, 400 if problem else 200,
        kind=kind, rows=rows, subjects=await subjects(ctx, rows), problem=problem,
        next_url=more, everyone=not restriction(caller),
    )  # fmt: skip


routes = [Route(PATH, sandbox, methods=["GET"])]
