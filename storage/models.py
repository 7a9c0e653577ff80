"""The tables, as SQLAlchemy Core `Table`s on one `MetaData`. Times are UNIX seconds (float)
so that the claim path compares numbers.

The claim path reads one partial index: `message.due_at` is set while a message still has
work to do (when it is due, or when a worker's claim on it lapses) and NULL once it is final.
Bodies live in their own table so that scans of `message` never drag them along.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    DDL,
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    text,
)
from sqlalchemy.event import listen

if TYPE_CHECKING:
    from sqlalchemy import Connection

SCHEMA_VERSION = 12

# Every table, for create_all and the upgrades (storage.db). Core tables, not ORM classes:
# storage reads and writes rows with Core statements only, and the classes (SQLModel, so
# pydantic) cost a third of a second at every start of `postern` (bench/cli_start.py).
metadata = MetaData()

# A 64-bit key on PostgreSQL; on SQLite exactly INTEGER, so that it is the rowid.
BIG_ID = BigInteger().with_variant(Integer(), "sqlite")


def _partial(name: str, *columns: str, where: str, unique: bool = False) -> Index:
    """An index of the rows where `where` holds, on both backends. PostgreSQL's option is
    set as the index is created there (its before_create): `postgresql_where=` given here
    would import SQLAlchemy's PostgreSQL dialect, all its drivers' too, at every start of a
    `postern` command on SQLite (~130M instructions, a tenth of `users list`). The DDL is the
    same as with both options given."""
    index = Index(name, *columns, unique=unique, sqlite_where=text(where))
    index.info["postgresql_where"] = text(where)
    listen(index, "before_create", _postgresql_where)
    return index


def _postgresql_where(index: Index, connection: Connection, **_: Any) -> None:
    if connection.dialect.name == "postgresql":
        index.dialect_kwargs["postgresql_where"] = index.info["postgresql_where"]


# The `due_at` of a held message (status `held`, gateway.queue.store.hold): it still has work
# left (due_at not NULL, so retention and the queue gauge see it), but its time lies past
# any claim, so the due index never offers it to a worker and it sorts after all due mail.
HELD_DUE = 253402300799.0  # 9999-12-31T23:59:59Z


Message = Table(
    "message",
    metadata,
    Column("id", String(64), primary_key=True),
    # queued | deferred | held | delivered | bounced | ...
    Column("status", String(16), nullable=False),
    Column("source", String(16), nullable=False),  # smtp | http
    Column("mail_from", String, nullable=False),
    Column("alias_id", String),  # routing hint from the client
    Column("ip_pool", String(64)),  # route group chosen at intake
    Column("pool_id", String(64)),  # route pool chosen at intake
    # The route was the default (no alias_id, no From alias): delivery follows the default
    # of the moment instead of pool_id / ip_pool (gateway.routing.current).
    Column("route_default", Boolean, nullable=False, server_default=text("false")),
    Column("last_pool", String(128)),  # pool of the last attempt
    Column("attempts", Integer, nullable=False, default=0),
    Column("size", Integer, nullable=False, default=0),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("due_at", Float),
    Column("claimed_by", String(64)),
    Column("last_response", String),
    # The API key that sent it (None: unauthenticated SMTP); also in message_meta, here for
    # the search's index.
    Column("api_key_id", String(64)),
    # The user who sent it: logged in, or the owner of the key it came with (None: neither).
    Column("user_id", String(64)),
    # The client's own Message-ID as stored (gateway.headers.normal_message_id), None
    # without one: what a bounce's returned headers name, and what operators search by.
    Column("header_message_id", String(255)),
    # The submitting client's IP (SMTP peer, HTTP client) as storage.search_keys.address_key
    # (32 hex digits: text order is address order), None for Postern's own mail.
    Column("client_address", String(32)),
    # Set by an operator's retry, cleared by the attempt it asks for (gateway.queue.store).
    Column("retried_at", Float),
    # A scheduled send's time (`scheduled_at`): not attempted before it, and max_age counts
    # from it. None: sent at once, max_age from created_at.
    Column("scheduled_at", Float),
    # Attempts operators' retries asked for: they take no step of retry_schedule.
    Column("forced_attempts", Integer, nullable=False, server_default=text("0")),
    # On hold (status `held`, postsuper -h) since this time; NULL when not held.
    Column("held_at", Float),
    # Seconds spent on hold before now, in total: they do not count towards max_age.
    Column("held_for", Float, nullable=False, server_default=text("0")),
    _partial(
        "ix_message_due",
        "due_at",
        where="due_at IS NOT NULL",
    ),
    # Schema 12: the partial indexes below hold only the rows where their first column is
    # set (their NULLs are never searched for, and `col = ?` implies `col IS NOT NULL`, so
    # both planners still choose them): a message without one (unauthenticated SMTP mail,
    # no claim any more) writes no entry, and on PostgreSQL an UPDATE that
    # cannot stay on its page (HOT) adds no entry either. Each replaced a full index of
    # schema 11 under another name (storage.db._DROPPED_INDEXES).
    #
    # The claims of a node (RENEW, RELEASE): set only while a worker holds the message, so
    # this index holds the messages in flight, not every message ever delivered.
    _partial("ix_message_claimed", "claimed_by", where="claimed_by IS NOT NULL"),
    # The queue gauge counts messages with work left by status from this index alone.
    _partial(
        "ix_message_active_status",
        "status",
        where="due_at IS NOT NULL",
    ),
    Index("ix_message_status_created", "status", "created_at"),
    # Queue search (GET /v1/messages): each filter has an index to start from.
    Index("ix_message_created", "created_at"),
    Index("ix_message_from", "mail_from", "created_at"),
    # Not partial: the search by pool reads the mail never attempted (last_pool NULL) by
    # its intake pool from here too, a branch of its OR (storage.message_search.criteria).
    Index("ix_message_last_pool", "last_pool", "created_at"),
    # A key other than an admin's searches only its own mail: its pages read this index
    # in order, never every message the key ever sent (`id` too: the pages order by it
    # after created_at, and without it SQLite sorts each run of equal created_at).
    _partial(
        "ix_message_sent_by_key",
        "api_key_id",
        "created_at",
        "id",
        where="api_key_id IS NOT NULL",
    ),
    # A member searches the mail they sent (by session or by their keys): the same shape.
    _partial(
        "ix_message_sent_by_user",
        "user_id",
        "created_at",
        "id",
        where="user_id IS NOT NULL",
    ),
    # A report's returned Message-ID and the search's message_id_header filter.
    Index("ix_message_header_id", "header_message_id", "created_at", "id"),
    # The search's client filter: one address in page order, or a CIDR block as a range.
    Index("ix_message_client", "client_address", "created_at", "id"),
)


MessageBody = Table(
    "message_body",
    metadata,
    Column("message_id", String(64), primary_key=True),
    # The body; empty for a body stored in pieces (message_piece, storage.pieces).
    Column("data", LargeBinary, nullable=False),
)


# A large body (storage.pieces.PIECED bytes or more) in pieces of storage.pieces.PIECE bytes
# (schema 11), committed one per group commit before the message's row, so that no small
# message's commit waits for 20 MB to reach the disk. Its message_body row is empty;
# the message row's `size` is the pieces' total. Pieces whose message row never came (a
# crash between them, a refused message) are swept once older than storage.pieces.ORPHAN_AGE
# (`created_at`, from the index).
MessagePiece = Table(
    "message_piece",
    metadata,
    Column("message_id", String(64), primary_key=True),
    Column("seq", Integer, primary_key=True, autoincrement=False),
    Column("data", LargeBinary, nullable=False),
    Column("created_at", Float, nullable=False),
    Index("ix_message_piece_created", "created_at"),
)


Recipient = Table(
    "recipient",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("message_id", String(64), nullable=False),
    Column("email", String, nullable=False),
    # pending | delivered | bounced | suppressed | sandbox
    Column("status", String(16), nullable=False),
    # The message's created_at, copied (schema 10): the search by recipient's order.
    Column("message_created_at", Float, nullable=False, server_default=text("0")),
    Column("attempts", Integer, nullable=False, default=0),
    Column("code", Integer),
    Column("response", String),
    Column("updated_at", Float, nullable=False),
    # (message_id, email), not message_id alone: a result is recorded by both, and with
    # only ix_recipient_email to choose from SQLite would scan every message sent to a
    # popular address (measured: the relay slowed down as the table grew).
    Index("ix_recipient_message_email", "message_id", "email"),
    # The search by recipient reads its page in time order from here (schema 10), not
    # every message the address ever got; lookups by address use it too.
    Index("ix_recipient_email_time", "email", "message_created_at", "message_id"),
)


Suppression = Table(
    "suppression",
    metadata,
    Column("email", String, primary_key=True),  # storage.mailboxes.mailbox_key of the address
    Column("reason", String(16), nullable=False),  # storage.suppressions.REASONS
    Column("created_at", Float, nullable=False),
    Column("note", String),  # why, in words: the bounce rule that decided (schema 8)
    Index("ix_suppression_created", "created_at"),
)


# What the client said about a message beyond its bytes (API key, tags, metadata).
#
# A side table, written in the message's own transaction only when there is something to
# say: plain SMTP mail writes no row, and `message` keeps its narrow claim-path shape.
MessageMeta = Table(
    "message_meta",
    metadata,
    Column("message_id", String(64), primary_key=True),
    Column("api_key_id", String(64)),  # None: unauthenticated SMTP
    Column("provider", String(16), nullable=False, default="smtp"),  # smtp | sandbox
    Column("tags", Text, nullable=False),  # JSON list
    Column("metadata_json", Text, nullable=False),  # JSON
    Column("idempotency_key", String(128)),
    Index("ix_message_meta_api_key", "api_key_id"),
)


# An API key: only the SHA-256 of the secret is kept (the secret has 256 random bits).
ApiKey = Table(
    "api_key",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("name", String(128), nullable=False),
    # hex SHA-256 of the whole "msk_..." secret
    Column("hash", String(64), nullable=False, unique=True),
    # the first characters, to recognise a key in a list
    Column("prefix", String(16), nullable=False),
    Column("scopes", String, nullable=False),  # space-separated
    Column("created_at", Float, nullable=False),
    Column("revoked_at", Float),
    # The user it belongs to: it never does more than that user's role allows (None: made at
    # the console or before users existed, bounded by its scopes alone).
    Column("user_id", String(64)),
)


# One idempotency key per API key; the primary key is what makes a racing twin lose.
Idempotency = Table(
    "idempotency",
    metadata,
    Column("api_key_id", String(64), primary_key=True),  # "" for unauthenticated SMTP
    Column("key", String(128), primary_key=True),
    Column("message_id", String(64), nullable=False),
    Column("response", Text),  # JSON
    # Hex SHA-256 of the canonical request (storage.idempotency); None: not known, any matches.
    Column("request_hash", String(64)),
    Column("created_at", Float, nullable=False),
    Index("ix_idempotency_created", "created_at"),
)


Pool = Table(
    "smtp_pool",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("name", String, nullable=False, unique=True),
    Column("host", String, nullable=False),
    Column("port", Integer, nullable=False),
    Column("username", String, nullable=False, default=""),
    # encrypted at rest; never leaves storage in clear
    Column("password_enc", String, nullable=False, default=""),
    Column("encryption", String, nullable=False, default="tls"),
    Column("ip_pool", String, nullable=False, default="transactional"),
    Column("priority", Integer, nullable=False, default=100),
    Column("max_connections", Integer, nullable=False, default=10),
    Column("is_default", Boolean, nullable=False, default=False),
    Column("is_active", Boolean, nullable=False, default=True),
    Column("from_email", String, nullable=False, default=""),
    # False only for internal relays with self-signed certificates
    Column("tls_verify", Boolean, nullable=False, default=True),
    Column("source", String, nullable=False, default="api"),  # config | api
    # "100/min", "14/s": sends per rolling window across nodes; "" = none
    Column("rate", String, nullable=False, default=""),
    # sends per UTC day across nodes; 0 = none
    Column("daily_limit", Integer, nullable=False, default=0),
    Column("created_at", Float, nullable=False),
    Column("created_by", String(64)),  # user id; None: console/config
)


Meta = Table(
    "postern_meta",
    metadata,
    Column("key", String, primary_key=True),
    Column("value", String, nullable=False),
)


# A DKIM signing key; several selectors per domain, at most one `active` (rotation).
DkimKey = Table(
    "dkim_key",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("domain", String(253), nullable=False),  # lower-case A-label form
    Column("selector", String(200), nullable=False),
    Column("algorithm", String(16), nullable=False),  # rsa | ed25519
    # PKCS#8 PEM, encrypted with gateway.security.secrets.SecretBox
    Column("private_key_enc", String, nullable=False),
    Column("public_key", String, nullable=False),  # the base64 p= value of the DNS record
    Column("status", String(16), nullable=False),  # pending | active | retired
    Column("created_at", Float, nullable=False),
    Index("uq_dkim_key_domain_selector", "domain", "selector", unique=True),
    Index("ix_dkim_key_domain", "domain"),
    # The database itself refuses a second active key for a domain.
    _partial(
        "ux_dkim_key_active",
        "domain",
        unique=True,
        where="status = 'active'",
    ),
)


# A transport-map entry made over the API (gateway.routing.DomainRoute): mail to
# `recipient_domain` (exact, or `.suffix` for every subdomain) goes through the pool named
# `pool`, else the group `ip_pool`. The config's `[[routes]]` are not stored here.
RecipientRoute = Table(
    "recipient_route",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("recipient_domain", String(254), nullable=False, unique=True),  # lower-case A-labels
    Column("pool", String(255)),  # a pool's name
    Column("ip_pool", String(64)),
    Column("created_at", Float, nullable=False),
    Column("created_by", String(64)),  # user id; None: console
)


# A domain mail may be sent From (policy.sender = "verified"), once verified.
SenderDomain = Table(
    "sender_domain",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("domain", String(253), nullable=False, unique=True),  # lower-case A-label form
    Column("is_verified", Boolean, nullable=False, default=False),
    Column("created_at", Float, nullable=False),
    Column("verified_at", Float),
    Column("checked_at", Float),  # last DNS check
    Column("created_by", String(64)),  # user id; None: console/config
)


# A From identity routed to an ip_pool; usable once its owner confirmed it.
SenderAlias = Table(
    "sender_alias",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("email", String(254), nullable=False),  # as given, domain normalised
    # lower-case: one alias per mailbox
    Column("email_key", String(254), nullable=False, unique=True),
    Column("name", String(256), nullable=False, default=""),
    Column("is_default", Boolean, nullable=False, default=False),
    Column("is_verified", Boolean, nullable=False, default=False),
    Column("ip_pool", String(64)),
    Column("created_at", Float, nullable=False),
    Column("verified_at", Float),
    Column("created_by", String(64)),  # user id; None: console/config
    # The database itself refuses a second default alias.
    _partial(
        "ux_sender_alias_default",
        "is_default",
        unique=True,
        where="is_default",
    ),
)


# A pending alias verification link: only the SHA-256 of its token is kept.
AliasToken = Table(
    "alias_token",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("alias_id", String(64), nullable=False),
    Column("expires_at", Float, nullable=False),
    Column("used_at", Float),
    Index("ix_alias_token_alias", "alias_id"),
)


# One row per tag of a message, so that a search by tag reads an index.
MessageTag = Table(
    "message_tag",
    metadata,
    Column("message_id", String(64), primary_key=True),
    Column("tag", String(128), primary_key=True),
    Index("ix_message_tag_tag", "tag", "message_id"),
)


# One row per distinct word of a message's Subject (storage.search_keys.subject_words),
# written with the message: the search by subject words reads the rarest word's entries
# in time order from ix_subject_word_time and checks the others by primary key.
MessageSubjectWord = Table(
    "message_subject_word",
    metadata,
    Column("message_id", String(64), primary_key=True),
    Column("word", String(64), primary_key=True),
    # the message's created_at: the search's order
    Column("message_created_at", Float, nullable=False),
    Index("ix_subject_word_time", "word", "message_created_at", "message_id"),
)


# The outbox: one row per message state change or per-recipient result.
#
# Written in the transaction of the change itself (gateway.queue.store), so a change and its
# event exist together or not at all. Webhooks read it through a cursor each
# (storage.webhook_outbox), in the order events were committed: by id on SQLite (commits
# are serial), by (txid, id) on PostgreSQL, where `txid` is the writing transaction's id.
Event = Table(
    "event",
    metadata,
    Column("id", BIG_ID, primary_key=True),
    Column("type", String(32), nullable=False),  # see gateway.queue.events.TYPES
    Column("message_id", String(64), nullable=False),
    Column("recipient", String),  # None for a message-level event (throttled)
    Column("pool", String(128)),
    Column("code", Integer),  # the upstream's reply
    Column("enhanced", String(16)),
    Column("response", String),
    # the attempt that produced it; 0 at intake
    Column("attempt", Integer, nullable=False, default=0),
    Column("message_status", String(16), nullable=False),  # the message's status after the change
    Column("created_at", Float, nullable=False),
    # JSON object merged into the public event (schema 8): a report that came back later
    # adds {"async": true, "bounce": {...}}; NULL for every other event.
    Column("detail", String),
    # Seconds of the upstream's SMTP transaction that gave this answer (schema 10; NULL
    # when no session answered): the Live page's latency per minute, with no join.
    Column("upstream_seconds", Float),
    # Set by the database: 0 on SQLite, the transaction id on PostgreSQL (EVENT_TXID).
    Column("txid", BigInteger, nullable=False, server_default=text("0")),
    Index("ix_event_message", "message_id", "id"),
    Index("ix_event_created", "created_at"),
    Index("ix_event_order", "txid", "id").ddl_if(dialect="postgresql"),
    sqlite_autoincrement=True,  # ids are never reused: receivers de-duplicate by id
)


# PostgreSQL: an event's txid is its transaction's (64-bit, never wraps).
EVENT_TXID = "pg_current_xact_id()::text::bigint"
listen(
    Event,
    "after_create",
    DDL(f"ALTER TABLE event ALTER COLUMN txid SET DEFAULT {EVENT_TXID}").execute_if(
        dialect="postgresql"
    ),
)


Webhook = Table(
    "webhook",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("url", String, nullable=False),
    Column("event_types", String, nullable=False, default=""),  # space-separated; "" = every type
    Column("final_only", Boolean, nullable=False, default=False),
    # encrypted signing secret (it must be readable to sign)
    Column("secret_enc", String, nullable=False),
    Column("description", String, nullable=False, default=""),
    Column("is_active", Boolean, nullable=False, default=True),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("created_by", String(64)),  # user id; None: console/config
    # Sending state, shared by the nodes: who sends for it now, when it may next try.
    Column("claimed_by", String(64)),
    Column("claimed_until", Float),
    Column("next_attempt_at", Float, nullable=False, default=0.0),
    Column("failures", Integer, nullable=False, default=0),  # consecutive failed attempts
    # The position (txid, id) of the last event it was sent or skipped (webhook_outbox).
    Column("cursor_txid", BigInteger, nullable=False, server_default=text("0")),
    Column("cursor_id", BigInteger, nullable=False, server_default=text("0")),
    # The last replay: events up to this position count as written at replayed_at, so
    # that max_age does not drop what an operator asked to have sent again.
    Column("replayed_txid", BigInteger, nullable=False, server_default=text("0")),
    Column("replayed_id", BigInteger, nullable=False, server_default=text("0")),
    Column("replayed_at", Float, nullable=False, default=0.0),
)


# One POST to a webhook and how it went (GET /api/v1/webhooks/{id}/deliveries).
WebhookAttempt = Table(
    "webhook_attempt",
    metadata,
    Column("id", BIG_ID, primary_key=True),
    Column("webhook_id", String(64), nullable=False),
    Column("at", Float, nullable=False),
    Column("events", Integer, nullable=False),  # how many events the POST carried
    Column("status_code", Integer),  # None: no HTTP answer (refused, timeout)
    Column("error", String, nullable=False, default=""),
    Column("duration_ms", Float, nullable=False, default=0.0),
    Column("outcome", String(16), nullable=False),  # delivered | failed | dropped
    Index("ix_webhook_attempt_webhook", "webhook_id", "id"),
    sqlite_autoincrement=True,
)


# A send through a rate-limited pool, for the rolling-window count shared by nodes.
PoolSend = Table(
    "pool_send",
    metadata,
    Column("id", BIG_ID, primary_key=True),
    Column("pool_id", String(64), nullable=False),
    Column("at", Float, nullable=False),
    Index("ix_pool_send_pool_at", "pool_id", "at"),
    sqlite_autoincrement=True,
)


# Sends through a pool on one UTC day, for `daily_limit`.
PoolDay = Table(
    "pool_day",
    metadata,
    Column("pool_id", String(64), primary_key=True),
    Column("day", String(10), primary_key=True),  # YYYY-MM-DD
    Column("count", Integer, nullable=False, default=0),
)


# A failed SMTP AUTH guess, or one being checked (schema 11; storage.auth_failures): the
# rolling windows of the failure budgets, per client address and for everyone, that every
# worker and node share. `subject` is `a:<client address>` or `*`.
AuthFailure = Table(
    "auth_failure",
    metadata,
    Column("id", BIG_ID, primary_key=True),
    Column("subject", String(64), nullable=False),
    Column("at", Float, nullable=False),
    Index("ix_auth_failure_subject_at", "subject", "at"),
    Index("ix_auth_failure_at", "at"),  # the pruning of subjects that stopped guessing
    sqlite_autoincrement=True,  # never a freed id again: a give-back deletes by id
)


# A warmup of one account or pool (schema 10; storage.warmup). Sends are counted in
# `pool_send` / `pool_day` under the key `warmup:<kind>:<id>`, the day being the local
# day of `timezone`. `status` is active or paused as stored; not_started and complete
# follow from the day (storage.warmup_schedule).
Warmup = Table(
    "warmup",
    metadata,
    Column("kind", String(16), primary_key=True),  # account | pool
    Column("subject_id", String(64), primary_key=True),
    Column("preset", String(32)),  # None: the linear ramp below
    Column("start_volume", Integer, nullable=False, default=0),
    Column("step", Integer, nullable=False, default=0),
    Column("cap", Integer, nullable=False, default=0),
    Column("timezone", String(64), nullable=False),  # [warmup] timezone when set, or as given
    Column("start_day", String(10), nullable=False),  # YYYY-MM-DD, local: day 1
    Column("status", String(16), nullable=False),  # active | paused
    Column("paused_reason", String(512)),
    Column("paused_at", Float),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("created_by", String(64)),  # user id; None: console
)


# A person who logs in (machines use API keys). `email` is the mailbox_key form.
User = Table(
    "users",
    metadata,
    Column("id", String(64), primary_key=True),  # usr_...
    Column("email", String(320), nullable=False, unique=True),
    Column("name", String(128), nullable=False, default=""),
    Column("password_hash", String(256), nullable=False),  # argon2id, PHC string form
    Column("role", String(16), nullable=False),  # owner | admin | member
    Column("disabled_at", Float),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)


# A logged-in browser: only the SHA-256 of its random token is kept. `expires_at`
# slides with use and never passes `absolute_expires_at`, so it alone says when the
# session ends (the purge reads its index).
UserSession = Table(
    "sessions",
    metadata,
    Column("id", String(64), primary_key=True),  # ses_...
    Column("user_id", String(64), nullable=False),
    Column("token_hash", String(64), nullable=False, unique=True),  # hex SHA-256 of the token
    Column("created_at", Float, nullable=False),
    Column("last_seen_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    Column("absolute_expires_at", Float, nullable=False),
    Column("user_agent", String(256), nullable=False, default=""),
    Column("ip", String(64), nullable=False, default=""),
    # The user's role when the session began: a session outlives no role change (it is
    # rotated at its next request, gateway.people.sessions).
    Column("role", String(16), nullable=False, default=""),
    Index("ix_sessions_user", "user_id"),
    Index("ix_sessions_expires", "expires_at"),
)


# An invitation to share an account (an alias or a domain today, a connected mail
# account later: `account_kind` says which table `account_id` is in, so a new kind needs
# no change of the rows). Only the SHA-256 of the emailed token is kept. `expired` is not
# stored while the row is the live one: it is `pending` with `expires_at` passed; a
# replaced expired row is closed as `expired`, so that one pending row per account and
# address is all the partial unique index ever sees.
Invitation = Table(
    "invitations",
    metadata,
    Column("id", String(64), primary_key=True),  # inv_...
    Column("account_kind", String(16), nullable=False),  # alias | domain | account
    Column("account_id", String(64), nullable=False),
    Column("invitee_email", String(320), nullable=False),  # the mailbox_key form
    Column("role", String(16), nullable=False),  # admin | member
    # pending | accepted | declined | revoked | expired
    Column("status", String(16), nullable=False),
    # hex SHA-256 of the emailed token
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("inviter_id", String(64)),  # usr_... or key_...
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    Column("responded_at", Float),
    _partial(
        "ux_invitations_pending",
        "account_kind",
        "account_id",
        "invitee_email",
        unique=True,
        where="status = 'pending'",
    ),
    Index("ix_invitations_account", "account_kind", "account_id", "created_at"),
    Index("ix_invitations_invitee", "invitee_email", "status"),
)


# An account shared with a user (an accepted invitation): one row per account and
# user, the primary key.
Share = Table(
    "shares",
    metadata,
    Column("account_kind", String(16), primary_key=True),
    Column("account_id", String(64), primary_key=True),
    Column("user_id", String(64), primary_key=True),
    Column("role", String(16), nullable=False),  # admin | member
    Column("shared_at", Float, nullable=False),
    Column("invitation_id", String(64)),
    Index("ix_shares_user", "user_id", "account_kind"),
)


# A connected mail account (seed 004): an IMAP/SMTP mailbox its owner proved they can
# log in to. Its id is a UUID (the seed's form), which is how storage.accounts tells it
# from an alias or a domain. The password is sealed, bound to the id (write-only).
#
# Sync state, shared by the nodes: a node leases an account (`claimed_by`,
# `claimed_until`) for one sync; a dead node's lease lapses and another takes it.
MailAccount = Table(
    "mail_account",
    metadata,
    Column("id", String(64), primary_key=True),  # a UUID
    Column("user_id", String(64)),  # the owner (its creator)
    Column("email", String(254), nullable=False, unique=True),  # the mailbox_key form
    Column("name", String(256), nullable=False, default=""),
    Column("imap_host", String(253), nullable=False),
    Column("imap_port", Integer, nullable=False),
    Column("imap_security", String(16), nullable=False),  # ssl | starttls | none (loopback only)
    Column("smtp_host", String(253), nullable=False),
    Column("smtp_port", Integer, nullable=False),
    Column("smtp_security", String(16), nullable=False),  # ssl | starttls | none (loopback only)
    Column("tls_verify", Boolean, nullable=False, default=True),
    Column("username", String(320), nullable=False),
    # sealed, bound to the id; "" once a host changed without a new one
    Column("password_enc", String, nullable=False, default=""),
    Column("is_default", Boolean, nullable=False, default=False),
    # pending|syncing|synced|error
    Column("sync_status", String(16), nullable=False, default="pending"),
    Column("last_error", String(512)),
    Column("last_synced_at", Float),
    Column("uidvalidity", BigInteger),
    Column("uidnext", BigInteger),
    Column("next_sync_at", Float, nullable=False, default=0.0),  # due for a sync from then on
    Column("claimed_by", String(64)),
    Column("claimed_until", Float),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("created_by", String(64)),  # user id; None: console key
    Index("ix_mail_account_user", "user_id", "created_at"),
    Index("ix_mail_account_due", "next_sync_at"),
    # The database itself refuses a second default account for one user.
    _partial(
        "ux_mail_account_default",
        "user_id",
        unique=True,
        where="is_default",
    ),
)


# How far a connected account's mailbox has been read: the UIDVALIDITY the UIDs belong
# to and the highest UID handed over (its report committed, or skipped and recorded). A
# table of its own, not columns of `mail_account`: it outlives a disconnect, as synced data
# does, and a new table needs no schema upgrade.
InboxCursor = Table(
    "inbox_cursor",
    metadata,
    Column("account_id", String(64), primary_key=True),
    Column("mailbox", String(256), primary_key=True),
    Column("uidvalidity", BigInteger, nullable=False),
    Column("last_uid", BigInteger, nullable=False),
    Column("updated_at", Float, nullable=False),
)


# A message of a connected account's mailbox that was not handed over (too big), kept
# so that a user can see why: the mailbox keeps the message itself.
InboxSkip = Table(
    "inbox_skip",
    metadata,
    Column("account_id", String(64), primary_key=True),
    Column("mailbox", String(256), primary_key=True),
    Column("uidvalidity", BigInteger, primary_key=True, autoincrement=False),
    Column("uid", BigInteger, primary_key=True, autoincrement=False),
    Column("size", BigInteger, nullable=False),
    Column("reason", String(256), nullable=False),
    Column("created_at", Float, nullable=False),
)


# A report that came back (bounce, complaint, auto-reply...), kept whatever became of
# it (gateway.bounces.ingest). `dedupe_key` makes it processed once: its IMAP position
# (account, mailbox, UIDVALIDITY, UID) when it came from an inbox, else its identity;
# `content_hash` (the identity) is unique too: the SHA-256 of its bytes, scoped to the
# envelope recipient it came for when it has one (storage.bounce_reports.identity), so
# one transaction to several VERP addresses is one report per address, and the same
# bytes met twice for the same address are one report; `raw_hash` (the bytes alone)
# makes the same bytes met without an envelope recipient (an upload, an inbox) one
# report with them. Its effects are written in the transaction that inserts it.
BounceReport = Table(
    "bounce_report",
    metadata,
    Column("id", BIG_ID, primary_key=True),
    Column("dedupe_key", String(80), nullable=False, unique=True),
    # SHA-256: bytes (+ envelope rcpt)
    Column("content_hash", String(64), nullable=False, unique=True),
    # Schema 10: the SHA-256 of the bytes alone (not unique: one per VERP recipient), so
    # the same bytes met with and without an envelope recipient are one report. NULL on
    # rows from before it of a report that came for a recipient.
    Column("raw_hash", String(64)),
    Column("received_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("source", String(16), nullable=False),  # imap | listener | api
    Column("account_id", String(64)),
    Column("mailbox", String),
    Column("uidvalidity", BigInteger),
    Column("uid", BigInteger),
    Column("envelope_recipient", String),
    Column("raw", LargeBinary, nullable=False),  # cut at max size
    Column("size", Integer, nullable=False, default=0),  # of the whole report
    Column("kind", String(16), nullable=False),  # dsn | complaint | auto_reply | unparsed | other
    Column("format", String(32), nullable=False, default=""),
    Column("status", String(16), nullable=False),  # processed | unmatched | unparsed | ignored
    Column("error", String),  # why unparsed or unmatched
    Column("message_id", String(64)),
    Column("recipient", String),  # the first matched recipient (all of them in `entries`)
    Column("matched_by", String(16)),  # verp | ref | message_id
    Column("cls", String(16)),  # the first entry's class
    Column("rule", String(64)),
    Column("reason", String),
    Column("entries", Text, nullable=False),  # JSON
    Index("ix_bounce_report_status", "status", "id"),
    Index("ix_bounce_report_message", "message_id"),
    Index("ix_bounce_report_raw_hash", "raw_hash"),
    sqlite_autoincrement=True,
)


# Soft bounces of one address within the last [bounces] soft_window, a sliding window
# (gateway.bounces.effects): reaching soft_limit suppresses it; a delivery to it deletes
# the row.
SoftBounce = Table(
    "soft_bounce",
    metadata,
    Column("email", String, primary_key=True),  # storage.mailboxes.mailbox_key
    Column("bounces", Integer, nullable=False, default=0),  # within the window
    Column("first_at", Float, nullable=False),  # the oldest bounce still within the window
    # the newest: once it is out of the window, the row counts nothing
    Column("last_at", Float, nullable=False),
    # Schema 10: the bounces' times within the window, a JSON array (a sliding window)
    Column("recent", Text),
)


# The latest DNSBL verdict of one subject (a sending IP address or domain), written by
# the scheduled check (gateway.reputation.dnsbl). Schema 10.
#
# `listings` is a JSON list of {"list", "code", "meaning"}; `errors` a JSON list of
# {"list", "reason"} for the lists that gave no answer this time (a query error, or a list
# that failed its verification). `checked_at` is when the last check that reached a verdict
# (clean or listed) completed: an `unknown` round leaves it as it was.
BlocklistCheck = Table(
    "blocklist_check",
    metadata,
    Column("subject", String(253), primary_key=True),  # an IP address or a domain
    Column("kind", String(8), nullable=False),  # ip | domain
    Column("status", String(8), nullable=False),  # clean | listed | unknown
    Column("listings", String, nullable=False, default="[]"),
    Column("errors", String, nullable=False, default="[]"),
    Column("checked_at", Float),
    # the last round that asked about it, whatever came back
    Column("attempted_at", Float, nullable=False),
    Column("listed_since", Float),  # when it became listed (None: not listed now)
)


# The lease of the scheduled DNSBL check, one row per check name: one node of many runs
# it (`claimed_by` until `claimed_until`, a conditional UPDATE); a dead node's lease lapses.
# `completed_at` is when the last whole round finished. Schema 10.
BlocklistRun = Table(
    "blocklist_run",
    metadata,
    Column("name", String(32), primary_key=True),
    Column("claimed_by", String(64)),
    Column("claimed_until", Float),
    Column("started_at", Float),
    Column("completed_at", Float),
)


# What happened to the mail sent through one pool (or account: its label is the
# address) From one domain on one UTC day, rolled up from `event` by the reputation
# evaluation (storage.reputation) so that a 30-day window reads 30 rows per subject, not
# every event, and outlives [storage] retention. Schema 10.
ReputationDay = Table(
    "reputation_day",
    metadata,
    Column("day", String(10), primary_key=True),  # YYYY-MM-DD (UTC)
    Column("pool", String(128), primary_key=True),  # the events' pool label; "" none
    Column("domain", String(253), primary_key=True),  # of the envelope sender, lower case
    Column("delivered", BigInteger, nullable=False, server_default=text("0")),
    Column("hard_bounces", BigInteger, nullable=False, server_default=text("0")),
    Column("complaints", BigInteger, nullable=False, server_default=text("0")),
    Column("deferrals", BigInteger, nullable=False, server_default=text("0")),
)


# The reputation evaluation's lease (one node runs it) and how far the events were
# rolled up (`rolled_until`, a created_at): one row, name "evaluation". Schema 10.
ReputationJob = Table(
    "reputation_job",
    metadata,
    Column("name", String(32), primary_key=True),
    Column("claimed_by", String(64)),
    Column("claimed_until", Float),
    Column("rolled_until", Float),
    Column("evaluated_at", Float),
)


# The last evaluation of one account, pool or domain: its score and whether it was at
# risk (a `reputation_at_risk` event fires once per crossing), and for a domain its
# records as last looked up (None: not known). Schema 10.
ReputationSubject = Table(
    "reputation_subject",
    metadata,
    Column("kind", String(16), primary_key=True),  # account | pool | domain
    Column("subject", String(253), primary_key=True),  # account or pool id, domain name
    Column("score", Integer),
    Column("at_risk", Boolean, nullable=False, default=False),
    Column("evaluated_at", Float),
    Column("spf", Boolean),
    Column("dkim", Boolean),
    Column("dmarc", Boolean),
    Column("setup_checked_at", Float),
)


# The charted events (delivered, deferred, bounced) counted per epoch minute, pool, type
# and owner: what the Live page and the pools page chart, read without touching the event
# table's hour (storage.event_minutes). Added to by the roller (gateway.queue.rollup) from
# the events after its position, in the transaction that moves the position. '' stands
# for no pool / no owner (a NULL in a key would make every such row unique). Schema 10.
EventMinute = Table(
    "event_minute",
    metadata,
    Column("minute", BigInteger, primary_key=True),  # created_at // 60
    Column("pool", String(128), primary_key=True, default=""),
    Column("type", String(32), primary_key=True),
    Column("user_id", String(64), primary_key=True, default=""),  # the message's owner
    Column("count", Integer, nullable=False, default=0),
    # events of them with an upstream_seconds
    Column("latency_count", Integer, nullable=False, default=0),
    Column("latency_sum", Float, nullable=False, default=0.0),
    Column("latency_max", Float),
)


# The roller's position (txid, id) in commit order: every event at or before it is
# counted in event_minute, none after. One row per roll; one node of many rolls it
# (`claimed_by` until `claimed_until`, a conditional UPDATE). Schema 10.
EventRoll = Table(
    "event_roll",
    metadata,
    Column("name", String(32), primary_key=True),
    Column("position_txid", BigInteger, nullable=False),
    Column("position_id", BigInteger, nullable=False),
    Column("claimed_by", String(64)),
    Column("claimed_until", Float),
)
