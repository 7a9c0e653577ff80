"""What the two doors to webhooks share (/api/v1/webhooks and Settings → Webhooks): who
sees which webhook, the checks beyond the schema (the URL's syntax and SSRF guard, the
event filter, the description), the signing secret sealed to the webhook's id, and replay.

    create:  checked -> a new secret, sealed (gateway.webhooks.signing) -> stored -> the
             record and the secret (shown this once, stored nowhere in clear)
    change:  the fields given, checked together with the event filter they leave
    replay:  an active webhook's stored events since a time, queued again (same ids)

`get` is the door to one webhook (another's is a 404, as for none); the operations on one
webhook take what `get` returned.
"""

from __future__ import annotations

from typing import Any

from api import errors
from api.auth import Caller
from api.context import ApiContext
from api.ownership import visible_to
from gateway.intake.fields import text_problem
from gateway.queue import events
from gateway.queue.operations import FilterError, parse_time
from gateway.security.hostguard import HostGuard, HostRefused
from gateway.webhooks import urls as webhook_urls
from gateway.webhooks.signing import new_secret, seal
from storage import webhooks as store
from storage.db import Database
from storage.dkim_keys import Cipher
from storage.webhooks import WebhookRecord

SCOPE = "webhooks"
INACTIVE = "the webhook is inactive: activate it first"


def _bad(field: str, message: str) -> errors.InvalidRequest:
    return errors.InvalidRequest(f"{field}: {message}", [{"field": field, "message": message}])


async def check(ctx: ApiContext, values: dict[str, Any]) -> None:
    await check_with(ctx.management().webhook_guard, values)


async def check_with(guard: HostGuard, values: dict[str, Any]) -> None:
    """Checks beyond the schema: the URL (syntax and SSRF guard), the event filter, the
    description (InvalidRequest or HostNotAllowed naming the field)."""
    url = values.get("url")
    if url is not None:
        try:
            await webhook_urls.check(guard, url)
        except webhook_urls.BadUrl as error:
            raise _bad("url", str(error)) from None
        except HostRefused as error:
            raise errors.HostNotAllowed(
                f"url: {error}", [{"field": "url", "message": str(error)}]
            ) from None
    types, final_only = values.get("event_types"), values.get("final_only")
    if final_only and types and not set(types) & events.FINAL:
        raise _bad("event_types", "none is a final outcome: final_only would receive nothing")
    description = values.get("description")
    problem = text_problem(description, header=True) if description else None
    if problem:
        raise _bad("description", problem)


async def records(ctx: ApiContext, caller: Caller) -> list[WebhookRecord]:
    """Every webhook the caller may see."""
    seen = await visible_to(ctx, caller, "webhook")
    return seen.only(await store.list_webhooks(ctx.db), lambda r: (r.id, r.created_by))


async def get(ctx: ApiContext, caller: Caller, webhook_id: str) -> WebhookRecord:
    """The webhook, if the caller may see it (else a 404, as for none)."""
    record = await store.get_webhook(ctx.db, webhook_id)
    seen = await visible_to(ctx, caller, "webhook")
    if record is None or not seen.allows(record.id, record.created_by):
        raise errors.NotFound("no such webhook")
    return record


async def create(
    ctx: ApiContext, caller: Caller, values: dict[str, Any]
) -> tuple[WebhookRecord, str]:
    """A new webhook of WebhookCreate's `values`, checked, and its signing secret."""
    manage = ctx.management()
    return await create_with(ctx.db, manage.box, manage.webhook_guard, values, caller.user_id)


async def create_with(
    db: Database, box: Cipher, guard: HostGuard, values: dict[str, Any], created_by: str | None
) -> tuple[WebhookRecord, str]:
    """create's work, for callers without a running service (`postern webhooks add`)."""
    await check_with(guard, values)
    secret = new_secret()
    record = await store.create_webhook(
        db, values, lambda webhook_id: seal(box, webhook_id, secret), created_by
    )
    return record, secret


async def change(ctx: ApiContext, current: WebhookRecord, changes: dict[str, Any]) -> WebhookRecord:
    """The webhook with `changes` made (is_active: true also clears the back-off), checked
    with the event filter they leave."""
    was = {"event_types": current.event_types, "final_only": current.final_only}
    await check(ctx, {**was, **changes})
    record = await store.update_webhook(ctx.db, current.id, changes)
    if record is None:
        raise errors.NotFound("no such webhook")
    return record


async def delete(ctx: ApiContext, record: WebhookRecord) -> None:
    """The webhook removed, with the events still owed to it."""
    if not await store.delete_webhook(ctx.db, record.id):
        raise errors.NotFound("no such webhook")


def parse_since(value: Any) -> float:
    """ISO 8601 (no zone = UTC) or UNIX seconds -> UNIX seconds; InvalidRequest otherwise
    (the parser of the queue filters' since/until)."""
    try:
        return parse_time("since", value)
    except FilterError:
        raise _bad("since", "an ISO 8601 time or UNIX seconds, from 1970 to 9999") from None


async def replay(
    ctx: ApiContext, record: WebhookRecord, since: float, inactive: str = INACTIVE
) -> int:
    """How many stored events the webhook wants since `since` are queued to it again;
    WebhookInactive (409, in the door's words `inactive`) for one switched off."""
    if not record.is_active:
        raise errors.WebhookInactive(inactive)
    types = store.wanted_types(record.event_types, record.final_only, events.FINAL)
    queued = await store.replay(ctx.db, record.id, since, types)
    if queued is None:
        raise errors.NotFound("no such webhook")
    return queued
