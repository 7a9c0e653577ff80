"""What the resource pages (aliases, domains, API keys, webhooks, suppressions) share: a
form's values checked by the API's own schema (as its JSON body would be), a refusal turned
into messages beside the fields it names (or above the form), and the 303 back to a list."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import quote

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from api.auth import Caller
from api.schemas import parse
from gateway.errors import PosternError
from web.pages.pool_form import answer_of
from web.render import page

M = TypeVar("M", bound=BaseModel)


@dataclass
class Form:
    """What a form shows: its values, and the problems found with them."""

    values: dict[str, Any]
    problems: dict[str, str] = field(default_factory=dict)  # field -> message
    problem: str = ""  # one that names no field of the form

    def refused(self, error: PosternError, unnamed: str = "") -> Form:
        """Note `error` on the form (an ApiError, or one the API's table answers); one that
        names no field goes beside `unnamed`, if given, else above the form."""
        answer = answer_of(error)
        for detail in answer.details:
            name = str(detail.get("field", "")).split(".")[0]
            if name in self.values:
                self.problems.setdefault(name, str(detail.get("message", "")))
        if not self.problems and unnamed:
            self.problems[unnamed] = answer.error
        if not self.problems:
            self.problem = answer.error
        return self


def checked(model: type[M], values: dict[str, Any]) -> M:
    """`values` as the API's schema takes them (InvalidRequest naming the fields otherwise)."""
    return parse(model, json.dumps(values).encode())


def chosen(fields: dict[str, str], prefix: str, names: tuple[str, ...]) -> list[str]:
    """The checked boxes of a group (`<prefix><name>` each: a form keeps one value a name)."""
    return [name for name in names if f"{prefix}{name}" in fields]


def back(path: str, done: str, **query: str) -> RedirectResponse:
    """A 303 to `path` saying what was done (and any other query)."""
    extra = "".join(f"&{name}={quote(value, safe='')}" for name, value in query.items())
    return RedirectResponse(f"{path}?done={done}{extra}", status_code=303)


@dataclass(frozen=True)
class Confirm:
    """A confirmation page of its own (so a delete works without JavaScript)."""

    title: str
    text: str
    action: str  # where the form posts
    button: str
    cancel: str  # where "Cancel" goes
    hidden: tuple[tuple[str, str], ...] = ()


def confirm(
    request: Request, caller: Caller, asked: Confirm, problem: str = "", status: int = 200
) -> Response:
    """The confirmation page (again, with `problem`, when the change was refused)."""
    shown = {name: getattr(asked, name) for name in Confirm.__dataclass_fields__}
    return page(request, "confirm.html", caller, status, problem=problem, **shown)


def refused_confirm(
    request: Request, caller: Caller, asked: Confirm, error: PosternError
) -> Response:
    answer = answer_of(error)
    return confirm(request, caller, asked, answer.error, answer.status)
