"""Request and response bodies of /api/v1/routes (routes by recipient domain)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.json_schema import SkipJsonSchema

from api.resource_schemas import Group, Name
from api.schemas import Strict

DOMAIN = (
    "a recipient domain: `gmail.com` (that domain only) or `.example.com` (every subdomain "
    "of example.com, not example.com itself); stored lower-case; an IDN as its A-labels "
    "(xn--...)"
)
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
DOMAIN_PATTERN = rf"^\.?{_LABEL}(?:\.{_LABEL})*$"


class RouteCreate(Strict):
    # Exactly one of pool and ip_pool, neither null: the document says so, and so does
    # the check below (a 400 either way).
    model_config = ConfigDict(
        json_schema_extra={"oneOf": [{"required": ["pool"]}, {"required": ["ip_pool"]}]}
    )

    recipient_domain: str = Field(
        min_length=1, max_length=253, pattern=DOMAIN_PATTERN, description=DOMAIN
    )
    pool: Name | SkipJsonSchema[None] = Field(None, description="a pool's name (or ip_pool)")
    ip_pool: Group | SkipJsonSchema[None] = Field(None, description="a group (or pool)")

    @model_validator(mode="before")
    @classmethod
    def _one_target(cls, data: Any) -> Any:
        if isinstance(data, dict):
            nulls = [name for name in ("pool", "ip_pool") if name in data and data[name] is None]
            if nulls:
                raise ValueError(f"{nulls[0]} may not be null: leave it out")
            if ("pool" in data) == ("ip_pool" in data):
                raise ValueError('give exactly one of "pool" (a pool\'s name) and "ip_pool"')
        return data


class RouteEntry(BaseModel):
    id: str | None = Field(description="null for the config file's entries")
    recipient_domain: str
    pool: str | None
    ip_pool: str | None
    source: Literal["config", "api"]
    shadowed: bool = Field(
        description="an API entry the config file's entry for the same domain overrides"
    )
    created_at: str | None


class RouteList(BaseModel):
    success: Literal[True]
    routes: list[RouteEntry]


class RouteResponse(BaseModel):
    success: Literal[True]
    route: RouteEntry
