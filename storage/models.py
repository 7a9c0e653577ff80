"""SQLModel tables. Times are UNIX seconds (float) so that the claim path compares numbers.

The claim path reads one partial index: `message.due_at` is set while a message still has
work to do (when it is due, or when a worker's claim on it lapses) and NULL once it is final.
Bodies live in their own table so that scans of `message` never drag them along.
"""

from __future__ import annotations

from sqlalchemy import (
    DDL,
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    LargeBinary,
    Text,
    text,
)
from sqlalchemy.event import listen
from sqlmodel import Field, SQLModel

SCHEMA_VERSION = 10

# A 64-bit key on PostgreSQL; on SQLite exactly INTEGER, so that it is the rowid.
BIG_ID = BigInteger().with_variant(Integer(), "sqlite")


# The `due_at` of a held message (status `held`, gateway.queue.store.hold): it still has work
# left (due_at not NULL, so retention and the queue gauge see it), but its time lies past
# any claim, so the due index never offers it to a worker and it sorts after all due mail.
HELD_DUE = 253402300799.0  # 9999-12-31T23:59:59Z


class Message(SQLModel, table=True):
    __tablename__ = "message"
    __table_args__ = (
        Index(
            "ix_message_due",
            "due_at",
            sqlite_where=text("due_at IS NOT NULL"),
            postgresql_where=text("due_at IS NOT NULL"),
        ),
        Index("ix_message_claimed_by", "claimed_by"),
        # The queue gauge counts messages with work left by status from this index alone.
        Index(
            "ix_message_active_status",
            "status",
            sqlite_where=text("due_at IS NOT NULL"),
            postgresql_where=text("due_at IS NOT NULL"),
        ),
        Index("ix_message_status_created", "status", "created_at"),
        # Queue search (GET /v1/messages): each filter has an index to start from.
        Index("ix_message_created", "created_at"),
        Index("ix_message_from", "mail_from", "created_at"),
        Index("ix_message_last_pool", "last_pool", "created_at"),
        # A key other than an admin's searches only its own mail: its pages read this index
        # in order, never every message the key ever sent (`id` too: the pages order by it
        # after created_at, and without it SQLite sorts each run of equal created_at).
        Index("ix_message_api_key", "api_key_id", "created_at", "id"),
        # A member searches the mail they sent (by session or by their keys): the same shape.
        Index("ix_message_user", "user_id", "created_at", "id"),
        # A report's returned Message-ID and the search's message_id_header filter.
        Index("ix_message_header_id", "header_message_id", "created_at", "id"),
        # The search's client filter: one address in page order, or a CIDR block as a range.
        Index("ix_message_client", "client_address", "created_at", "id"),
    )

    id: str = Field(primary_key=True, max_length=64)
    status: str = Field(max_length=16)  # queued | deferred | held | delivered | bounced | ...
    source: str = Field(max_length=16)  # smtp | http
    mail_from: str
    alias_id: str | None = None  # routing hint from the client
    ip_pool: str | None = Field(default=None, max_length=64)  # route group chosen at intake
    pool_id: str | None = Field(default=None, max_length=64)  # route pool chosen at intake
    # The route was the default (no alias_id, no From alias): delivery follows the default
    # of the moment instead of pool_id / ip_pool (gateway.routing.current).
    route_default: bool = Field(
        default=False, sa_column=Column(Boolean, nullable=False, server_default=text("false"))
    )
    last_pool: str | None = Field(default=None, max_length=128)  # pool of the last attempt
    attempts: int = 0
    size: int = 0
    created_at: float
    updated_at: float
    due_at: float | None = None
    claimed_by: str | None = Field(default=None, max_length=64)
    last_response: str | None = None
    # The API key that sent it (None: unauthenticated SMTP); also in message_meta, here for
    # the search's index.
    api_key_id: str | None = Field(default=None, max_length=64)
    # The user who sent it: logged in, or the owner of the key it came with (None: neither).
    user_id: str | None = Field(default=None, max_length=64)
    # The client's own Message-ID as stored (gateway.headers.normal_message_id), None
    # without one: what a bounce's returned headers name, and what operators search by.
    header_message_id: str | None = Field(default=None, max_length=255)
    # The submitting client's IP (SMTP peer, HTTP client) as storage.search_keys.address_key
    # (32 hex digits: text order is address order), None for Postern's own mail.
    client_address: str | None = Field(default=None, max_length=32)
    # Set by an operator's retry, cleared by the attempt it asks for (gateway.queue.store).
    retried_at: float | None = None
    # A scheduled send's time (`scheduled_at`): not attempted before it, and max_age counts
    # from it. None: sent at once, max_age from created_at.
    scheduled_at: float | None = None
    # Attempts operators' retries asked for: they take no step of retry_schedule.
    forced_attempts: int = Field(
        default=0, sa_column=Column(Integer, nullable=False, server_default=text("0"))
    )
    # On hold (status `held`, postsuper -h) since this time; NULL when not held.
    held_at: float | None = None
    # Seconds spent on hold before now, in total: they do not count towards max_age.
    held_for: float = Field(
        default=0.0, sa_column=Column(Float, nullable=False, server_default=text("0"))
    )


class MessageBody(SQLModel, table=True):
    __tablename__ = "message_body"

    message_id: str = Field(primary_key=True, max_length=64)
    data: bytes = Field(sa_column=Column(LargeBinary, nullable=False))


class Recipient(SQLModel, table=True):
    __tablename__ = "recipient"
    __table_args__ = (
        # (message_id, email), not message_id alone: a result is recorded by both, and with
        # only ix_recipient_email to choose from SQLite would scan every message sent to a
        # popular address (measured: the relay slowed down as the table grew).
        Index("ix_recipient_message_email", "message_id", "email"),
        # The search by recipient reads its page in time order from here (schema 10), not
        # every message the address ever got; lookups by address use it too.
        Index("ix_recipient_email_time", "email", "message_created_at", "message_id"),
    )

    id: int | None = Field(default=None, primary_key=True)
    message_id: str = Field(max_length=64)
    email: str
    status: str = Field(max_length=16)  # pending | delivered | bounced | suppressed | sandbox
    # The message's created_at, copied (schema 10): the search by recipient's order.
    message_created_at: float = Field(
        default=0.0, sa_column=Column(Float, nullable=False, server_default=text("0"))
    )
    attempts: int = 0
    code: int | None = None
    response: str | None = None
    updated_at: float


class Suppression(SQLModel, table=True):
    __tablename__ = "suppression"
    __table_args__ = (Index("ix_suppression_created", "created_at"),)

    email: str = Field(primary_key=True)  # storage.mailboxes.mailbox_key of the address
    reason: str = Field(max_length=16)  # storage.suppressions.REASONS
    created_at: float
    note: str | None = None  # why, in words: the bounce rule that decided (schema 8)


class MessageMeta(SQLModel, table=True):
    """What the client said about a message beyond its bytes (API key, tags, metadata).

    A side table, written in the message's own transaction only when there is something to
    say: plain SMTP mail writes no row, and `message` keeps its narrow claim-path shape.
    """

    __tablename__ = "message_meta"
    __table_args__ = (Index("ix_message_meta_api_key", "api_key_id"),)

    message_id: str = Field(primary_key=True, max_length=64)
    api_key_id: str | None = Field(default=None, max_length=64)  # None: unauthenticated SMTP
    provider: str = Field(default="smtp", max_length=16)  # smtp | sandbox
    tags: str = Field(default="[]", sa_column=Column(Text, nullable=False))  # JSON list
    metadata_json: str = Field(default="{}", sa_column=Column(Text, nullable=False))  # JSON
    idempotency_key: str | None = Field(default=None, max_length=128)


class ApiKey(SQLModel, table=True):
    """An API key: only the SHA-256 of the secret is kept (the secret has 256 random bits)."""

    __tablename__ = "api_key"

    id: str = Field(primary_key=True, max_length=64)
    name: str = Field(max_length=128)
    hash: str = Field(unique=True, max_length=64)  # hex SHA-256 of the whole "msk_..." secret
    prefix: str = Field(max_length=16)  # the first characters, to recognise a key in a list
    scopes: str  # space-separated
    created_at: float
    revoked_at: float | None = None
    # The user it belongs to: it never does more than that user's role allows (None: made at
    # the console or before users existed, bounded by its scopes alone).
    user_id: str | None = Field(default=None, max_length=64)


class Idempotency(SQLModel, table=True):
    """One idempotency key per API key; the primary key is what makes a racing twin lose."""

    __tablename__ = "idempotency"
    __table_args__ = (Index("ix_idempotency_created", "created_at"),)

    api_key_id: str = Field(primary_key=True, max_length=64)  # "" for unauthenticated SMTP
    key: str = Field(primary_key=True, max_length=128)
    message_id: str = Field(max_length=64)
    response: str | None = Field(default=None, sa_column=Column(Text, nullable=True))  # JSON
    # Hex SHA-256 of the canonical request (storage.idempotency); None: not known, any matches.
    request_hash: str | None = Field(default=None, max_length=64)
    created_at: float


class Pool(SQLModel, table=True):
    __tablename__ = "smtp_pool"

    id: str = Field(primary_key=True, max_length=64)
    name: str = Field(unique=True)
    host: str
    port: int
    username: str = ""
    password_enc: str = ""  # encrypted at rest; never leaves storage in clear
    encryption: str = "tls"
    ip_pool: str = "transactional"
    priority: int = 100
    max_connections: int = 10
    is_default: bool = False
    is_active: bool = True
    from_email: str = ""
    tls_verify: bool = True  # False only for internal relays with self-signed certificates
    source: str = "api"  # config | api
    rate: str = ""  # "100/min", "14/s": sends per rolling window across nodes; "" = none
    daily_limit: int = 0  # sends per UTC day across nodes; 0 = none
    created_at: float
    created_by: str | None = Field(default=None, max_length=64)  # user id; None: console/config


class Meta(SQLModel, table=True):
    __tablename__ = "postern_meta"

    key: str = Field(primary_key=True)
    value: str


class DkimKey(SQLModel, table=True):
    """A DKIM signing key; several selectors per domain, at most one `active` (rotation)."""

    __tablename__ = "dkim_key"
    __table_args__ = (
        Index("uq_dkim_key_domain_selector", "domain", "selector", unique=True),
        Index("ix_dkim_key_domain", "domain"),
        # The database itself refuses a second active key for a domain.
        Index(
            "ux_dkim_key_active",
            "domain",
            unique=True,
            sqlite_where=text("status = 'active'"),
            postgresql_where=text("status = 'active'"),
        ),
    )

    id: str = Field(primary_key=True, max_length=64)
    domain: str = Field(max_length=253)  # lower-case A-label form
    selector: str = Field(max_length=200)
    algorithm: str = Field(max_length=16)  # rsa | ed25519
    private_key_enc: str  # PKCS#8 PEM, encrypted with gateway.security.secrets.SecretBox
    public_key: str  # the base64 p= value of the DNS record
    status: str = Field(max_length=16)  # pending | active | retired
    created_at: float


class RecipientRoute(SQLModel, table=True):
    """A transport-map entry made over the API (gateway.routing.DomainRoute): mail to
    `recipient_domain` (exact, or `.suffix` for every subdomain) goes through the pool named
    `pool`, else the group `ip_pool`. The config's `[[routes]]` are not stored here."""

    __tablename__ = "recipient_route"

    id: str = Field(primary_key=True, max_length=64)
    recipient_domain: str = Field(unique=True, max_length=254)  # lower-case A-labels
    pool: str | None = Field(default=None, max_length=255)  # a pool's name
    ip_pool: str | None = Field(default=None, max_length=64)
    created_at: float
    created_by: str | None = Field(default=None, max_length=64)  # user id; None: console


class SenderDomain(SQLModel, table=True):
    """A domain mail may be sent From (policy.sender = "verified"), once verified."""

    __tablename__ = "sender_domain"

    id: str = Field(primary_key=True, max_length=64)
    domain: str = Field(unique=True, max_length=253)  # lower-case A-label form
    is_verified: bool = False
    created_at: float
    verified_at: float | None = None
    checked_at: float | None = None  # last DNS check
    created_by: str | None = Field(default=None, max_length=64)  # user id; None: console/config


class SenderAlias(SQLModel, table=True):
    """A From identity routed to an ip_pool; usable once its owner confirmed it."""

    __tablename__ = "sender_alias"
    __table_args__ = (
        # The database itself refuses a second default alias.
        Index(
            "ux_sender_alias_default",
            "is_default",
            unique=True,
            sqlite_where=text("is_default"),
            postgresql_where=text("is_default"),
        ),
    )

    id: str = Field(primary_key=True, max_length=64)
    email: str = Field(max_length=254)  # as given, domain normalised
    email_key: str = Field(unique=True, max_length=254)  # lower-case: one alias per mailbox
    name: str = Field(default="", max_length=256)
    is_default: bool = False
    is_verified: bool = False
    ip_pool: str | None = Field(default=None, max_length=64)
    created_at: float
    verified_at: float | None = None
    created_by: str | None = Field(default=None, max_length=64)  # user id; None: console/config


class AliasToken(SQLModel, table=True):
    """A pending alias verification link: only the SHA-256 of its token is kept."""

    __tablename__ = "alias_token"
    __table_args__ = (Index("ix_alias_token_alias", "alias_id"),)

    token_hash: str = Field(primary_key=True, max_length=64)
    alias_id: str = Field(max_length=64)
    expires_at: float
    used_at: float | None = None


class MessageTag(SQLModel, table=True):
    """One row per tag of a message, so that a search by tag reads an index."""

    __tablename__ = "message_tag"
    __table_args__ = (Index("ix_message_tag_tag", "tag", "message_id"),)

    message_id: str = Field(primary_key=True, max_length=64)
    tag: str = Field(primary_key=True, max_length=128)


class MessageSubjectWord(SQLModel, table=True):
    """One row per distinct word of a message's Subject (storage.search_keys.subject_words),
    written with the message: the search by subject words reads the rarest word's entries
    in time order from ix_subject_word_time and checks the others by primary key."""

    __tablename__ = "message_subject_word"
    __table_args__ = (Index("ix_subject_word_time", "word", "message_created_at", "message_id"),)

    message_id: str = Field(primary_key=True, max_length=64)
    word: str = Field(primary_key=True, max_length=64)
    message_created_at: float  # the message's created_at: the search's order


class Event(SQLModel, table=True):
    """The outbox: one row per message state change or per-recipient result.

    Written in the transaction of the change itself (gateway.queue.store), so a change and its
    event exist together or not at all. Webhooks read it through a cursor each
    (storage.webhook_outbox), in the order events were committed: by id on SQLite (commits
    are serial), by (txid, id) on PostgreSQL, where `txid` is the writing transaction's id.
    """

    __tablename__ = "event"
    __table_args__ = (
        Index("ix_event_message", "message_id", "id"),
        Index("ix_event_created", "created_at"),
        Index("ix_event_order", "txid", "id").ddl_if(dialect="postgresql"),
        {"sqlite_autoincrement": True},  # ids are never reused: receivers de-duplicate by id
    )

    id: int | None = Field(default=None, sa_column=Column(BIG_ID, primary_key=True))
    type: str = Field(max_length=32)  # see gateway.queue.events.TYPES
    message_id: str = Field(max_length=64)
    recipient: str | None = None  # None for a message-level event (throttled)
    pool: str | None = Field(default=None, max_length=128)
    code: int | None = None  # the upstream's reply
    enhanced: str | None = Field(default=None, max_length=16)
    response: str | None = None
    attempt: int = 0  # the attempt that produced it; 0 at intake
    message_status: str = Field(max_length=16)  # the message's status after the change
    created_at: float
    # JSON object merged into the public event (schema 8): a report that came back later
    # adds {"async": true, "bounce": {...}}; NULL for every other event.
    detail: str | None = None
    # Seconds of the upstream's SMTP transaction that gave this answer (schema 10; NULL
    # when no session answered): the Live page's latency per minute, with no join.
    upstream_seconds: float | None = None
    # Set by the database: 0 on SQLite, the transaction id on PostgreSQL (EVENT_TXID).
    txid: int = Field(
        default=0, sa_column=Column(BigInteger, nullable=False, server_default=text("0"))
    )


def _zero_bigint() -> Column[int]:
    return Column(BigInteger, nullable=False, server_default=text("0"))


# PostgreSQL: an event's txid is its transaction's (64-bit, never wraps).
EVENT_TXID = "pg_current_xact_id()::text::bigint"
listen(
    Event.__table__,  # type: ignore[attr-defined]
    "after_create",
    DDL(f"ALTER TABLE event ALTER COLUMN txid SET DEFAULT {EVENT_TXID}").execute_if(
        dialect="postgresql"
    ),
)


class Webhook(SQLModel, table=True):
    __tablename__ = "webhook"

    id: str = Field(primary_key=True, max_length=64)
    url: str
    event_types: str = ""  # space-separated; "" = every type
    final_only: bool = False
    secret_enc: str  # encrypted signing secret (it must be readable to sign)
    description: str = ""
    is_active: bool = True
    created_at: float
    updated_at: float
    created_by: str | None = Field(default=None, max_length=64)  # user id; None: console/config
    # Sending state, shared by the nodes: who sends for it now, when it may next try.
    claimed_by: str | None = Field(default=None, max_length=64)
    claimed_until: float | None = None
    next_attempt_at: float = 0.0
    failures: int = 0  # consecutive failed attempts
    # The position (txid, id) of the last event it was sent or skipped (webhook_outbox).
    cursor_txid: int = Field(default=0, sa_column=_zero_bigint())
    cursor_id: int = Field(default=0, sa_column=_zero_bigint())
    # The last replay: events up to this position count as written at replayed_at, so
    # that max_age does not drop what an operator asked to have sent again.
    replayed_txid: int = Field(default=0, sa_column=_zero_bigint())
    replayed_id: int = Field(default=0, sa_column=_zero_bigint())
    replayed_at: float = 0.0


class WebhookAttempt(SQLModel, table=True):
    """One POST to a webhook and how it went (GET /api/v1/webhooks/{id}/deliveries)."""

    __tablename__ = "webhook_attempt"
    __table_args__ = (
        Index("ix_webhook_attempt_webhook", "webhook_id", "id"),
        {"sqlite_autoincrement": True},
    )

    id: int | None = Field(default=None, sa_column=Column(BIG_ID, primary_key=True))
    webhook_id: str = Field(max_length=64)
    at: float
    events: int  # how many events the POST carried
    status_code: int | None = None  # None: no HTTP answer (refused, timeout)
    error: str = ""
    duration_ms: float = 0.0
    outcome: str = Field(max_length=16)  # delivered | failed | dropped


class PoolSend(SQLModel, table=True):
    """A send through a rate-limited pool, for the rolling-window count shared by nodes."""

    __tablename__ = "pool_send"
    __table_args__ = (
        Index("ix_pool_send_pool_at", "pool_id", "at"),
        {"sqlite_autoincrement": True},
    )

    id: int | None = Field(default=None, sa_column=Column(BIG_ID, primary_key=True))
    pool_id: str = Field(max_length=64)
    at: float


class PoolDay(SQLModel, table=True):
    """Sends through a pool on one UTC day, for `daily_limit`."""

    __tablename__ = "pool_day"

    pool_id: str = Field(primary_key=True, max_length=64)
    day: str = Field(primary_key=True, max_length=10)  # YYYY-MM-DD
    count: int = 0


class AuthFailure(SQLModel, table=True):
    """A failed SMTP AUTH guess, or one being checked (schema 11; storage.auth_failures):
    the rolling windows of the failure budgets, per client address and for everyone, that
    every worker and node share. `subject` is `a:<client address>` or `*`."""

    __tablename__ = "auth_failure"
    __table_args__ = (
        Index("ix_auth_failure_subject_at", "subject", "at"),
        Index("ix_auth_failure_at", "at"),  # the pruning of subjects that stopped guessing
        {"sqlite_autoincrement": True},  # never a freed id again: a give-back deletes by id
    )

    id: int | None = Field(default=None, sa_column=Column(BIG_ID, primary_key=True))
    subject: str = Field(max_length=64)
    at: float


class Warmup(SQLModel, table=True):
    """A warmup of one account or pool (schema 10; storage.warmup). Sends are counted in
    `pool_send` / `pool_day` under the key `warmup:<kind>:<id>`, the day being the local
    day of `timezone`. `status` is active or paused as stored; not_started and complete
    follow from the day (storage.warmup_schedule)."""

    __tablename__ = "warmup"

    kind: str = Field(primary_key=True, max_length=16)  # account | pool
    subject_id: str = Field(primary_key=True, max_length=64)
    preset: str | None = Field(default=None, max_length=32)  # None: the linear ramp below
    start_volume: int = 0
    step: int = 0
    cap: int = 0
    timezone: str = Field(max_length=64)  # [warmup] timezone when set, or as given
    start_day: str = Field(max_length=10)  # YYYY-MM-DD, local: day 1
    status: str = Field(max_length=16)  # active | paused
    paused_reason: str | None = Field(default=None, max_length=512)
    paused_at: float | None = None
    created_at: float
    updated_at: float
    created_by: str | None = Field(default=None, max_length=64)  # user id; None: console


class User(SQLModel, table=True):
    """A person who logs in (machines use API keys). `email` is the mailbox_key form."""

    __tablename__ = "users"  # `user` is a reserved word in PostgreSQL

    id: str = Field(primary_key=True, max_length=64)  # usr_...
    email: str = Field(unique=True, max_length=320)
    name: str = Field(default="", max_length=128)
    password_hash: str = Field(max_length=256)  # argon2id, PHC string form
    role: str = Field(max_length=16)  # owner | admin | member
    disabled_at: float | None = None
    created_at: float
    updated_at: float


class UserSession(SQLModel, table=True):
    """A logged-in browser: only the SHA-256 of its random token is kept. `expires_at`
    slides with use and never passes `absolute_expires_at`, so it alone says when the
    session ends (the purge reads its index)."""

    __tablename__ = "sessions"
    __table_args__ = (
        Index("ix_sessions_user", "user_id"),
        Index("ix_sessions_expires", "expires_at"),
    )

    id: str = Field(primary_key=True, max_length=64)  # ses_...
    user_id: str = Field(max_length=64)
    token_hash: str = Field(unique=True, max_length=64)  # hex SHA-256 of the token
    created_at: float
    last_seen_at: float
    expires_at: float
    absolute_expires_at: float
    user_agent: str = Field(default="", max_length=256)
    ip: str = Field(default="", max_length=64)
    # The user's role when the session began: a session outlives no role change (it is
    # rotated at its next request, gateway.people.sessions).
    role: str = Field(default="", max_length=16)


class Invitation(SQLModel, table=True):
    """An invitation to share an account (an alias or a domain today, a connected mail
    account later: `account_kind` says which table `account_id` is in, so a new kind needs
    no change of the rows). Only the SHA-256 of the emailed token is kept. `expired` is not
    stored while the row is the live one: it is `pending` with `expires_at` passed; a
    replaced expired row is closed as `expired`, so that one pending row per account and
    address is all the partial unique index ever sees."""

    __tablename__ = "invitations"
    __table_args__ = (
        Index(
            "ux_invitations_pending",
            "account_kind",
            "account_id",
            "invitee_email",
            unique=True,
            sqlite_where=text("status = 'pending'"),
            postgresql_where=text("status = 'pending'"),
        ),
        Index("ix_invitations_account", "account_kind", "account_id", "created_at"),
        Index("ix_invitations_invitee", "invitee_email", "status"),
    )

    id: str = Field(primary_key=True, max_length=64)  # inv_...
    account_kind: str = Field(max_length=16)  # alias | domain | account
    account_id: str = Field(max_length=64)
    invitee_email: str = Field(max_length=320)  # the mailbox_key form
    role: str = Field(max_length=16)  # admin | member
    status: str = Field(max_length=16)  # pending | accepted | declined | revoked | expired
    token_hash: str = Field(unique=True, max_length=64)  # hex SHA-256 of the emailed token
    inviter_id: str | None = Field(default=None, max_length=64)  # usr_... or key_...
    created_at: float
    expires_at: float
    responded_at: float | None = None


class Share(SQLModel, table=True):
    """An account shared with a user (an accepted invitation): one row per account and
    user, the primary key."""

    __tablename__ = "shares"
    __table_args__ = (Index("ix_shares_user", "user_id", "account_kind"),)

    account_kind: str = Field(primary_key=True, max_length=16)
    account_id: str = Field(primary_key=True, max_length=64)
    user_id: str = Field(primary_key=True, max_length=64)
    role: str = Field(max_length=16)  # admin | member
    shared_at: float
    invitation_id: str | None = Field(default=None, max_length=64)


class MailAccount(SQLModel, table=True):
    """A connected mail account (seed 004): an IMAP/SMTP mailbox its owner proved they can
    log in to. Its id is a UUID (the seed's form), which is how storage.accounts tells it
    from an alias or a domain. The password is sealed, bound to the id (write-only).

    Sync state, shared by the nodes: a node leases an account (`claimed_by`,
    `claimed_until`) for one sync; a dead node's lease lapses and another takes it."""

    __tablename__ = "mail_account"
    __table_args__ = (
        Index("ix_mail_account_user", "user_id", "created_at"),
        Index("ix_mail_account_due", "next_sync_at"),
        # The database itself refuses a second default account for one user.
        Index(
            "ux_mail_account_default",
            "user_id",
            unique=True,
            sqlite_where=text("is_default"),
            postgresql_where=text("is_default"),
        ),
    )

    id: str = Field(primary_key=True, max_length=64)  # a UUID
    user_id: str | None = Field(default=None, max_length=64)  # the owner (its creator)
    email: str = Field(unique=True, max_length=254)  # the mailbox_key form
    name: str = Field(default="", max_length=256)
    imap_host: str = Field(max_length=253)
    imap_port: int
    imap_security: str = Field(max_length=16)  # ssl | starttls | none (loopback only)
    smtp_host: str = Field(max_length=253)
    smtp_port: int
    smtp_security: str = Field(max_length=16)  # ssl | starttls | none (loopback only)
    tls_verify: bool = True
    username: str = Field(max_length=320)
    password_enc: str = ""  # sealed, bound to the id; "" once a host changed without a new one
    is_default: bool = False
    sync_status: str = Field(default="pending", max_length=16)  # pending|syncing|synced|error
    last_error: str | None = Field(default=None, max_length=512)
    last_synced_at: float | None = None
    uidvalidity: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    uidnext: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    next_sync_at: float = 0.0  # due for a sync from then on
    claimed_by: str | None = Field(default=None, max_length=64)
    claimed_until: float | None = None
    created_at: float
    updated_at: float
    created_by: str | None = Field(default=None, max_length=64)  # user id; None: console key


class InboxCursor(SQLModel, table=True):
    """How far a connected account's mailbox has been read: the UIDVALIDITY the UIDs belong
    to and the highest UID handed over (its report committed, or skipped and recorded). A
    table of its own, not columns of `mail_account`: it outlives a disconnect, as synced data
    does, and a new table needs no schema upgrade."""

    __tablename__ = "inbox_cursor"

    account_id: str = Field(primary_key=True, max_length=64)
    mailbox: str = Field(primary_key=True, max_length=256)
    uidvalidity: int = Field(sa_column=Column(BigInteger, nullable=False))
    last_uid: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    updated_at: float


class InboxSkip(SQLModel, table=True):
    """A message of a connected account's mailbox that was not handed over (too big), kept
    so that a user can see why: the mailbox keeps the message itself."""

    __tablename__ = "inbox_skip"

    account_id: str = Field(primary_key=True, max_length=64)
    mailbox: str = Field(primary_key=True, max_length=256)
    uidvalidity: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    uid: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    size: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    reason: str = Field(max_length=256)
    created_at: float


class BounceReport(SQLModel, table=True):
    """A report that came back (bounce, complaint, auto-reply...), kept whatever became of
    it (gateway.bounces.ingest). `dedupe_key` makes it processed once: its IMAP position
    (account, mailbox, UIDVALIDITY, UID) when it came from an inbox, else its identity;
    `content_hash` (the identity) is unique too: the SHA-256 of its bytes, scoped to the
    envelope recipient it came for when it has one (storage.bounce_reports.identity), so
    one transaction to several VERP addresses is one report per address, and the same
    bytes met twice for the same address are one report; `raw_hash` (the bytes alone)
    makes the same bytes met without an envelope recipient (an upload, an inbox) one
    report with them. Its effects are written in the transaction that inserts it."""

    __tablename__ = "bounce_report"
    __table_args__ = (
        Index("ix_bounce_report_status", "status", "id"),
        Index("ix_bounce_report_message", "message_id"),
        Index("ix_bounce_report_raw_hash", "raw_hash"),
        {"sqlite_autoincrement": True},
    )

    id: int | None = Field(default=None, sa_column=Column(BIG_ID, primary_key=True))
    dedupe_key: str = Field(unique=True, max_length=80)
    content_hash: str = Field(unique=True, max_length=64)  # SHA-256: bytes (+ envelope rcpt)
    # Schema 10: the SHA-256 of the bytes alone (not unique: one per VERP recipient), so
    # the same bytes met with and without an envelope recipient are one report. NULL on
    # rows from before it of a report that came for a recipient.
    raw_hash: str | None = Field(default=None, max_length=64)
    received_at: float
    updated_at: float
    source: str = Field(max_length=16)  # imap | listener | api
    account_id: str | None = Field(default=None, max_length=64)
    mailbox: str | None = None
    uidvalidity: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    uid: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    envelope_recipient: str | None = None
    raw: bytes = Field(sa_column=Column(LargeBinary, nullable=False))  # cut at max size
    size: int = 0  # of the whole report
    kind: str = Field(max_length=16)  # dsn | complaint | auto_reply | unparsed | other
    format: str = Field(default="", max_length=32)
    status: str = Field(max_length=16)  # processed | unmatched | unparsed | ignored
    error: str | None = None  # why unparsed or unmatched
    message_id: str | None = Field(default=None, max_length=64)
    recipient: str | None = None  # the first matched recipient (all of them in `entries`)
    matched_by: str | None = Field(default=None, max_length=16)  # verp | ref | message_id
    cls: str | None = Field(default=None, max_length=16)  # the first entry's class
    rule: str | None = Field(default=None, max_length=64)
    reason: str | None = None
    entries: str = Field(default="[]", sa_column=Column(Text, nullable=False))  # JSON


class SoftBounce(SQLModel, table=True):
    """Soft bounces of one address within the last [bounces] soft_window, a sliding window
    (gateway.bounces.effects): reaching soft_limit suppresses it; a delivery to it deletes
    the row."""

    __tablename__ = "soft_bounce"

    email: str = Field(primary_key=True)  # storage.mailboxes.mailbox_key
    bounces: int = 0  # within the window
    first_at: float  # the oldest bounce still within the window
    last_at: float  # the newest: once it is out of the window, the row counts nothing
    # Schema 10: the bounces' times within the window, a JSON array (a sliding window)
    recent: str | None = Field(default=None, sa_column=Column(Text, nullable=True))


class BlocklistCheck(SQLModel, table=True):
    """The latest DNSBL verdict of one subject (a sending IP address or domain), written by
    the scheduled check (gateway.reputation.dnsbl). Schema 10.

    `listings` is a JSON list of {"list", "code", "meaning"}; `errors` a JSON list of
    {"list", "reason"} for the lists that gave no answer this time (a query error, or a list
    that failed its verification). `checked_at` is when the last check that reached a verdict
    (clean or listed) completed: an `unknown` round leaves it as it was."""

    __tablename__ = "blocklist_check"

    subject: str = Field(primary_key=True, max_length=253)  # an IP address or a domain
    kind: str = Field(max_length=8)  # ip | domain
    status: str = Field(max_length=8)  # clean | listed | unknown
    listings: str = "[]"
    errors: str = "[]"
    checked_at: float | None = None
    attempted_at: float  # the last round that asked about it, whatever came back
    listed_since: float | None = None  # when it became listed (None: not listed now)


class BlocklistRun(SQLModel, table=True):
    """The lease of the scheduled DNSBL check, one row per check name: one node of many runs
    it (`claimed_by` until `claimed_until`, a conditional UPDATE); a dead node's lease lapses.
    `completed_at` is when the last whole round finished. Schema 10."""

    __tablename__ = "blocklist_run"

    name: str = Field(primary_key=True, max_length=32)
    claimed_by: str | None = Field(default=None, max_length=64)
    claimed_until: float | None = None
    started_at: float | None = None
    completed_at: float | None = None


class ReputationDay(SQLModel, table=True):
    """What happened to the mail sent through one pool (or account: its label is the
    address) From one domain on one UTC day, rolled up from `event` by the reputation
    evaluation (storage.reputation) so that a 30-day window reads 30 rows per subject, not
    every event, and outlives [storage] retention. Schema 10."""

    __tablename__ = "reputation_day"

    day: str = Field(primary_key=True, max_length=10)  # YYYY-MM-DD (UTC)
    pool: str = Field(primary_key=True, max_length=128)  # the events' pool label; "" none
    domain: str = Field(primary_key=True, max_length=253)  # of the envelope sender, lower case
    delivered: int = Field(default=0, sa_column=_zero_bigint())
    hard_bounces: int = Field(default=0, sa_column=_zero_bigint())
    complaints: int = Field(default=0, sa_column=_zero_bigint())
    deferrals: int = Field(default=0, sa_column=_zero_bigint())


class ReputationJob(SQLModel, table=True):
    """The reputation evaluation's lease (one node runs it) and how far the events were
    rolled up (`rolled_until`, a created_at): one row, name "evaluation". Schema 10."""

    __tablename__ = "reputation_job"

    name: str = Field(primary_key=True, max_length=32)
    claimed_by: str | None = Field(default=None, max_length=64)
    claimed_until: float | None = None
    rolled_until: float | None = None
    evaluated_at: float | None = None


class ReputationSubject(SQLModel, table=True):
    """The last evaluation of one account, pool or domain: its score and whether it was at
    risk (a `reputation_at_risk` event fires once per crossing), and for a domain its
    records as last looked up (None: not known). Schema 10."""

    __tablename__ = "reputation_subject"

    kind: str = Field(primary_key=True, max_length=16)  # account | pool | domain
    subject: str = Field(primary_key=True, max_length=253)  # account or pool id, domain name
    score: int | None = None
    at_risk: bool = False
    evaluated_at: float | None = None
    spf: bool | None = None
    dkim: bool | None = None
    dmarc: bool | None = None
    setup_checked_at: float | None = None


class EventMinute(SQLModel, table=True):
    """The charted events (delivered, deferred, bounced) counted per epoch minute, pool, type
    and owner: what the Live page and the pools page chart, read without touching the event
    table's hour (storage.event_minutes). Added to by the roller (gateway.queue.rollup) from
    the events after its position, in the transaction that moves the position. '' stands
    for no pool / no owner (a NULL in a key would make every such row unique). Schema 10."""

    __tablename__ = "event_minute"

    minute: int = Field(sa_column=Column(BigInteger, primary_key=True))  # created_at // 60
    pool: str = Field(default="", primary_key=True, max_length=128)
    type: str = Field(primary_key=True, max_length=32)
    user_id: str = Field(default="", primary_key=True, max_length=64)  # the message's owner
    count: int = 0
    latency_count: int = 0  # events of them with an upstream_seconds
    latency_sum: float = 0.0
    latency_max: float | None = None


class EventRoll(SQLModel, table=True):
    """The roller's position (txid, id) in commit order: every event at or before it is
    counted in event_minute, none after. One row per roll; one node of many rolls it
    (`claimed_by` until `claimed_until`, a conditional UPDATE). Schema 10."""

    __tablename__ = "event_roll"

    name: str = Field(primary_key=True, max_length=32)
    position_txid: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    position_id: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    claimed_by: str | None = Field(default=None, max_length=64)
    claimed_until: float | None = None
