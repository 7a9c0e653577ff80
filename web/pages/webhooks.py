"""Settings → Webhooks: the webhooks the caller may see; create one (its signing secret on
the result page, this once), edit one, switch it off and on, see its recent deliveries and
replay its events since a time (POST /api/v1/webhooks/{id}/replay's `since`), delete one.

The work is the API's own (api.webhook_ops): the scope `webhooks`, WebhookCreate and
WebhookUpdate, the URL's syntax and SSRF guard and the event filter, a webhook the caller
may not see (api.ownership) answered as absent.
"""

from __future__ import annotations

import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from api import webhook_ops
from api.auth import Caller
from api.context import ApiContext
from api.forms import form_fields
from api.schemas import refuse_nulls
from api.webhook_schemas import ReplayRequest, WebhookCreate, WebhookUpdate
from gateway.errors import PosternError
from gateway.queue import events
from storage import webhooks as store
from storage.webhooks import WebhookRecord
from web.guard import signed_in
from web.pages.pool_form import answer_of
from web.pages.resource_form import Confirm, Form, back, checked, chosen, confirm
from web.render import page

SCOPE = webhook_ops.SCOPE
INACTIVE = "the webhook is off: switch it on first"
PATH = "/webhooks"
BOX = "event-"  # a checkbox per event type
SHOWN_ATTEMPTS = 50
DEFAULTS: dict[str, Any] = {"url": "", "description": "", "event_types": [], "final_only": False}
DONE = {
    "saved": "Webhook saved.",
    "on": "Webhook switched on: owed events are sent again from now.",
    "off": "Webhook switched off: nothing is sent to it until it is switched on.",
    "replayed": "Replay queued.",
    "deleted": "Webhook deleted.",
}


def _notice(request: Request) -> str:
    notice = DONE.get(request.query_params.get("done", ""), "")
    queued = request.query_params.get("queued", "")
    if notice and queued.isdigit():
        notice += f" {queued} events are owed to it from then on."
    return notice


async def list_all(request: Request) -> Response:
    ctx, caller = await signed_in(request, SCOPE)
    records = await webhook_ops.records(ctx, caller)
    shown: dict[str, Any] = {"webhooks": records, "notice": _notice(request)}
    return page(request, "webhooks/list.html", caller, **shown)


def _values(fields: dict[str, str]) -> dict[str, Any]:
    return {
        "url": fields.get("url", "").strip(),
        "description": fields.get("description", ""),
        "event_types": chosen(fields, BOX, events.TYPES),
        "final_only": "final_only" in fields,
    }


def _body(values: dict[str, Any]) -> dict[str, Any]:
    """The form's values as the API's JSON body: no box checked is every type (null)."""
    return {**values, "event_types": values["event_types"] or None}


def _form_page(
    request: Request, caller: Caller, form: Form, record: WebhookRecord | None, status: int = 200
) -> Response:
    shown: dict[str, Any] = {"form": form, "record": record, "types": events.TYPES}
    return page(request, "webhooks/form.html", caller, status, **shown)


async def new_webhook(request: Request) -> Response:
    _, caller = await signed_in(request, SCOPE)
    return _form_page(request, caller, Form(dict(DEFAULTS)), None)


async def create(request: Request) -> Response:
    ctx, caller = await signed_in(request, SCOPE)
    form = Form(_values(form_fields(await request.body())))
    try:
        body = checked(WebhookCreate, _body(form.values)).model_dump()
        record, secret = await webhook_ops.create(ctx, caller, body)
    except PosternError as error:
        return _form_page(request, caller, form.refused(error), None, answer_of(error).status)
    return page(request, "webhooks/created.html", caller, record=record, secret=secret)


async def _change(ctx: ApiContext, current: WebhookRecord, given: dict[str, Any]) -> WebhookRecord:
    """PATCH /api/v1/webhooks/{id}'s steps with the fields `given`."""
    body = checked(WebhookUpdate, given)
    refuse_nulls(body)
    changes = {name: getattr(body, name) for name in body.model_fields_set}
    return await webhook_ops.change(ctx, current, changes)


async def _webhook_page(
    request: Request, ctx: ApiContext, caller: Caller, record: WebhookRecord,
    form: Form | None = None, status: int = 200, replay_problem: str = "",
) -> Response:  # fmt: skip
    """The webhook: its form, its state, its latest deliveries, the replay form."""
    values = {name: getattr(record, name) for name in DEFAULTS}
    return page(
        request, "webhooks/form.html", caller, status,
        form=form or Form({**values, "event_types": list(record.event_types)}),
        record=record, types=events.TYPES, notice=_notice(request),
        attempts=await store.attempts(ctx.db, record.id, SHOWN_ATTEMPTS),
        replay_problem=replay_problem, since=_an_hour_ago(),
    )  # fmt: skip


def _an_hour_ago() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 3600))


async def _get(ctx: ApiContext, caller: Caller, request: Request) -> WebhookRecord:
    return await webhook_ops.get(ctx, caller, request.path_params["webhook_id"])


async def show(request: Request) -> Response:
    ctx, caller = await signed_in(request, SCOPE)
    record = await _get(ctx, caller, request)
    return await _webhook_page(request, ctx, caller, record)


async def save(request: Request) -> Response:
    ctx, caller = await signed_in(request, SCOPE)
    current = await _get(ctx, caller, request)
    form = Form(_values(form_fields(await request.body())))
    try:
        await _change(ctx, current, _body(form.values))
    except PosternError as error:
        refused = form.refused(error)
        status = answer_of(error).status
        return await _webhook_page(request, ctx, caller, current, refused, status)
    return back(f"{PATH}/{current.id}", "saved")


async def switch(request: Request) -> Response:
    """Off, or on again (which also clears the back-off, as the API's is_active: true)."""
    ctx, caller = await signed_in(request, SCOPE)
    current = await _get(ctx, caller, request)
    on = form_fields(await request.body()).get("is_active") == "on"
    await _change(ctx, current, {"is_active": on})
    return back(f"{PATH}/{current.id}", "on" if on else "off")


async def replay(request: Request) -> Response:
    """POST /api/v1/webhooks/{id}/replay: its events since `since` sent again."""
    ctx, caller = await signed_in(request, SCOPE)
    record = await _get(ctx, caller, request)
    raw = form_fields(await request.body()).get("since", "").strip()
    try:
        given = checked(ReplayRequest, {"since": int(raw) if raw.isdigit() else raw}).since
        since = webhook_ops.parse_since(given)
        queued = await webhook_ops.replay(ctx, record, since, INACTIVE)
    except PosternError as error:
        problem, status = answer_of(error).error, answer_of(error).status
        return await _webhook_page(request, ctx, caller, record, None, status, problem)
    return back(f"{PATH}/{record.id}", "replayed", queued=str(queued))


def _asked(record: WebhookRecord) -> Confirm:
    return Confirm(
        title=f"Delete the webhook to {record.url}?",
        text="The events still owed to it are dropped. This cannot be undone.",
        action=f"{PATH}/{record.id}/delete",
        button="Delete the webhook",
        cancel=f"{PATH}/{record.id}",
    )


async def confirm_delete(request: Request) -> Response:
    ctx, caller = await signed_in(request, SCOPE)
    record = await _get(ctx, caller, request)
    return confirm(request, caller, _asked(record))


async def delete(request: Request) -> Response:
    ctx, caller = await signed_in(request, SCOPE)
    record = await _get(ctx, caller, request)
    await webhook_ops.delete(ctx, record)
    return back(PATH, "deleted")


routes = [
    Route(PATH, list_all, methods=["GET"]),
    Route(PATH, create, methods=["POST"]),
    Route(PATH + "/new", new_webhook, methods=["GET"]),
    Route(PATH + "/{webhook_id}", show, methods=["GET"]),
    Route(PATH + "/{webhook_id}", save, methods=["POST"]),
    Route(PATH + "/{webhook_id}/active", switch, methods=["POST"]),
    Route(PATH + "/{webhook_id}/replay", replay, methods=["POST"]),
    Route(PATH + "/{webhook_id}/delete", confirm_delete, methods=["GET"]),
    Route(PATH + "/{webhook_id}/delete", delete, methods=["POST"]),
]
