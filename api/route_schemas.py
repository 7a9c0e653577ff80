"""Request and response bodies of /api/v1/routes (routes by recipient domain)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from api.schemas import Strict

DOMAIN = (
    "a recipient domain: `gmail.com` (that domain only) or `.example.com` (every subdomain "
    "of example.com, not example.com itself); stored lower-case, IDNs as A-labels"
)


class RouteCreate(Strict):
    recipient_domain: str = Field(min_length=1, max_length=254, description=DOMAIN)
    pool: str | None = Field(
        None, min_length=1, max_length=64, description="a pool's name (or give ip_pool)"
    )
    ip_pool: str | None = Field(
        None, min_length=1, max_length=64, description="a group of pools (or give pool)"
    )


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
