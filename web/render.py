"""Templates: one Jinja2 environment (autoescaped, strict about unknown names), the context
every page shares (the caller, their CSRF token, the navigation, static URLs), and answers
that are a whole page or, for an htmx request, only a fragment of one."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from markupsafe import Markup
from starlette.requests import Request
from starlette.responses import HTMLResponse

from api.auth import Caller
from web import nav, static_files

TEMPLATES = Path(__file__).parent / "templates"


def when(timestamp: float | None) -> Markup:
    """A point in time as `<time>`: UTC in the page, the browser's zone once the script has
    run (web/static/dashboard.js), UTC on hover."""
    if timestamp is None:
        return Markup("—")
    moment = datetime.fromtimestamp(timestamp, UTC)
    iso = moment.isoformat(timespec="seconds").replace("+00:00", "Z")
    shown = moment.strftime("%Y-%m-%d %H:%M UTC")
    return Markup('<time datetime="{}" title="UTC">{}</time>').format(iso, shown)


def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(default=True, default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        auto_reload=False,
    )
    env.globals["static"] = static_files.url
    env.filters["when"] = when
    return env


ENV = _environment()


def is_htmx(request: Request) -> bool:
    """An htmx request (HX-Request: true) gets a fragment, not the page around it."""
    return request.headers.get("hx-request") == "true"


def html(text: str, status: int = 200, vary: bool = False) -> HTMLResponse:
    headers = {"Cache-Control": "no-store"}
    if vary:
        headers["Vary"] = "HX-Request"
    return HTMLResponse(text, status_code=status, headers=headers)


def page(
    request: Request,
    template: str,
    caller: Caller | None,
    status: int = 200,
    *,
    vary: bool = False,
    **context: Any,
) -> HTMLResponse:
    """A whole page: `template` with the shared context (`caller` None: signed out)."""
    shared = {
        "caller": caller,
        "csrf": caller.csrf_token if caller is not None else "",
        "sections": nav.sections(caller) if caller is not None else [],
        "path": request.url.path,
        "invitations": getattr(request.state, "invitations", []),  # web.guard loads them
    }
    return html(ENV.get_template(template).render(**shared, **context), status, vary)


def fragment(template: str, status: int = 200, **context: Any) -> HTMLResponse:
    """A part of a page, for htmx to swap in (Vary: HX-Request: the same URL answers a
    whole page without it)."""
    return html(ENV.get_template(template).render(**context), status, vary=True)
