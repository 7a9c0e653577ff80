"""What both doors (the API's /v1/messages and the dashboard's Messages pages) say about
messages: whose mail a caller sees, and one message if they may see it.

A key sees only the messages it sent (an `admin` key all); a member, and any key of a user,
those of that user (an admin or owner all). Another's message is a 404, so that a message
id reveals nothing.
"""

from __future__ import annotations

from api import errors
from api.auth import Caller
from api.context import ApiContext
from storage.messages import MessageState, RecipientState, message_state
from storage.queue_sql import bodies_of

DEFAULT_LIMIT = 50  # a page of search results unless the caller asks for another size


def restriction(caller: Caller) -> dict[str, str]:
    """Whose mail the caller sees, as make_filter's restriction: everyone's with the `admin`
    scope (an admin's or owner's session, an admin key of theirs or of the console); else
    its user's (a member, or any key of a user: a key acts for its owner); else, for a key
    made at the console, the mail it sent. The one place that says it: may_see follows it."""
    if caller.has("admin"):
        return {}
    if caller.user is not None:
        return {"user_id": caller.user.id}
    return {"api_key_id": caller.id}


def recipient_status(recipient: RecipientState) -> str:
    """A recipient's status as the API says it: a pending one tried already is deferred."""
    if recipient.status == "pending":
        return "deferred" if recipient.attempts else "queued"
    return recipient.status


def may_see(caller: Caller, state: MessageState) -> bool:
    restricted = restriction(caller)
    if "user_id" in restricted:
        return state.user_id == restricted["user_id"]
    return "api_key_id" not in restricted or state.api_key_id == restricted["api_key_id"]


async def get(ctx: ApiContext, caller: Caller, message_id: str) -> MessageState:
    """The message, if the caller may see it; another's is a 404 (never a 403 that would
    confirm it exists)."""
    state = await message_state(ctx.db, message_id, True) if len(message_id) <= 64 else None
    if state is None or not may_see(caller, state):
        raise errors.NotFound("no such message")
    return state


async def stored_body(ctx: ApiContext, message_id: str) -> bytes | None:
    """The message's stored bytes, exactly, or None once they were deleted (a final
    message's body goes after [storage] body_retention: the metadata stays)."""
    bodies = await ctx.db.read(lambda conn: bodies_of(conn, [message_id]))
    return bodies.get(message_id)


async def body(ctx: ApiContext, state: MessageState) -> bytes:
    """The message's stored bytes; BodyGone once they were deleted."""
    data = await stored_body(ctx, state.id)
    if data is None:
        raise errors.BodyGone(
            "the body of this message is gone: Postern keeps a final message's body for "
            "[storage] body_retention; its status and events remain"
        )
    return data
