"""Who mail may be sent as: verified domains and aliases, held in memory for intake.

Intake routes and checks senders without I/O on the hot path, so this keeps the alias
list (routing step 2 and alias ids) and the verified domains and alias addresses (the
`[policy] sender = "verified"` check) in memory. The API reloads it after each change on
this node; changes made elsewhere (another node, `postern domains add`) are picked up
within `ttl` seconds.

The sender check, with the policy at "verified":
- HTTP: the From address (envelope and header are the same address there).
- SMTP: the envelope MAIL FROM *and* every address of the header From. The envelope is
  what SPF and bounces use, the header From is what the recipient sees and DMARC aligns;
  checking only one would let a client relay mail that claims the other identity. The
  envelope is checked at MAIL FROM already (no body is sent for nothing), and again with
  the header From after DATA. A null envelope sender (a bounce) is judged by its header
  From alone. An authenticated session is checked as any other.
Each must be on a verified domain (exactly that domain: a subdomain is its own), be a
verified alias, or be a connected account's address (seed 002: "or be a connected IMAP
account"). Postern's own messages (alias verification, pool tests) are exempt.

A connected account's address is a person's mailbox, whatever the policy: a caller with a
user may send as it (From it, or `account_id`) only as its owner, a user it is shared with
(storage.shares, kind "account"), or an admin or owner (`account_problem`). A key made at
the console, and an unauthenticated client of a trusted listener, keep the policy's rule.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Sequence
from functools import lru_cache

from gateway.addresses import mailbox_key
from gateway.headers import MAX_FROM, header_block, header_fields, mailboxes
from gateway.message import Sender, Submission
from gateway.people import roles
from gateway.routing import AccountView, AliasView, DomainRoute
from storage.aliases import list_aliases
from storage.db import Database
from storage.domains import verified_domains
from storage.mail_accounts import KIND, list_accounts
from storage.routes import list_routes
from storage.shares import shared_users

log = logging.getLogger("postern.identities")


def header_from(content: bytes) -> list[str] | None:
    """The addresses of the header From field; None when there is none, or several
    fields, or an address that does not parse."""
    block = header_block(content)
    values = []
    for field in header_fields(block):
        name, colon, value = field.partition(b":")
        if colon and name.strip().lower() == b"from":
            values.append(value)
    if len(values) != 1 or len(values[0]) > MAX_FROM:  # not parsed, nor kept in the cache
        return None
    found = _from_mailboxes(values[0])
    return list(found) if found else None


@lru_cache(maxsize=1024)
def _from_mailboxes(value: bytes) -> tuple[str, ...]:
    """Cached: an application sends from a handful of From values, the stdlib parser is
    pure Python, and the sender policy and the account check both ask (as
    gateway.dkim.names caches the signing domain of a From)."""
    return tuple(mailboxes(value) or ())


def _domain(address: str) -> str:
    return mailbox_key(address).rpartition("@")[2]


class Identities:
    def __init__(
        self,
        db: Database,
        *,
        enforce: bool,
        ttl: float = 2.0,
        routes: Sequence[DomainRoute] = (),
    ) -> None:
        self._db = db
        # Routes by recipient domain: the config's (fixed), then the API's (reloaded).
        self._config_routes = tuple(routes)
        self._stored_routes: tuple[DomainRoute, ...] = ()
        self.domain_routes: tuple[DomainRoute, ...] = self._config_routes
        self.enforce = enforce
        self._ttl = ttl
        self.aliases: tuple[AliasView, ...] = ()
        self.accounts: tuple[AccountView, ...] = ()  # connected accounts, for routing
        self._users: dict[str, frozenset[str]] = {}  # account address -> who may send as it
        self._domains: frozenset[str] = frozenset()
        self._addresses: frozenset[str] = frozenset()  # verified aliases, lower-case
        self._loaded_at = float("-inf")
        self._lock = asyncio.Lock()

    @property
    def config_routes(self) -> tuple[DomainRoute, ...]:
        """The config file's `[[routes]]` (they win over a stored entry for their domain)."""
        return self._config_routes

    def use_config_routes(self, routes: Sequence[DomainRoute]) -> None:
        """The config file's `[[routes]]` as read again (SIGHUP), in force at once."""
        self._config_routes = tuple(routes)
        self.domain_routes = self._config_routes + self._stored_routes

    async def reload(self) -> None:
        domains = await verified_domains(self._db)
        aliases = await list_aliases(self._db)
        self.aliases = tuple(
            AliasView(alias.id, alias.email, alias.ip_pool, alias.is_verified) for alias in aliases
        )
        self._domains = frozenset(domains)
        self._addresses = frozenset(mailbox_key(a.email) for a in aliases if a.is_verified)
        await self._reload_accounts()
        self._stored_routes = tuple(
            DomainRoute(r.recipient_domain, pool=r.pool, ip_pool=r.ip_pool, source="api", id=r.id)
            for r in await list_routes(self._db)
        )
        self.domain_routes = self._config_routes + self._stored_routes
        self._loaded_at = time.monotonic()

    async def _reload_accounts(self) -> None:
        accounts = await list_accounts(self._db)
        users: dict[str, set[str]] = {a.id: {a.user_id} if a.user_id else set() for a in accounts}
        for account_id, user_id in await shared_users(self._db, KIND):
            users.get(account_id, set()).add(user_id)
        self.accounts = tuple(AccountView(a.id, a.email) for a in accounts)
        self._users = {mailbox_key(a.email): frozenset(users[a.id]) for a in accounts}

    @property
    def stale(self) -> bool:
        """Older than ttl: refresh_if_stale reloads it (checked first, a coroutine less)."""
        return time.monotonic() - self._loaded_at > self._ttl

    async def refresh_if_stale(self) -> None:
        """Reload when older than ttl; a failed reload keeps the old copy (logged)."""
        if not self.stale:
            return
        async with self._lock:
            if time.monotonic() - self._loaded_at <= self._ttl:
                return
            try:
                await self.reload()
            except Exception as error:  # keep sending on the last good copy
                self._loaded_at = time.monotonic()
                log.warning("reloading domains and aliases failed: %s", error)

    def verified(self, address: str) -> bool:
        key = mailbox_key(address)
        return key in self._addresses or key in self._users or _domain(address) in self._domains

    def account_problem(self, submission: Submission, account: AccountView | None) -> str | None:
        """Why this caller may not send as a connected account (its From or envelope
        sender is one's address, or `account` is the one it is routed through), or None."""
        if submission.system or self._judged_user(submission.sender) is None:
            return None  # Postern's own mail; a sender no account is refused to
        # Only now the header From is parsed (the email package's parser: slow).
        addresses = [*_senders(submission), *([account.email] if account else [])]
        return self.accounts_refused(addresses, submission.sender)

    def accounts_refused(self, addresses: Iterable[str], sender: Sender | None) -> str | None:
        """Why `sender` may not send as the connected accounts among `addresses`, or None."""
        user_id = self._judged_user(sender)
        if user_id is None:
            return None
        for address in addresses:
            users = self._users.get(mailbox_key(address))
            if users is not None and user_id not in users:
                shown = address.encode("unicode_escape").decode("ascii")[:254]
                return f"{shown} is a connected account not shared with you"
        return None

    def _judged_user(self, sender: Sender | None) -> str | None:
        """The user a connected account's address may be refused to, when `sender` is one
        (a console key, a trusted listener: the policy's rule alone) and no admin, while
        some account is connected; else None."""
        if sender is None or sender.user_id is None or not self._users:
            return None
        if sender.role is not None and roles.at_least(sender.role, roles.ADMIN):
            return None
        return sender.user_id

    def sender_problem(self, submission: Submission) -> str | None:
        """Why the policy refuses this sender (a reason safe to show), or None."""
        if not self.enforce or submission.system:
            return None
        senders: list[str] = []
        if submission.mail_from:
            senders.append(submission.mail_from)
        if submission.source == "smtp":
            header = header_from(submission.content)
            if header is None:
                return "the message needs exactly one From: header field with an address"
            senders += header
        if not senders:
            return "the message has no sender address"
        return _first_unverified(senders, self)

    def envelope_problem(self, mail_from: str) -> str | None:
        """The check of the envelope sender alone, which SMTP makes at MAIL FROM so that a
        refused sender sends no body (a null sender is left to its header From)."""
        if not self.enforce or not mail_from:
            return None
        return _first_unverified((mail_from,), self)


def _senders(submission: Submission) -> list[str]:
    """Every sender address of the submission: the envelope's and the header From's."""
    found = [submission.mail_from] if submission.mail_from else []
    return found + (header_from(submission.content) or [])


def _first_unverified(senders: Iterable[str], identities: Identities) -> str | None:
    for sender in senders:
        if not identities.verified(sender):
            shown = sender.encode("unicode_escape").decode("ascii")[:254]
            return (
                f"sender {shown} is not on a verified domain, a verified alias or a "
                'connected account (add the domain, or set [policy] sender = "any")'
            )
    return None
