"""Connected mail accounts (seed 004): each change one transaction.

    connect:    quota and address checked, then the row written, in one transaction (the
                user's quota cannot be passed by two requests at once: SQLite's write lock,
                PostgreSQL's advisory lock per user); the user's first account is their default
    update:     fields changed in place (the address checked free again, the owner's
                default moved, the password replaced, or cleared when where it is sent moves
                without a new one: `moves_password`), in one transaction
    disconnect: the row and its shares go; whatever was synced stays (its own tables). The
                only default account of a user is kept while queued mail is From its address
    sync:       a node leases a due account (`claim`: a conditional UPDATE, so one node wins
                across processes and nodes), syncs it, and records the outcome (`finish`,
                only while it still holds the lease); a dead node's lease lapses

Gateway never sees a row in clear here either: the password column holds a ciphertext made
by the caller (`Seal`), bound to the account's id.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, and_, case, delete, func, or_, select, text, update
from sqlalchemy.exc import IntegrityError

from storage.db import Database
from storage.errors import Refused
from storage.mailboxes import mailbox_key
from storage.models import MailAccount, Message
from storage.shares import end_account

A = MailAccount
M = Message

PENDING, SYNCING, SYNCED, ERROR = "pending", "syncing", "synced", "error"
STATUSES = (PENDING, SYNCING, SYNCED, ERROR)
KIND = "account"  # storage.accounts' kind, the shares' account_kind
FIELDS = (
    "email", "name", "imap_host", "imap_port", "imap_security", "smtp_host", "smtp_port",
    "smtp_security", "tls_verify", "username",
)  # fmt: skip
MAX_ERROR = 500
_QUOTA_LOCK = 7304  # PostgreSQL advisory lock (with the user's hash): one connect per user

Seal = Callable[[str], str]  # account id -> password ciphertext bound to it


class AccountError(Refused):
    """Base of this module's refusals; the message is safe to show."""


class AccountNotFound(AccountError):
    pass


class AccountExists(AccountError):
    """The address is connected already (by anyone: one account per mailbox)."""


class AccountQuota(AccountError):
    """The user has `max_per_user` accounts already."""


class AccountInUse(AccountError):
    """The user's only default account while queued mail is From its address."""


class DefaultRequired(AccountError):
    """`is_default: false` on a user's default account: they keep one (make another the
    default instead)."""


@dataclass(frozen=True)
class MailAccountRecord:
    """A stored account without its password (safe to return and log)."""

    id: str
    user_id: str | None
    email: str
    name: str
    imap_host: str
    imap_port: int
    imap_security: str
    smtp_host: str
    smtp_port: int
    smtp_security: str
    tls_verify: bool
    username: str
    is_default: bool
    sync_status: str
    last_error: str | None
    last_synced_at: float | None
    uidvalidity: int | None
    uidnext: int | None
    created_at: float
    updated_at: float
    created_by: str | None
    has_password: bool


def _record(row: Any) -> MailAccountRecord:
    return MailAccountRecord(
        **{name: getattr(row, name) for name in FIELDS},
        id=row.id,
        user_id=row.user_id,
        is_default=row.is_default,
        sync_status=row.sync_status,
        last_error=row.last_error,
        last_synced_at=row.last_synced_at,
        uidvalidity=row.uidvalidity,
        uidnext=row.uidnext,
        created_at=row.created_at,
        updated_at=row.updated_at,
        created_by=row.created_by,
        has_password=bool(row.password_enc),
    )


def new_id() -> str:
    """The seed's id form, a UUID (storage.accounts knows the kind by it)."""
    return str(uuid.uuid4())


def _lock_user(conn: Connection, user_id: str) -> None:
    if conn.dialect.name == "postgresql":
        conn.execute(
            text("SELECT pg_advisory_xact_lock(:lock, hashtext(:user))"),
            {"lock": _QUOTA_LOCK, "user": user_id},
        )


def _count(conn: Connection, user_id: str) -> int:
    query = select(func.count()).select_from(A).where(A.c.user_id == user_id)
    return int(conn.execute(query).scalar() or 0)


async def create_account(
    db: Database,
    values: Mapping[str, Any],
    seal: Seal,
    user_id: str,
    max_per_user: int,
    account_id: str | None = None,
) -> MailAccountRecord:
    """Store a new account of `user_id` (its owner and creator), status pending and due
    for a sync now. AccountExists, AccountQuota."""
    unknown = set(values) - set(FIELDS)
    if unknown:
        raise ValueError(f"not account fields: {sorted(unknown)}")
    account_id = account_id or new_id()
    email = mailbox_key(values["email"])
    password_enc = seal(account_id)
    now = time.time()

    def work(conn: Connection) -> MailAccountRecord:
        _lock_user(conn, user_id)
        if conn.execute(select(A.c.id).where(A.c.email == email)).first() is not None:
            raise AccountExists(f"{email} is already connected")
        count = _count(conn, user_id)
        if count >= max_per_user:
            raise AccountQuota(f"account quota reached ({max_per_user} connected accounts)")
        row = {**values, "email": email, "password_enc": password_enc}
        conn.execute(
            A.insert().values(
                id=account_id, user_id=user_id, created_by=user_id, is_default=count == 0,
                sync_status=PENDING, next_sync_at=now, created_at=now, updated_at=now, **row,
            )
        )  # fmt: skip
        return _record(conn.execute(select(A).where(A.c.id == account_id)).one())

    try:
        return await db.exclusive(work)
    except IntegrityError:  # a concurrent connect of the same address won
        raise AccountExists(f"{email} is already connected") from None


# Where the password goes and how: a change of any of these without a new password clears
# it (as a pool's ENDPOINT does), so that it is never sent somewhere its owner did not give
# it for. tls_verify counts only when it is turned off (storage.pools counts any change).
PASSWORD_BOUND = (
    "imap_host", "imap_port", "imap_security", "smtp_host", "smtp_port", "smtp_security",
    "username",
)  # fmt: skip
NO_PASSWORD = (
    "no password stored (cleared when a host, port, security or username changed without a "
    "new one, or it cannot be decrypted): give the password again"
)


def _same(name: str, old: Any, new: Any) -> bool:
    if name.endswith("_host") and isinstance(old, str) and isinstance(new, str):
        return old.lower().rstrip(".") == new.lower().rstrip(".")  # DNS names ignore case
    if name == "email" and isinstance(old, str) and isinstance(new, str):
        return mailbox_key(old) == mailbox_key(new)  # one mailbox, however it is spelled
    return bool(old == new)


async def sealed_password(db: Database, account_id: str) -> str:
    """The account's password as stored (sealed; "" when none, or no such account)."""
    query = select(A.c.password_enc).where(A.c.id == account_id)
    return await db.read(lambda conn: str(conn.execute(query).scalar() or ""))


def moves_password(row: Any, changes: Mapping[str, Any]) -> bool:
    """Whether `changes` send the stored password elsewhere, or less safely."""
    moved = any(
        not _same(name, getattr(row, name), changes[name])
        for name in PASSWORD_BOUND
        if name in changes
    )
    return moved or (row.tls_verify and changes.get("tls_verify") is False)


def changed(row: Any, changes: Mapping[str, Any]) -> dict[str, Any]:
    """The changes that differ from `row` (a record or a row)."""
    return {
        name: value for name, value in changes.items() if not _same(name, getattr(row, name), value)
    }


async def update_account(
    db: Database, account_id: str, changes: Mapping[str, Any], seal: Seal | None = None
) -> MailAccountRecord:
    """Change an account's fields (FIELDS and `is_default`); `seal` (when given) replaces
    its password. Without one, a change that moves the password (`moves_password`, decided
    against the row in this transaction) clears it, and the account shows why (error). A
    change of credentials or of the IMAP side makes it due for a sync at once, pending.
    AccountNotFound, AccountExists (the address is another's), DefaultRequired."""
    unknown = set(changes) - set(FIELDS) - {"is_default"}
    if unknown:
        raise ValueError(f"not account fields: {sorted(unknown)}")
    password_enc = seal(account_id) if seal is not None else None
    now = time.time()

    def work(conn: Connection) -> MailAccountRecord:
        row = conn.execute(select(A).where(A.c.id == account_id)).first()
        if row is None:
            raise AccountNotFound("account not found")
        values = dict(changes)
        if "email" in values:
            values["email"] = email = mailbox_key(values["email"])
            other = select(A.c.id).where(A.c.email == email, A.c.id != account_id)
            if conn.execute(other).first() is not None:
                raise AccountExists(f"{email} is already connected")
        default = values.pop("is_default", None)
        if default is False and row.is_default:
            raise DefaultRequired(
                "this is its owner's default account: make another account the default instead"
            )
        if default and not row.is_default:
            _lock_user(conn, row.user_id or "")
            mine = A.c.user_id == row.user_id if row.user_id is not None else A.c.user_id.is_(None)
            conn.execute(update(A).where(mine, A.c.id != account_id).values(is_default=False))
            values["is_default"] = True
        relogin = password_enc is not None or any(
            name in values for name in (*PASSWORD_BOUND, "tls_verify")
        )
        if password_enc is not None:
            values["password_enc"] = password_enc
        elif row.password_enc and moves_password(row, values):
            values["password_enc"] = ""
        if relogin and values.get("password_enc", row.password_enc):
            values |= {"sync_status": PENDING, "last_error": None, "next_sync_at": now}
        elif relogin:  # nothing to log in with until the password is given again
            values |= {"sync_status": ERROR, "last_error": NO_PASSWORD}
        if values:
            conn.execute(update(A).where(A.c.id == account_id).values(updated_at=now, **values))
        return _record(conn.execute(select(A).where(A.c.id == account_id)).one())

    try:
        return await db.exclusive(work)
    except IntegrityError:  # a concurrent connect or change to the same address won
        raise AccountExists(f"{changes.get('email')} is already connected") from None


async def address_and_count(db: Database, email: str, user_id: str) -> tuple[bool, int]:
    """Whether the address is connected (by anyone), and how many accounts the user has."""
    key = mailbox_key(email)

    def read(conn: Connection) -> tuple[bool, int]:
        taken = conn.execute(select(A.c.id).where(A.c.email == key)).first() is not None
        return taken, _count(conn, user_id)

    return await db.read(read)


async def is_connected(db: Database, email: str) -> bool:
    """Whether the address is a connected account's (one indexed read)."""
    query = select(A.c.id).where(A.c.email == mailbox_key(email)).limit(1)
    return await db.read(lambda conn: conn.execute(query).first() is not None)


async def get_account(db: Database, account_id: str) -> MailAccountRecord | None:
    row = await db.read(lambda conn: conn.execute(select(A).where(A.c.id == account_id)).first())
    return None if row is None else _record(row)


async def list_accounts(db: Database) -> list[MailAccountRecord]:
    """Every account, oldest first (the caller keeps those its caller may see)."""
    query = select(A).order_by(A.c.created_at, A.c.id)
    return await db.read(lambda conn: [_record(row) for row in conn.execute(query)])


@dataclass(frozen=True)
class SendingAccount:
    """What delivery needs to send through an account's own SMTP server (the password still
    sealed: only the delivering process opens it)."""

    id: str
    email: str
    smtp_host: str
    smtp_port: int
    smtp_security: str
    tls_verify: bool
    username: str
    password_enc: str = field(repr=False)


async def sending_accounts(db: Database) -> list[SendingAccount]:
    """Every connected account's SMTP side, by id."""
    query = select(
        A.c.id, A.c.email, A.c.smtp_host, A.c.smtp_port, A.c.smtp_security, A.c.tls_verify,
        A.c.username, A.c.password_enc,
    ).order_by(A.c.id)  # fmt: skip
    return await db.read(lambda conn: [SendingAccount(*row) for row in conn.execute(query)])


def _queued_from(conn: Connection, email: str) -> bool:
    """Whether a message with work left is From `email` (a mailbox key)."""
    query = select(M.c.id).where(M.c.due_at.is_not(None), func.lower(M.c.mail_from) == email)
    return conn.execute(query.limit(1)).first() is not None


async def delete_account(db: Database, account_id: str) -> MailAccountRecord:
    """Disconnect: the row and its shares go (a sync under way finds its lease gone and
    records nothing); another of the user's accounts becomes the default. AccountInUse for
    the user's only default account while queued mail is From it."""

    def work(conn: Connection) -> MailAccountRecord:
        row = conn.execute(select(A).where(A.c.id == account_id)).first()
        if row is None:
            raise AccountNotFound("account not found")
        others = select(A.c.id).where(A.c.user_id == row.user_id, A.c.id != account_id)
        heir = conn.execute(others.order_by(A.c.created_at, A.c.id).limit(1)).first()
        if row.is_default and heir is None and _queued_from(conn, row.email):
            raise AccountInUse(
                f"{row.email} is your only default account and queued mail is from it: "
                "let that mail go (or cancel it), then disconnect"
            )
        conn.execute(delete(A).where(A.c.id == account_id))
        end_account(conn, KIND, account_id, time.time())
        if row.is_default and heir is not None:
            conn.execute(update(A).where(A.c.id == heir.id).values(is_default=True))
        return _record(row)

    return await db.exclusive(work)


# --- sync leases ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SyncJob:
    """What a node needs to sync one leased account (the password still sealed)."""

    id: str
    email: str
    imap_host: str
    imap_port: int
    imap_security: str
    tls_verify: bool
    username: str
    password_enc: str


def _free(now: float) -> Any:
    return and_(
        A.c.next_sync_at <= now,
        or_(A.c.claimed_by.is_(None), A.c.claimed_until < now),
    )


def due(conn: Connection, now: float, limit: int) -> list[str]:
    """Accounts due a sync and leased by no one (a read: an idle node writes nothing)."""
    query = select(A.c.id).where(_free(now)).order_by(A.c.next_sync_at, A.c.id).limit(limit)
    return list(conn.execute(query).scalars())


def claim(conn: Connection, account_id: str, node: str, now: float, until: float) -> SyncJob | None:
    """Lease the account to `node` for one sync (status syncing), if it is still due and
    free: of two nodes claiming it at once, exactly one gets it."""
    done = conn.execute(
        update(A)
        .where(A.c.id == account_id, _free(now))
        .values(claimed_by=node, claimed_until=until, sync_status=SYNCING, updated_at=now)
    )
    if done.rowcount != 1:
        return None
    row = conn.execute(select(A).where(A.c.id == account_id)).one()
    return SyncJob(
        row.id, row.email, row.imap_host, row.imap_port, row.imap_security, row.tls_verify,
        row.username, row.password_enc,
    )  # fmt: skip


@dataclass(frozen=True)
class SyncOutcome:
    status: str  # synced | error
    error: str | None = None
    uidvalidity: int | None = None
    uidnext: int | None = None


def finish(
    conn: Connection, account_id: str, node: str, outcome: SyncOutcome, now: float, next_at: float
) -> bool:
    """Record a sync's outcome and give the lease back; False when `node` no longer holds
    it (the account was disconnected, or the lease lapsed and another node took it)."""
    values: dict[str, Any] = {
        "sync_status": outcome.status,
        "last_error": (outcome.error or "")[:MAX_ERROR] or None,
        "claimed_by": None,
        "claimed_until": None,
        "next_sync_at": next_at,
        "updated_at": now,
    }
    if outcome.status == SYNCED:
        values |= {"last_synced_at": now, "uidvalidity": outcome.uidvalidity}
        values["uidnext"] = outcome.uidnext
    done = conn.execute(
        update(A).where(A.c.id == account_id, A.c.claimed_by == node).values(**values)
    )
    return done.rowcount == 1


def release(conn: Connection, node: str) -> None:
    """Give back every lease `node` holds (start-up, shutdown): those accounts are due
    again at once, with the status they had before (pending if never synced)."""
    was = case((A.c.last_synced_at.is_not(None), SYNCED), else_=PENDING)
    conn.execute(
        update(A)
        .where(A.c.claimed_by == node)
        .values(claimed_by=None, claimed_until=None, sync_status=was)
    )


def existing_ids(conn: Connection, account_ids: list[str]) -> set[str]:
    """Which of these accounts are still connected (their rows are there)."""
    query = select(A.c.id).where(A.c.id.in_(account_ids))
    return {row.id for row in conn.execute(query)}


def due_now(conn: Connection, account_id: str, now: float) -> bool:
    """Make the account due at once (its inbox announced new mail); False when it is gone."""
    if conn.execute(select(A.c.id).where(A.c.id == account_id)).first() is None:
        return False
    conn.execute(
        update(A).where(A.c.id == account_id, A.c.next_sync_at > now).values(next_sync_at=now)
    )
    return True
