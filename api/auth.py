"""Who is calling: a machine with `Authorization: Bearer msk_...` (an API key), or a person
with the session cookie `sb-access-token` (the seeds' name, so their clients work as
written). Either way the route gets a Caller: what it may do, and whom it acts for.

A key wins when both are sent, and is never subject to CSRF (a browser does not send it on
its own). A cookie is: it authenticates no cross-site request (`Sec-Fetch-Site`), and a
state-changing request it authenticates must come from this origin (`Origin`) and carry the
session's CSRF token (`X-CSRF-Token`, or a form's `csrf_token`). The token is an HMAC of the
session's own token, so it needs no storage, dies with the session and changes at rotation.

Each caller draws on a per-node token bucket sized by `[http] rate_limit` (that the SMTP
listener draws on too for keys: gateway.security.ratelimit).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from starlette.requests import Request

from api.errors import CsrfFailed, Forbidden, RateLimited, Unauthorized, UserRequired
from api.forms import form_fields, is_form
from gateway.message import Sender
from gateway.people import roles
from gateway.people.sessions import LoggedIn
from storage.keys import SEND_SCOPES, ApiKeyRecord
from storage.sessions import SessionRecord
from storage.users import UserRecord

if TYPE_CHECKING:
    from api.context import ApiContext

COOKIE = "sb-access-token"
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf_token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_SAME_SITE = frozenset({"same-origin", "none"})  # `none`: typed in the address bar
TOO_MANY_SIGN_INS = "too many sign-ins for this address or account; try again later"


@dataclass(frozen=True)
class Caller:
    """A request's author: an API key (with its owner, if it has one) or a logged-in user.
    `id` names it in records and logs (key_... or usr_...)."""

    key: ApiKeyRecord | None = None
    user: UserRecord | None = None
    session: SessionRecord | None = None
    token: str = field(default="", repr=False)  # the session's token, for its CSRF token

    @property
    def id(self) -> str:
        if self.key is not None:
            return self.key.id
        assert self.user is not None
        return self.user.id

    @property
    def user_id(self) -> str | None:
        """The user whose records this caller makes (None: a key made at the console)."""
        return self.user.id if self.user is not None else None

    @property
    def role(self) -> str | None:
        return self.user.role if self.user is not None else None

    def has(self, scope: str) -> bool:
        """Allowed by the key's scopes and by its user's role: a key never exceeds it."""
        if self.key is not None and not self.key.has(scope):
            return False
        if self.user is not None and not roles.allows(self.user.role, scope):
            return False
        return self.key is not None or self.user is not None

    @property
    def may_send(self) -> bool:
        return any(self.has(scope) for scope in SEND_SCOPES)

    @property
    def may_sandbox(self) -> bool:
        return self.has("sandbox")

    @property
    def ip_pools(self) -> frozenset[str] | None:
        """The ip_pools this caller may send through; None when it may use any."""
        return self.key.ip_pools if self.key is not None else None

    def sender(self, may_send: bool | None = None, may_sandbox: bool | None = None) -> Sender:
        """This caller as intake's Sender (what it may submit, and whose the mail is)."""
        return Sender(
            self.id,
            self.may_send if may_send is None else may_send,
            self.may_sandbox if may_sandbox is None else may_sandbox,
            self.ip_pools,
            user_id=self.user_id,
            role=self.role,
        )

    @property
    def csrf_token(self) -> str:
        return csrf_token(self.token) if self.token else ""


def for_people_matters(caller: Caller) -> Caller:
    """A caller fit to act on people's own matters (users, sessions, invitations, accounts):
    a session, or a key that holds the `admin` scope itself. A key given for sending never
    acts there as its person, whatever that person's role."""
    if caller.key is not None and not caller.key.has("admin"):
        raise Forbidden("this API key lacks the 'admin' scope: people's matters need it")
    return caller


def acting_person(caller: Caller) -> UserRecord:
    """The user a caller acts for on people's own matters (for_people_matters): a session's,
    or an admin key's owner; 403 user_required for a key without a user."""
    for_people_matters(caller)
    if caller.user is None:
        raise UserRequired("a person's matter: sign in, or use an admin key of a user")
    return caller.user


def csrf_token(session_token: str) -> str:
    digest = hmac.new(session_token.encode(), b"postern csrf", hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def client_address(request: Request) -> str:
    """The client, as uvicorn gives it (a trusted proxy's X-Forwarded-For included)."""
    return request.client.host if request.client else ""


def bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


async def authenticate(request: Request, ctx: ApiContext, scope: str | None = None) -> Caller:
    """The caller (401 without a valid key or session, 403 for a cookie on a cross-site or
    token-less change, 429 over its rate, 403 without `scope`)."""
    secret = bearer(request)
    key = await ctx.keys.authenticate(secret) if secret is not None else None
    caller = Caller(key=key, user=key.owner) if key is not None else None
    if secret is None:
        caller = await session_caller(request, ctx)
        if caller is not None:
            if request.method not in SAFE_METHODS:  # the token the page was given counts
                await check_csrf(request, caller)
            caller = await _rotated_if_stale(request, ctx, caller)
    if caller is None:
        raise Unauthorized()
    request.state.key_id = caller.id  # for the mail log's line of a refused send
    wait = ctx.limiter.take(caller.id)
    if wait > 0:
        raise RateLimited(wait)
    if scope is not None and not caller.has(scope):
        what = "this API key" if caller.key is not None else f"a {caller.role}"
        raise Forbidden(f"{what} lacks the {scope!r} scope")
    return caller


async def session_caller(request: Request, ctx: ApiContext) -> Caller | None:
    """The logged-in user of the session cookie, or None (no cookie, no live session, or a
    cross-site request, which a cookie never authenticates)."""
    token = request.cookies.get(COOKIE)
    if not token or ctx.people is None or not same_site(request):
        return None
    logged_in = await ctx.people.sessions.resolve(token)
    if logged_in is None:
        return None
    return Caller(user=logged_in.user, session=logged_in.session, token=token)


async def _rotated_if_stale(request: Request, ctx: ApiContext, caller: Caller) -> Caller:
    """A session opened before its user's role changed is replaced by a new one, whose
    cookie and CSRF token go out with this answer (api.app.SessionCookies)."""
    if ctx.people is None or caller.session is None or caller.user is None:
        return caller
    logged_in = LoggedIn(caller.session, caller.user)
    if not logged_in.stale_role:
        return caller
    sessions = ctx.people.sessions
    token, renewed = await sessions.rotate(logged_in)
    request.state.session_cookie = cookie_header(request, token, int(sessions.lifetimes.absolute))
    request.state.session_csrf = csrf_token(token)
    return Caller(user=renewed.user, session=renewed.session, token=token)


def cookie_header(request: Request, token: str, max_age: int) -> bytes:
    """The Set-Cookie value of a session (an empty token and 0: the one that clears it)."""
    cookie = f"{COOKIE}={token}; HttpOnly; Max-Age={max_age}; Path=/; SameSite=Lax"
    return (cookie + ("; Secure" if secure_cookies(request) else "")).encode("latin-1")


def secure_cookies(request: Request) -> bool:
    """Over TLS, as uvicorn sees it (a trusted proxy's X-Forwarded-Proto included), or when
    the public URL says the server is reached over https."""
    api = request.app.state.api
    public = api.public_url if api is not None else ""
    return request.url.scheme == "https" or public.lower().startswith("https://")


def same_site(request: Request) -> bool:
    """Whether the browser says the request comes from a page of this site (or says
    nothing: not a browser, or an old one, which the Origin check then covers)."""
    site = request.headers.get("sec-fetch-site")
    return site is None or site in _SAME_SITE


def same_origin(request: Request, public_url: str = "") -> bool:
    """Whether `Origin`, if sent, is this server's own (as the request reached it, or its
    public URL): a change from another site's page is refused even without Sec-Fetch-Site."""
    if not same_site(request):
        return False
    origin = request.headers.get("origin")
    if origin is None:
        return True
    own = {f"{request.url.scheme}://{request.headers.get('host', '')}".lower()}
    if public_url:
        parts = urlsplit(public_url)
        own.add(f"{parts.scheme}://{parts.netloc}".lower())
    return origin.lower() in own


async def check_csrf(request: Request, caller: Caller) -> None:
    """A cookie-authenticated change: this origin, and the session's CSRF token."""
    api = request.app.state.api
    if not same_origin(request, api.public_url if api is not None else ""):
        raise CsrfFailed("cross-origin request refused")
    sent = request.headers.get(CSRF_HEADER) or await _form_token(request)
    if not sent or not hmac.compare_digest(sent.encode(), caller.csrf_token.encode()):
        raise CsrfFailed(
            "missing or wrong CSRF token: send the csrf_token of GET /auth/me "
            "as the X-CSRF-Token header"
        )


async def _form_token(request: Request) -> str | None:
    """The `csrf_token` field of a url-encoded form (a page's form without JavaScript)."""
    if is_form(request.headers.get("content-type", "")):  # the route reads the body again
        return form_fields(await request.body()).get(CSRF_FIELD)
    return None
