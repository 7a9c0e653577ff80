"""Messages: the search (every filter of GET /v1/messages, a page at a time on its cursor),
and bulk retry or cancel of what it finds, counted first (a dry run) and done only once
confirmed. The search form is a plain GET form (a bookmarkable address; htmx swaps only the
results in). Whose mail a person sees is api.message_ops.restriction's answer, as over
the API: a member, their own; an admin or owner, everyone's.

The client's own Message-ID, words of the Subject and the client's address (an IP or a
CIDR block) are filters too: each stored with the message at intake and indexed
(storage.search_keys), so none reads a body.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from api.auth import Caller
from api.context import ApiContext
from api.forms import form_fields
from api.message_ops import DEFAULT_LIMIT, restriction
from gateway.queue import operations as queue_ops
from gateway.queue.operations import FilterError, make_filter
from storage.message_search import (
    STATUSES,
    InvalidCursor,
    MessageFilter,
    MessageSummary,
    search,
)
from web.guard import signed_in
from web.render import fragment, is_htmx, page

PATH = "/messages"
TEXT_FIELDS = (
    "from",
    "recipient",
    "pool",
    "tag",
    "message_id_header",
    "subject",
    "client",
    "since",
    "until",
)
LIMITS = (25, 50, 100)
ACTIONS = {
    "retry": ("retry", "retried"),
    "cancel": ("cancel", "cancelled"),
    "hold": ("hold", "held"),
    "release": ("release", "released"),
}


@dataclass
class Search:
    """The search form as given: its values (strings, as typed) and what was wrong."""

    values: dict[str, str] = field(default_factory=dict)
    statuses: list[str] = field(default_factory=list)
    limit: int = DEFAULT_LIMIT
    problem: str = ""

    def criteria(self) -> dict[str, str]:
        """The filter's fields for make_filter: only those given."""
        given = {name: value for name, value in self.values.items() if value}
        if self.statuses:
            given["status"] = ",".join(self.statuses)
        return given

    def query(self, **extra: str) -> str:
        """The search as a query string (plus `extra`), for links to other pages of it."""
        pairs = [("status", status) for status in self.statuses]
        pairs += [(name, value) for name, value in self.values.items() if value]
        if self.limit != DEFAULT_LIMIT:
            pairs.append(("limit", str(self.limit)))
        pairs += list(extra.items())
        return urlencode(pairs)


def read_search(query: Mapping[str, Any]) -> Search:
    """The search of a query string or form: statuses repeated or comma-separated."""
    found = Search({name: str(query.get(name) or "").strip() for name in TEXT_FIELDS})
    raw = query.getlist("status") if hasattr(query, "getlist") else [query.get("status") or ""]
    for part in ",".join(raw).split(","):
        if part.strip() in STATUSES and part.strip() not in found.statuses:
            found.statuses.append(part.strip())
        elif part.strip():
            found.problem = f"status: one or more of {', '.join(STATUSES)}"
    limit = str(query.get("limit") or DEFAULT_LIMIT)
    found.limit = int(limit) if limit.isdigit() and int(limit) in LIMITS else DEFAULT_LIMIT
    return found


def filter_of(caller: Caller, wanted: Search) -> MessageFilter | None:
    """The filter of the search, restricted as the API restricts the caller; None (and
    `wanted.problem` set) when a value cannot be used."""
    if wanted.problem:
        return None
    try:
        return make_filter(wanted.criteria(), **restriction(caller))
    except FilterError as error:
        wanted.problem = f"{error.field}: {error.message}"
        return None


async def _results(
    ctx: ApiContext, flt: MessageFilter | None, wanted: Search, cursor: str | None
) -> tuple[list[MessageSummary], str | None]:
    if flt is None:
        return [], None
    try:
        return await search(ctx.db, flt, wanted.limit, cursor)
    except InvalidCursor:
        wanted.problem = "This page's position is not one this search gave: start again."
        return [], None


async def list_messages(request: Request) -> Response:
    ctx, caller = await signed_in(request)
    wanted = read_search(request.query_params)
    cursor = request.query_params.get("cursor") or None
    rows, next_cursor = await _results(ctx, filter_of(caller, wanted), wanted, cursor)
    shown: dict[str, Any] = {
        "search": wanted, "rows": rows, "statuses": STATUSES, "limits": LIMITS,
        "next_url": f"{PATH}?{wanted.query(cursor=next_cursor)}" if next_cursor else "",
        "first_url": f"{PATH}?{wanted.query()}" if cursor else "",
        "everyone": not restriction(caller),
    }  # fmt: skip
    status = 400 if wanted.problem else 200
    restoring = request.headers.get("hx-history-restore-request") == "true"
    if is_htmx(request) and not restoring:
        return fragment("messages/_results.html", status, **shown)
    notice = _notice(request.query_params)
    return page(request, "messages/list.html", caller, status, vary=True, notice=notice, **shown)


def _notice(query: Mapping[str, str]) -> str:
    done, count = query.get("done", ""), query.get("count", "")
    if done not in {verbs[1] for verbs in ACTIONS.values()} or not count.isdigit():
        return ""
    return f"{int(count):,} message{'s' if int(count) != 1 else ''} {done}."


# --- bulk: a dry run, then the action once confirmed ----------------------------------------


def _action(value: str) -> queue_ops.Action:
    action = _KINDS.get(value)
    if action is None:
        raise FilterError("action", "retry, cancel, hold or release")
    return action


_KINDS: dict[str, queue_ops.Action] = {
    "retry": "retry", "cancel": "cancel", "hold": "hold", "release": "release"
}  # fmt: skip


async def confirm_bulk(request: Request) -> Response:
    """The dry run: how many messages with work left the action would touch."""
    ctx, caller = await signed_in(request)
    query = request.query_params
    wanted = read_search(query)
    action = _action(query.get("action", ""))
    flt = filter_of(caller, wanted)
    if flt is None:
        return _bulk_page(request, caller, 400, action=action, search=wanted, count=0)
    counted = await queue_ops.bulk(ctx.message_queue(), ctx.db, flt, action, True)
    return _bulk_page(
        request, caller, action=action, search=wanted, count=counted.matched,
        everything=flt.is_empty(),
    )  # fmt: skip


async def run_bulk(request: Request) -> Response:
    ctx, caller = await signed_in(request)
    fields = form_fields(await request.body())
    wanted = read_search(fields)
    action = _action(fields.get("action", ""))
    flt = filter_of(caller, wanted)
    if flt is None or (flt.is_empty() and fields.get("all") != "1"):
        wanted.problem = wanted.problem or "Give a criterion, or confirm every message."
        return _bulk_page(request, caller, 400, action=action, search=wanted, count=0)
    try:
        result = await queue_ops.bulk(
            ctx.message_queue(), ctx.db, flt, action, False, cursor=fields.get("cursor") or None,
        )  # fmt: skip
    except InvalidCursor:
        wanted.problem = "This position is not one this action gave: start again."
        return _bulk_page(request, caller, 400, action=action, search=wanted, count=0)
    if action in ("retry", "release") and result.done and ctx.wake is not None:
        ctx.wake()
    if not result.remaining:
        done = ACTIONS[action][1]
        target = f"{PATH}?{wanted.query(done=done, count=str(result.done))}"
        return RedirectResponse(target, status_code=303)
    shown: dict[str, Any] = {"search": wanted, "result": result, "everything": flt.is_empty()}
    return _bulk_page(request, caller, action=action, **shown)


def _bulk_page(request: Request, caller: Caller, status: int = 200, **shown: Any) -> Response:
    shown.setdefault("count", 0)
    shown.setdefault("everything", False)
    shown.setdefault("result", None)
    verbs = ACTIONS[shown["action"]]
    return page(request, "messages/bulk.html", caller, status, verbs=verbs, **shown)


routes = [
    Route(PATH, list_messages, methods=["GET"]),
    Route(PATH + "/bulk", confirm_bulk, methods=["GET"]),
    Route(PATH + "/bulk", run_bulk, methods=["POST"]),
]
