"""GET /openapi.json: built from the routes themselves, so no route can go undocumented.

Each endpoint carries an `Operation` (set by the `operation` decorator); the document is
assembled from the app's routes and the pydantic models the operations name.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from starlette.routing import BaseRoute, Route

from api.schemas import ErrorResponse

F = TypeVar("F", bound=Callable[..., Any])
REF = "#/components/schemas/{model}"

_COMMON_ERRORS = {
    401: "missing, unknown or revoked API key",
    429: "rate limited: see Retry-After",
}


@dataclass(frozen=True)
class Operation:
    summary: str
    responses: dict[int, tuple[str, type[BaseModel] | None]]
    scope: str | None = None  # None: no API key needed; "": a key with any scope
    request: type[BaseModel] | None = None
    parameters: Sequence[dict[str, Any]] = field(default_factory=tuple)
    description: str = ""
    request_required: bool = True


def operation(
    summary: str,
    *,
    responses: dict[int, tuple[str, type[BaseModel] | None]],
    scope: str | None = None,
    request: type[BaseModel] | None = None,
    parameters: Sequence[dict[str, Any]] = (),
    description: str = "",
    request_required: bool = True,
) -> Callable[[F], F]:
    def mark(endpoint: F) -> F:
        endpoint.__openapi__ = Operation(  # type: ignore[attr-defined]
            summary, responses, scope, request, tuple(parameters), description, request_required
        )
        return endpoint

    return mark


def path_parameter(name: str, description: str, **constraints: Any) -> dict[str, Any]:
    """A path parameter; `constraints` are JSON Schema keywords its value must meet."""
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": {"type": "string", **constraints},
    }


def query_parameter(
    name: str, description: str, kind: str = "string", *, required: bool = False, **constraints: Any
) -> dict[str, Any]:
    """A query parameter; `constraints` are JSON Schema keywords its value must meet."""
    return {
        "name": name,
        "in": "query",
        "required": required,
        "description": description,
        "schema": {"type": kind, **constraints},
    }


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": REF.format(model=model.__name__)}


def _operation(op: Operation, method: str) -> dict[str, Any]:
    responses: dict[str, Any] = {}
    errors = dict(_COMMON_ERRORS) if op.scope is not None else {}
    if op.scope:
        errors[403] = f"the API key lacks the {op.scope!r} scope"
    if op.request:
        errors[400] = "malformed JSON, a wrong type, or a field out of bounds"
        errors[413] = "body larger than [http] max_body_size"
    for status, (text, model) in sorted(op.responses.items()):
        entry: dict[str, Any] = {"description": text}
        if model is not None:
            entry["content"] = {"application/json": {"schema": _ref(model)}}
        responses[str(status)] = entry
    for status, text in errors.items():
        responses.setdefault(
            str(status),
            {"description": text, "content": {"application/json": {"schema": _ref(ErrorResponse)}}},
        )
    result: dict[str, Any] = {
        "summary": op.summary,
        "operationId": f"{method}_{op.summary}".lower().replace(" ", "_"),
        "responses": responses,
    }
    if op.description:
        result["description"] = op.description
    if op.parameters:
        result["parameters"] = list(op.parameters)
    if op.request is not None:
        result["requestBody"] = {
            "required": op.request_required,
            "content": {"application/json": {"schema": _ref(op.request)}},
        }
    if op.scope is not None:
        result["security"] = [{"apiKey": []}]
    if op.scope:
        result["x-scope"] = op.scope
    return result


def build_openapi(routes: Sequence[BaseRoute], title: str, version: str) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    models: set[type[BaseModel]] = {ErrorResponse}
    requests: set[type[BaseModel]] = set()
    for route in routes:
        if not isinstance(route, Route):
            continue
        op: Operation | None = getattr(route.endpoint, "__openapi__", None)
        if op is None:
            raise RuntimeError(f"route {route.path} has no OpenAPI operation")
        path = re.sub(r"{(\w+):\w+}", r"{\1}", route.path)  # drop Starlette's converters
        for method in sorted((route.methods or set()) - {"HEAD"}):
            paths.setdefault(path, {})[method.lower()] = _operation(op, method.lower())
        models.update(model for _, model in op.responses.values() if model is not None)
        if op.request is not None:
            requests.add(op.request)
    inputs = [(model, "validation") for model in sorted(requests, key=lambda m: m.__name__)]
    outputs = [(model, "serialization") for model in sorted(models, key=lambda m: m.__name__)]
    _, schemas = models_json_schema([*inputs, *outputs], ref_template=REF)  # type: ignore[list-item]
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version},
        "paths": paths,
        "components": {
            "schemas": schemas.get("$defs", {}),
            "securitySchemes": {
                "apiKey": {"type": "http", "scheme": "bearer", "description": "msk_... key"}
            },
        },
    }
