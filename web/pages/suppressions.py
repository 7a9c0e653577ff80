"""Settings → Suppressions: the addresses Postern will not send to, a page at a time (in
address order, filtered by reason), one address looked up with why it is there; add one
(address and reason), remove one (confirmed first).

The work is the API's own (api.suppression_ops): the scope `suppressions`, the same
address rule (one mailbox, one entry: gateway.addresses.mailbox_key), the same list
parameters, and this node's in-memory copy changed at once.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from api import errors, suppression_ops
from api.auth import Caller
from api.context import ApiContext
from api.forms import form_fields
from api.schemas import SuppressionCreate
from gateway.errors import PosternError
from gateway.intake.fields import text_problem
from storage.suppressions import REASONS, SuppressionRecord, get_suppression, list_suppressions
from web.guard import signed_in
from web.pages.pool_form import answer_of
from web.pages.resource_form import Confirm, Form, back, checked, confirm
from web.render import page

SCOPE = suppression_ops.SCOPE
PATH = "/suppressions"
PAGE_SIZE = 50
WHY = {
    "bounced": "a receiving server refused it for good (a permanent bounce)",
    "complaint": "the recipient marked a message as spam",
    "unsubscribed": "the recipient unsubscribed",
    "manual": "added by hand (the API or this page)",
    "hard_bounce": "a bounce that came back later said the address does not take mail",
    "soft_bounce": "too many temporary bounces (a full mailbox) came back within a week",
}
DONE = {"added": "Address suppressed.", "updated": "Already suppressed: its reason is updated.",
        "removed": "Address no longer suppressed."}  # fmt: skip


def _filters(request: Request) -> tuple[str | None, str | None]:
    """The reason and cursor of the page, refused as GET /api/v1/suppressions refuses them."""
    reason = request.query_params.get("reason") or None
    if reason is not None and reason not in REASONS:
        raise errors.InvalidRequest(f"reason: one of {', '.join(REASONS)}")
    cursor = request.query_params.get("cursor") or None
    too_long = cursor is not None and len(cursor) > suppression_ops.MAX_CURSOR
    if cursor is not None and (too_long or text_problem(cursor, header=True)):
        raise errors.InvalidRequest("cursor: invalid")
    return reason, cursor


async def _found(ctx: ApiContext, search: str) -> tuple[SuppressionRecord | None, str]:
    """The entry of a searched address, or the problem with the address."""
    try:
        return await get_suppression(ctx.db, suppression_ops.address(search, "q")), ""
    except PosternError as error:
        return None, answer_of(error).error


async def _list_page(
    request: Request, ctx: ApiContext, caller: Caller, form: Form, status: int = 200
) -> Response:
    reason, cursor = _filters(request)
    search = request.query_params.get("q", "").strip()[:254]
    found, search_problem = await _found(ctx, search) if search else (None, "")
    records, next_cursor = await list_suppressions(ctx.db, reason, PAGE_SIZE, cursor)
    return page(
        request, "suppressions/list.html", caller, status,
        records=records, next_cursor=next_cursor, cursor=cursor or "", reason=reason or "",
        search=search, found=found, search_problem=search_problem, form=form,
        reasons=REASONS, why=WHY, notice=DONE.get(request.query_params.get("done", ""), ""),
    )  # fmt: skip


async def list_all(request: Request) -> Response:
    ctx, caller = await signed_in(request, SCOPE)
    return await _list_page(request, ctx, caller, Form({"email": "", "reason": "manual"}))


async def add(request: Request) -> Response:
    ctx, caller = await signed_in(request, SCOPE)
    fields = form_fields(await request.body())
    form = Form({"email": fields.get("email", "").strip(), "reason": fields.get("reason", "")})
    try:
        body = checked(SuppressionCreate, form.values)
        record, created = await suppression_ops.add(ctx, body)
    except PosternError as error:
        return await _list_page(request, ctx, caller, form.refused(error), answer_of(error).status)
    return back(PATH, "added" if created else "updated", q=record.email)


async def confirm_remove(request: Request) -> Response:
    ctx, caller = await signed_in(request, SCOPE)
    record = await suppression_ops.get(ctx, request.query_params.get("email", ""))
    asked = Confirm(
        title=f"Stop suppressing {record.email}?",
        text=f"It was suppressed because {WHY.get(record.reason, record.reason)}. "
        "Postern sends to it again from now on.",
        action=f"{PATH}/remove",
        button=f"Remove {record.email}",
        cancel=PATH,
        hidden=(("email", record.email),),
    )
    return confirm(request, caller, asked)


async def remove(request: Request) -> Response:
    """DELETE /api/v1/suppressions/{email}'s steps."""
    ctx, _ = await signed_in(request, SCOPE)
    await suppression_ops.remove(ctx, form_fields(await request.body()).get("email", ""))
    return back(PATH, "removed")


routes = [
    Route(PATH, list_all, methods=["GET"]),
    Route(PATH, add, methods=["POST"]),
    Route(PATH + "/remove", confirm_remove, methods=["GET"]),
    Route(PATH + "/remove", remove, methods=["POST"]),
]
