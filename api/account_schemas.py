"""Request and response bodies of connected accounts (seed 004, field for field, plus the
record's added fields). Requests are strict as in api.schemas: a wrong type or an unknown
field is a 400."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from api.resource_schemas import LOOPBACK_PATTERN, Email, Host, Port, WarmupBrief
from api.schemas import HEADER_TEXT, Strict

Security = Literal["ssl", "starttls", "none"]
SyncStatus = Literal["pending", "syncing", "synced", "error"]


def _clear_text_on_loopback_only() -> dict[str, Any]:
    """A side without TLS (`none`) only towards a loopback host: the password in clear never
    leaves the machine (gateway.accounts.verify)."""

    def side(name: str) -> dict[str, Any]:
        switch = f"{name}_security"
        loopback = {"properties": {f"{name}_host": {"pattern": LOOPBACK_PATTERN}}}
        plain = {"required": [switch], "properties": {switch: {"const": "none"}}}
        return {"anyOf": [{"not": plain}, loopback]}

    return {"allOf": [side("imap"), side("smtp")]}


_SECURITY = (
    "ssl (implicit TLS), starttls, or none (loopback hosts only); default: ssl on the side's "
    "TLS port (993, 465), else starttls"
)


class AccountConnect(Strict):
    model_config = ConfigDict(json_schema_extra=_clear_text_on_loopback_only())

    email: Email
    name: Annotated[str, Field(max_length=256, json_schema_extra=HEADER_TEXT)] = ""
    imap_host: Host
    imap_port: Port
    smtp_host: Host
    smtp_port: Port
    username: Annotated[str, Field(min_length=1, max_length=320, json_schema_extra=HEADER_TEXT)]
    password: Annotated[
        str,
        Field(
            min_length=1, max_length=1024, description="write-only; stored encrypted",
            json_schema_extra=HEADER_TEXT,
        ),
    ]  # fmt: skip
    imap_security: Security | None = Field(default=None, description=_SECURITY)
    smtp_security: Security | None = Field(default=None, description=_SECURITY)
    tls_verify: bool = Field(
        default=True,
        description="false: accept the servers' certificates unverified (an admin's choice, "
        "or for loopback hosts: anyone else is refused, 403 tls_verify_admin_only)",
    )


class AccountUpdate(Strict):
    """PATCH /mail/accounts/{id}: only the fields given change. A side's `*_security`
    none is still loopback only (checked against the host the account will have)."""

    email: Email | None = None
    name: Annotated[str, Field(max_length=256, json_schema_extra=HEADER_TEXT)] | None = None
    imap_host: Host | None = None
    imap_port: Port | None = None
    smtp_host: Host | None = None
    smtp_port: Port | None = None
    username: (
        Annotated[str, Field(min_length=1, max_length=320, json_schema_extra=HEADER_TEXT)] | None
    ) = None
    password: (
        Annotated[
            str,
            Field(
                min_length=1,
                max_length=1024,
                json_schema_extra=HEADER_TEXT,
                description="write-only; stored encrypted. Given, both logins are proved "
                "with it first. Left out while a host, port, security or the username "
                "changes (or tls_verify is turned off), the stored password is cleared",
            ),
        ]
        | None
    ) = None
    imap_security: Security | None = Field(
        default=None, description="as on connect; a port changed without it: the new port's default"
    )
    smtp_security: Security | None = Field(
        default=None, description="as on connect; a port changed without it: the new port's default"
    )
    tls_verify: bool | None = Field(
        default=None,
        description="false: accept the servers' certificates unverified (an admin's choice, "
        "or for loopback hosts)",
    )
    is_default: bool | None = Field(
        default=None,
        description="true: its owner's default account (the previous one no longer is); "
        "false is refused on the default account (make another the default instead)",
    )


class Account(BaseModel):
    id: str
    email: str
    name: str
    imap_host: str
    imap_port: int
    imap_security: Security
    smtp_host: str
    smtp_port: int
    smtp_security: Security
    tls_verify: bool
    username: str
    sync_status: SyncStatus
    is_default: bool
    created_at: str
    last_error: str | None
    last_synced_at: str | None
    warmup: WarmupBrief | None = Field(
        None, description="its warmup (/api/v1/warmup/account/{id}), null when it has none"
    )


class AccountList(BaseModel):
    success: Literal[True]
    accounts: list[Account]


class SkippedMail(BaseModel):
    """A message of the account's mailbox the sync did not hand over; it stays there."""

    mailbox: str
    uidvalidity: int
    uid: int
    size: int
    reason: str
    created_at: str


class SkippedList(BaseModel):
    success: Literal[True]
    skipped: list[SkippedMail]


class ConnectedAccount(BaseModel):
    id: str
    email: str
    sync_status: SyncStatus


class ConnectResponse(BaseModel):
    success: Literal[True]
    account: ConnectedAccount


class UpdateResponse(BaseModel):
    success: Literal[True]
    account: Account
