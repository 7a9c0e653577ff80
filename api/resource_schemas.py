"""Request and response bodies of the management resources: SMTP pools, the
MailSage SMTP configs view of them, aliases and domains. Requests are strict
as in api.schemas: a wrong type or an unknown field is a 400.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel

from api.schemas import EMAIL, HEADER_TEXT, WHOLE, Patch, Strict
from gateway import rates

# A host name: labels of letters, digits and '-' (not at either end), a final dot allowed.
_NAME = r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(?:\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?"
# A pool's host: a name or an IP address, bare or in brackets; api.pool_ops refuses any
# other host with this same pattern.
HOST_PATTERN = rf"^(?:{_NAME}|\[[0-9A-Fa-f:.]+\]|[0-9A-Fa-f]*:[0-9A-Fa-f:.]+)$"
# A domain (gateway.dkim.names.normalise_domain): a name, or an internationalised one.
DOMAIN: dict[str, Any] = {"anyOf": [{"pattern": f"^{_NAME}$"}, {"format": "idn-hostname"}]}

# Hosts gateway.config.is_loopback takes for this machine: the only ones AUTH may be sent
# to without TLS (api.pool_ops.check_target).
LOOPBACK_PATTERN = (
    r"^(?:localhost|127(?:\.(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])){3}"
    r"|\[?::1\]?|\[?0:0:0:0:0:0:0:1\]?)$"
)


def _no_clear_text_auth(switch: str, off: object, *, partial: bool = False) -> dict[str, Any]:
    """A username (AUTH) with encryption off (`switch` = `off`) only towards loopback. In a
    `partial` update, what a body leaves out is the pool's own: only a body that gives all
    three can be judged alone."""
    loopback = {"required": ["host"], "properties": {"host": {"pattern": LOOPBACK_PATTERN}}}
    return {
        "anyOf": [
            {"not": {"required": [switch], "properties": {switch: {"const": off}}}},
            {"not": {"required": ["username"], "properties": {"username": {"minLength": 1}}}},
            *([{"not": {"required": ["host"]}}] if partial else []),
            loopback,
        ]
    }


Encryption = Literal["tls", "ssl", "none"]
Group = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")]
Name = Annotated[str, Field(min_length=1, max_length=128, json_schema_extra=HEADER_TEXT)]
Host = Annotated[
    str, Field(min_length=1, max_length=253, json_schema_extra={"pattern": HOST_PATTERN})
]
Port = Annotated[int, Field(ge=1, le=65535), WHOLE]
Priority = Annotated[int, Field(ge=0, le=1_000_000), WHOLE]
Connections = Annotated[int, Field(ge=1, le=1000), WHOLE]
Username = Annotated[str, Field(max_length=256, json_schema_extra=HEADER_TEXT)]
Password = Annotated[
    str,
    Field(
        max_length=1024, description="write-only; stored encrypted", json_schema_extra=HEADER_TEXT
    ),
]
Email = Annotated[str, Field(min_length=3, max_length=254, json_schema_extra=EMAIL)]
# A pool's sender for test messages: an address, or "" for postern@<server.hostname>.
FromEmail = Annotated[
    str, Field(max_length=254, json_schema_extra={"anyOf": [{"maxLength": 0}, EMAIL]})
]
RateText = Annotated[
    str,
    Field(
        max_length=32,
        json_schema_extra={"pattern": rates.PATTERN},
        description='sends per rolling window across nodes, e.g. "100/min", "14/s", '
        '"20/10s" (units s, min, hour; the grammar of [http] rate_limit); "" = none',
    ),
]
DailyLimit = Annotated[
    int,
    Field(ge=0, le=1_000_000_000, description="sends per UTC day across nodes; 0 = none"),
    WHOLE,
]


# --- SMTP pools ----------------------------------------------------------------------------


class PoolCreate(Strict):
    model_config = ConfigDict(json_schema_extra=_no_clear_text_auth("encryption", "none"))

    name: Name
    host: Host
    port: Port
    username: Username = ""
    password: Password | None = None
    encryption: Encryption = "tls"
    ip_pool: Group = "transactional"
    priority: Priority = 100
    max_connections: Connections = 10
    is_default: bool = False
    is_active: bool = True
    from_email: FromEmail = ""
    tls_verify: bool = True
    rate: RateText = ""
    daily_limit: DailyLimit = 0


class PoolUpdate(Patch):
    """Only the fields present change; `"password": null` or `""` removes the password."""

    NULLABLE = frozenset({"password"})
    RULES = _no_clear_text_auth("encryption", "none", partial=True)

    name: Name | None = None
    host: Host | None = None
    port: Port | None = None
    username: Username | None = None
    password: Password | None = None
    encryption: Encryption | None = None
    ip_pool: Group | None = None
    priority: Priority | None = None
    max_connections: Connections | None = None
    is_default: bool | None = None
    is_active: bool | None = None
    from_email: FromEmail | None = None
    tls_verify: bool | None = None
    rate: RateText | None = None
    daily_limit: DailyLimit | None = None


class WarmupBrief(BaseModel):
    status: Literal["not_started", "active", "paused", "complete"]
    daily_limit: int | None = Field(description="today's, from the schedule")
    sent_today: int


class SmtpPool(BaseModel):
    id: str
    name: str
    host: str
    port: int
    username: str
    encryption: Encryption
    is_active: bool
    created_at: str
    ip_pool: str
    priority: int
    max_connections: int
    is_default: bool
    from_email: str
    tls_verify: bool
    rate: str = Field(description='e.g. "100/min"; "" = none')
    daily_limit: int = Field(description="0 = none")
    source: Literal["api", "config"] = Field(description="config: read-only over the API")
    has_password: bool = Field(
        description="a password is stored (write-only); a change of host, port, encryption, "
        "tls_verify or username without a new password clears it"
    )
    created_by: str | None = Field(None, description="the user who made it (null: a key's)")
    warmup: WarmupBrief | None = Field(
        None, description="its warmup (/api/v1/warmup/pool/{id}), null when it has none"
    )


class SmtpPoolList(RootModel[list[SmtpPool]]):
    pass


class PoolDeleted(BaseModel):
    success: Literal[True]
    moved: int | None = Field(None, description="with move_to: how many messages moved")


class PoolTest(Strict):
    recipient: Email | None = Field(None, description="also send a test message to it")


class PoolTestResult(BaseModel):
    success: bool
    message: str
    latencyMs: int  # camelCase: the documented name
    error: str | None = Field(None, description="failure only")
    code: (
        Literal["smtp_connection_error", "smtp_auth_error", "smtp_tls_error", "timeout"] | None
    ) = Field(None, description="failure only")
    reason: (
        Literal["connect_failed", "not_smtp", "rejected", "tls_failed", "auth_failed", "timeout"]
        | None
    ) = Field(None, description="failure only: what failed")
    reply: str | None = Field(
        None,
        description="failure only: the server's SMTP reply that made it fail (code and "
        "printable ASCII text, truncated); null when there was none",
    )
    message_id: str | None = Field(None, description="with a recipient: the test message")
    queued: bool | None = Field(None, description="202: not accepted yet, retried")


# --- MailSage SMTP configs -----------------------------------------------------------------


class ConfigCreate(Strict):
    model_config = ConfigDict(json_schema_extra=_no_clear_text_auth("use_tls", False))

    name: Name
    host: Host
    port: Port
    username: Username = ""
    password: Password | None = None
    use_tls: bool = True
    from_email: FromEmail
    is_default: bool = False


class ConfigUpdate(Patch):
    NULLABLE = frozenset({"password"})
    RULES = _no_clear_text_auth("use_tls", False, partial=True)

    name: Name | None = None
    host: Host | None = None
    port: Port | None = None
    username: Username | None = None
    password: Password | None = None
    use_tls: bool | None = None
    from_email: FromEmail | None = None
    is_default: bool | None = None


class SmtpConfig(BaseModel):
    id: str
    name: str
    host: str
    port: int
    username: str
    from_email: str
    is_default: bool
    use_tls: bool
    created_at: str
    has_password: bool = Field(
        description="a password is stored (write-only); a change of host, port, use_tls or "
        "username without a new password clears it"
    )
    updated_at: str | None = None


class PageMeta(BaseModel):
    current_page: int
    total_pages: int
    total_items: int
    per_page: int


class SmtpConfigPage(BaseModel):
    data: list[SmtpConfig]
    meta: PageMeta


class ConfigTest(Strict):
    recipient: Email


class ConfigTestResult(BaseModel):
    message: str
    delivery_id: str
    latencyMs: int
    queued: bool | None = Field(None, description="202: not accepted yet, retried")
    message_id: str | None = Field(None, description="202: the same as delivery_id")


class ConfigDeleted(BaseModel):
    message: str
    moved: int | None = Field(None, description="with move_to: how many messages moved")


# --- aliases -------------------------------------------------------------------------------


class AliasCreate(Strict):
    email: Email
    name: str | None = Field(None, max_length=256, json_schema_extra=HEADER_TEXT)
    is_default: bool = False
    ip_pool: Group | None = None


class AliasUpdate(Patch):
    NULLABLE = frozenset({"name", "ip_pool"})  # null: no display name, no group

    name: str | None = Field(None, max_length=256, json_schema_extra=HEADER_TEXT)
    is_default: bool | None = None
    ip_pool: Group | None = None


class Alias(BaseModel):
    id: str
    email: str
    name: str
    is_default: bool
    is_verified: bool
    ip_pool: str | None
    created_at: str
    created_by: str | None = Field(None, description="the user who made it (null: a key's)")


class AliasResponse(BaseModel):
    success: Literal[True]
    alias: Alias
    verification_message_id: str | None = Field(
        None, description="creation only: the verification message (None if it was refused)"
    )


class AliasList(BaseModel):
    success: Literal[True]
    aliases: list[Alias]


# --- domains -------------------------------------------------------------------------------


class DomainCreate(Strict):
    domain: str = Field(min_length=1, max_length=253, json_schema_extra=DOMAIN)
    verified: bool = Field(False, description="admin keys only: skip the DNS check")
    algorithm: Literal["rsa", "ed25519"] = "rsa"


class DnsRecord(BaseModel):
    purpose: Literal["dkim", "spf", "dmarc"]
    type: Literal["TXT"]
    name: str
    value: str
    required: bool


class Domain(BaseModel):
    id: str
    domain: str
    is_verified: bool
    created_at: str
    verified_at: str | None
    checked_at: str | None
    records: list[DnsRecord]
    created_by: str | None = Field(None, description="the user who made it (null: a key's)")


class DomainResponse(BaseModel):
    success: Literal[True]
    domain: Domain


class DomainList(BaseModel):
    success: Literal[True]
    domains: list[Domain]


class DomainCheck(BaseModel):
    purpose: Literal["dkim", "spf", "dmarc"]
    name: str
    status: Literal["verified", "missing", "mismatch", "temporary_error"]
    required: bool
    found: list[str]
    detail: str


class DomainVerification(BaseModel):
    success: Literal[True]
    verified: bool
    domain: Domain
    checks: list[DomainCheck]


class DkimKeyCreate(Strict):
    algorithm: Literal["rsa", "ed25519"] = "rsa"


class DkimKey(BaseModel):
    selector: str
    algorithm: Literal["rsa", "ed25519"]
    status: Literal["active", "pending", "retired"]
    created_at: str
    record: DnsRecord = Field(description="the TXT record that publishes this key")


class DkimKeyList(BaseModel):
    success: Literal[True]
    keys: list[DkimKey]


class DkimKeyResponse(BaseModel):
    success: Literal[True]
    key: DkimKey
