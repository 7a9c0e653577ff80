"""Settings → SMTP Pools: list, create, edit, delete (confirmed on a page of its own, so it
works without JavaScript), and the connection test (htmx swaps in its result; without
JavaScript the form posts and the result is a page). The list shows each pool's health on
this node (failures, cool-down, last error: LivePools.health), its figures since this node
started (web.pool_figures, the metrics /metrics exports), and its throughput per minute over
the last hour on every node (its delivered, deferred and bounced events), PAGE_SIZE pools a
page. Everything goes through api.pool_ops, as the API's routes do, with the API's scope
`pools`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from api import event_ops, pool_ops
from api.auth import Caller
from api.context import ApiContext
from api.forms import form_fields
from api.management import PoolHealth
from gateway.errors import PosternError
from storage.event_stream import MinuteStats
from storage.pools import PoolRecord, pool_records
from web import charts
from web.guard import signed_in
from web.pages.pool_form import (
    ENCRYPTIONS,
    PoolForm,
    answer_of,
    checked_create,
    checked_update,
    values_of,
)
from web.pool_figures import Figures, figures_of
from web.render import fragment, is_htmx, page

SCOPE = "pools"
LIST = "/settings/pools"
PAGE_SIZE = 50  # pools a page: each row reads the node's metrics, the page one grouped query
DONE = {"created": "Pool created.", "updated": "Pool saved.", "deleted": "Pool deleted."}


def _back(done: str) -> Response:
    return RedirectResponse(f"{LIST}?done={done}", status_code=303)


@dataclass(frozen=True)
class Row:
    """One pool as the list shows it: its record, and this node's live view of it."""

    record: PoolRecord
    live: bool  # this node's delivery holds the pool
    health: PoolHealth | None  # its failures and cool-down (None: not loaded here)
    figures: Figures  # this node's metrics of it since start
    throughput: charts.Chart  # every node's outcomes per minute, the last hour


def _row(ctx: ApiContext, record: PoolRecord, minutes: list[MinuteStats], shown: Figures) -> Row:
    """From the live registry, the Prometheus metrics (memory: `shown`), and `minutes`."""
    pools = ctx.management().pools
    health = pools.health(record.id)
    live = pools.live(record.id) is not None
    return Row(record, live, health, shown, charts.outcomes(minutes))


def _page_number(request: Request) -> int | None:
    """`?page=` (1 when absent); None when it is no whole number from 1."""
    given = request.query_params.get("page", "1").strip()
    number = given.isascii() and given.isdigit() and 0 < len(given) <= 6 and int(given) > 0
    return int(given) if number else None


async def list_pools(request: Request) -> Response:
    ctx, caller = await signed_in(request, SCOPE)
    records = await pool_ops.records(ctx, caller)
    number = _page_number(request)
    pages = max(1, -(-len(records) // PAGE_SIZE))
    shown = min(number or 1, pages)
    on_page = records[(shown - 1) * PAGE_SIZE : shown * PAGE_SIZE]
    since, stats = await event_ops.per_pool_minute(ctx, [r.name for r in on_page])
    read = figures_of([record.name for record in on_page])  # the metrics read once
    rows = [_row(ctx, r, stats.get(r.name, []), read[r.name]) for r in on_page]
    return page(
        request, "pools/list.html", caller, 200 if number else 400,
        rows=rows, notice=DONE.get(request.query_params.get("done", ""), ""),
        problem="" if number else "page: a whole number from 1",
        page_number=shown, pages=pages, total=len(records), since=since,
    )  # fmt: skip


def _form_page(
    request: Request, caller: Caller, form: PoolForm, record: PoolRecord | None, status: int = 200
) -> Response:
    return page(
        request, "pools/form.html", caller, status,
        form=form, record=record, encryptions=ENCRYPTIONS,
    )  # fmt: skip


async def new_pool(request: Request) -> Response:
    _, caller = await signed_in(request, SCOPE)
    return _form_page(request, caller, PoolForm.of(None), None)


async def create_pool(request: Request) -> Response:
    ctx, caller = await signed_in(request, SCOPE)
    fields = form_fields(await request.body())
    form = PoolForm(values_of(fields))
    try:
        values = checked_create(form.values, fields.get("password") or None)
        await pool_ops.create(ctx, caller, values, fields.get("password") or None)
    except PosternError as error:
        return _form_page(request, caller, form.refused(error), None, answer_of(error).status)
    return _back("created")


async def edit_pool(request: Request) -> Response:
    ctx, caller = await signed_in(request, SCOPE)
    record = await pool_ops.get(ctx, caller, request.path_params["pool_id"])
    return _form_page(request, caller, PoolForm.of(record), record)


async def update_pool(request: Request) -> Response:
    ctx, caller = await signed_in(request, SCOPE)
    record = await pool_ops.get(ctx, caller, request.path_params["pool_id"])
    fields = form_fields(await request.body())
    form = PoolForm(values_of(fields))
    remove = "remove_password" in fields
    password = "" if remove else fields.get("password") or None
    try:
        changes = checked_update(form.values, password)
        given = password is not None
        await pool_ops.update(ctx, caller, record.id, changes, password, given, False)
    except PosternError as error:
        return _form_page(request, caller, form.refused(error), record, answer_of(error).status)
    return _back("updated")


async def confirm_delete(request: Request) -> Response:
    ctx, caller = await signed_in(request, SCOPE)
    record = await pool_ops.get(ctx, caller, request.path_params["pool_id"])
    return await _delete_page(request, ctx, caller, record, "", 200)


async def _delete_page(
    request: Request, ctx: ApiContext, caller: Caller, record: PoolRecord, problem: str, status: int
) -> Response:
    others = [r for r in await pool_records(ctx.db) if r.id != record.id and r.is_active]
    return page(
        request, "pools/delete.html", caller, status,
        record=record, others=others, problem=problem,
    )  # fmt: skip


async def delete_pool(request: Request) -> Response:
    ctx, caller = await signed_in(request, SCOPE)
    record = await pool_ops.get(ctx, caller, request.path_params["pool_id"])
    move_to = form_fields(await request.body()).get("move_to") or None
    try:
        await pool_ops.delete(ctx, caller, record.id, move_to)
    except PosternError as error:
        problem = answer_of(error).error
        return await _delete_page(request, ctx, caller, record, problem, answer_of(error).status)
    return _back("deleted")


async def test_pool(request: Request) -> Response:
    ctx, caller = await signed_in(request, SCOPE)
    record = await pool_ops.get(ctx, caller, request.path_params["pool_id"])
    recipient = form_fields(await request.body()).get("recipient", "").strip() or None
    outcome: dict[str, Any] = {"record": record, "recipient": recipient or ""}
    status = 200
    try:
        result, sent = await pool_ops.test(ctx, caller, record, recipient)
        outcome.update(result=result, sent=sent, problem="")
    except PosternError as error:
        outcome.update(result=None, sent=None, problem=answer_of(error).error)
        status = answer_of(error).status
    if is_htmx(request):
        return fragment("pools/_test.html", status, **outcome)
    return page(request, "pools/test.html", caller, status, vary=True, **outcome)


routes = [
    Route(LIST, list_pools, methods=["GET"]),
    Route(LIST, create_pool, methods=["POST"]),
    Route(LIST + "/new", new_pool, methods=["GET"]),
    Route(LIST + "/{pool_id}", edit_pool, methods=["GET"]),
    Route(LIST + "/{pool_id}", update_pool, methods=["POST"]),
    Route(LIST + "/{pool_id}/delete", confirm_delete, methods=["GET"]),
    Route(LIST + "/{pool_id}/delete", delete_pool, methods=["POST"]),
    Route(LIST + "/{pool_id}/test", test_pool, methods=["POST"]),
]
