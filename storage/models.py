"""SQLModel tables. Times are UNIX seconds (float) so that the claim path compares numbers.

The claim path reads one partial index: `message.due_at` is set while a message still has
work to do (when it is due, or when a worker's claim on it lapses) and NULL once it is final.
Bodies live in their own table so that scans of `message` never drag them along.
"""

from __future__ import annotations

from sqlalchemy import Column, Index, LargeBinary, text
from sqlmodel import Field, SQLModel

SCHEMA_VERSION = 1


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
        Index("ix_message_status_created", "status", "created_at"),
    )

    id: str = Field(primary_key=True, max_length=64)
    status: str = Field(max_length=16)  # queued | deferred | delivered | bounced
    source: str = Field(max_length=16)  # smtp | http
    mail_from: str
    alias_id: str | None = None  # routing hint from the client
    ip_pool: str | None = Field(default=None, max_length=64)  # route group chosen at intake
    pool_id: str | None = Field(default=None, max_length=64)  # route pool chosen at intake
    last_pool: str | None = Field(default=None, max_length=128)  # pool of the last attempt
    attempts: int = 0
    size: int = 0
    created_at: float
    updated_at: float
    due_at: float | None = None
    claimed_by: str | None = Field(default=None, max_length=64)
    last_response: str | None = None


class MessageBody(SQLModel, table=True):
    __tablename__ = "message_body"

    message_id: str = Field(primary_key=True, max_length=64)
    data: bytes = Field(sa_column=Column(LargeBinary, nullable=False))


class Recipient(SQLModel, table=True):
    __tablename__ = "recipient"
    __table_args__ = (Index("ix_recipient_message", "message_id"),)

    id: int | None = Field(default=None, primary_key=True)
    message_id: str = Field(max_length=64)
    email: str
    status: str = Field(max_length=16)  # pending | delivered | bounced
    attempts: int = 0
    code: int | None = None
    response: str | None = None
    updated_at: float


class Suppression(SQLModel, table=True):
    __tablename__ = "suppression"
    __table_args__ = (Index("ix_suppression_created", "created_at"),)

    email: str = Field(primary_key=True)  # normalised: see gateway.addresses.normalise
    reason: str = Field(max_length=16)  # unsubscribed | bounced | complaint | manual
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
    created_at: float


class Meta(SQLModel, table=True):
    __tablename__ = "postern_meta"

    key: str = Field(primary_key=True)
    value: str
