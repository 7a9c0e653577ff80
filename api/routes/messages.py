"""GET /v1/messages/{message_id}: where a message is, per recipient.

A key sees only the messages it sent (an `admin` key sees all); anything else is a 404, so
that a message id reveals nothing to another key.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from api import errors
from api.auth import authenticate
from api.context import ApiContext, iso
from api.openapi import operation, path_parameter
from api.schemas import ErrorResponse, MessageStatus
from storage.messages import RecipientState, message_state


def _recipient_status(recipient: RecipientState) -> str:
    if recipient.status == "pending":
        return "deferred" if recipient.attempts else "queued"
    return recipient.status


@operation(
    "Get a message's status",
    scope="",
    parameters=[path_parameter("message_id", "the id POST /v1/send returned")],
    responses={
        200: ("the message and each recipient's last result", MessageStatus),
        404: ("no such message, or another key's", ErrorResponse),
    },
)
async def get_message(request: Request) -> Response:
    ctx: ApiContext = request.app.state.api
    key = await authenticate(request, ctx.keys, ctx.limiter)
    message_id = request.path_params["message_id"]
    state = await message_state(ctx.db, message_id) if len(message_id) <= 64 else None
    if state is None or not (key.has("admin") or state.api_key_id == key.id):
        raise errors.NotFound("no such message")
    return JSONResponse(
        {
            "message_id": state.id,
            "status": state.status,
            "pool": state.pool,
            "attempts": state.attempts,
            "recipients": [
                {"email": r.email, "status": _recipient_status(r), "response": r.response}
                for r in state.recipients
            ],
            "created_at": iso(state.created_at),
            "updated_at": iso(state.updated_at),
            "provider": state.provider,
            "tags": state.tags,
            "metadata": state.metadata,
        }
    )


routes = [Route("/v1/messages/{message_id}", get_message, methods=["GET"])]
