"""The pool form: its fields as the API's JSON body, checked by the API's own schema
(api.resource_schemas) and pool_ops, and refusals turned into messages beside the field
they name (or above the form when they name none)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from api import answers, errors
from api.resource_schemas import PoolCreate, PoolUpdate
from api.schemas import parse
from gateway.errors import PosternError
from storage.pools import PoolRecord

TEXTS = ("name", "host", "username", "encryption", "ip_pool", "from_email", "rate")
NUMBERS = ("port", "priority", "max_connections", "daily_limit")
SWITCHES = ("is_active", "is_default", "tls_verify")  # checkboxes: absent means off
ENCRYPTIONS = ("tls", "ssl", "none")
DEFAULTS: dict[str, Any] = {
    "name": "", "host": "", "port": 587, "username": "", "encryption": "tls",
    "ip_pool": "transactional", "priority": 100, "max_connections": 10, "is_default": False,
    "is_active": True, "from_email": "", "tls_verify": True, "rate": "", "daily_limit": 0,
}  # fmt: skip


@dataclass
class PoolForm:
    """What the form shows: its values, and the problems found with them."""

    values: dict[str, Any]
    problems: dict[str, str] = field(default_factory=dict)  # field -> message
    problem: str = ""  # one that names no field of the form

    @classmethod
    def of(cls, record: PoolRecord | None) -> PoolForm:
        if record is None:
            return cls(dict(DEFAULTS))
        return cls({name: getattr(record, name) for name in DEFAULTS})

    def refused(self, error: PosternError) -> PoolForm:
        """Note `error` on the form (an ApiError, or one the API's table answers)."""
        answer = answer_of(error)
        for detail in answer.details:
            name = str(detail.get("field", "")).split(".")[0]
            if name in DEFAULTS or name == "password":
                self.problems.setdefault(name, str(detail.get("message", "")))
        if not self.problems:
            self.problem = answer.error
        return self


def answer_of(error: PosternError) -> errors.ApiError:
    """The API's answer to `error`: its status and text."""
    return error if isinstance(error, errors.ApiError) else answers.answer(error)


def _number(text: str) -> int | str:
    """An integer field's value; what is no integer stays text, for the schema to name."""
    text = text.strip()
    return int(text) if text.lstrip("-").isdigit() and len(text) <= 12 else text


def values_of(fields: dict[str, str]) -> dict[str, Any]:
    """The form's fields as the API's JSON body would give them (the password apart)."""
    values: dict[str, Any] = {name: fields.get(name, "") for name in TEXTS}
    values.update({name: _number(fields.get(name, "")) for name in NUMBERS})
    values.update({name: name in fields for name in SWITCHES})
    return values


def checked_create(values: dict[str, Any], password: str | None) -> dict[str, Any]:
    """The values as PoolCreate takes them (InvalidRequest naming the fields otherwise)."""
    body = parse(PoolCreate, json.dumps({**values, "password": password}).encode())
    return body.model_dump(exclude={"password"})


def checked_update(values: dict[str, Any], password: str | None) -> dict[str, Any]:
    """The values as PoolUpdate takes them (every field given: a full update)."""
    given = {**values, **({"password": password} if password is not None else {})}
    body = parse(PoolUpdate, json.dumps(given).encode())
    return {name: getattr(body, name) for name in values}
