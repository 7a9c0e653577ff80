"""Accept or decline an invitation from the banner every page shows (web.banner), through
the same domain functions as POST /mail/invitations/accept|decline: only the invitee's own
pending invitation can be answered; another's is a 404, an answered one a 409.

Without JavaScript the answer is a 303 back to the page the banner was on; htmx replaces the
banner's line with what happened.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from api.forms import form_fields
from web import banner
from web.guard import signed_in
from web.pages.auth import local_page
from web.render import fragment, is_htmx

PATH = "/invitations/{invitation_id}"


async def _answer(request: Request, accept: bool) -> Response:
    ctx, caller = await signed_in(request)
    assert caller.user is not None  # a session always has its user
    fields = form_fields(await request.body())
    invitations = banner.domain(ctx)
    invitation_id = request.path_params["invitation_id"]
    answer = invitations.accept if accept else invitations.decline
    try:
        await answer(caller.user, invitation_id)
    finally:
        banner.forget(caller.user.id)
    if is_htmx(request):
        said = "accepted: it is shared with you now" if accept else "declined"
        return fragment("_invitation_answered.html", said=said)
    return RedirectResponse(local_page(fields.get("next", "/")), status_code=303)


async def accept(request: Request) -> Response:
    return await _answer(request, True)


async def decline(request: Request) -> Response:
    return await _answer(request, False)


routes = [
    Route(PATH + "/accept", accept, methods=["POST"]),
    Route(PATH + "/decline", decline, methods=["POST"]),
]
