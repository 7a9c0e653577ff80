"""Intake: the one policy pipeline behind both doors (SMTP and HTTP).

    recipients not suppressed -> route chosen -> sender may use it -> DKIM-signed once
    (From domain with an active key) -> stored (one transaction, group-committed,
    idempotency key reserved in it) -> handed to delivery (sandbox: never) -> acknowledged

A message whose recipients' domains take different routes (`[[routes]]`, /api/v1/routes:
gateway.routing.choose_routes) is split here into one part per route: each part is a message
of its own (its own id, Return-Path token and DKIM signature, over its own recipients), and
every part is stored in the same one transaction, under one idempotency key: all or none,
never a part twice. `Accepted.parts` names them all.

It knows nothing of SMTP or HTTP: it takes a Submission and returns an Accepted, or raises
one of the Refusal exceptions below (or `Duplicate` / `KeyReused`), which each door turns
into its own reply. The sender check (policy.sender) and the aliases come from
gateway.intake.identities.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from gateway import maillog, metrics
from gateway.bounces.returnpath import ReturnPath
from gateway.dkim.cache import Signers
from gateway.dkim.errors import DkimError
from gateway.errors import Refused
from gateway.intake.identities import Identities
from gateway.message import QueuedMessage, Route, Sender, Submission
from gateway.queue import idempotency, ids
from gateway.queue.handoff import Handoff, Pools
from gateway.queue.idempotency import Duplicate, KeyReused
from gateway.queue.store import Queue
from gateway.routing import (
    AccountView,
    AliasNotVerified,
    NoActivePool,
    UnknownAccount,
    UnknownRoute,
    choose_routes,
    pinned_account,
    within_groups,
)
from storage.keys import missing_scope

log = logging.getLogger("postern.intake")

_LACKING_SEND = "this API key has no send scope"
_LACKING_SANDBOX = "sandbox sends need an API key with the sandbox scope"

__all__ = [
    "Accepted",
    "AccountNotPermitted",
    "AliasUnverified",
    "AllSuppressed",
    "Duplicate",
    "Intake",
    "KeyReused",
    "NoRoute",
    "NoSuchAccount",
    "NotPermitted",
    "UnknownAlias",
    "UnverifiedSender",
]


class Refusal(Refused):
    """Intake will not take the message; `reason` is safe to show the client."""

    reason = "refused"


class AllSuppressed(Refusal):
    reason = "every recipient is suppressed"


class UnknownAlias(Refusal):
    reason = "unknown alias_id"


class NoSuchAccount(Refusal):
    reason = "unknown account_id"


class AliasUnverified(Refusal):
    reason = "the alias named by alias_id is not verified yet"


class NoRoute(Refusal):
    """The pool or group the message asks for (alias_id, or its From's alias) has no
    active pool: refused rather than sent another way."""

    def __init__(self, route: str) -> None:
        super().__init__(route)
        self.reason = f"no active pool for {route}"


class NotPermitted(Refusal):
    """The API key may not send this way (no scope for it, or another ip_pool)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class UnverifiedSender(NotPermitted):
    """policy.sender = "verified" and the From is no verified domain or alias."""


class AccountNotPermitted(NotPermitted):
    """The caller's user may not send as this connected account (not theirs, not shared
    with them, not an admin)."""


@dataclass(frozen=True)
class Accepted:
    message: QueuedMessage  # the first part
    suppressed: tuple[str, ...] = ()
    # Resolved with the message's status after its first attempt (when asked to watch); of
    # a split message, after every part's first attempt: delivered when all were,
    # deferred while one waits, else bounced.
    attempt: asyncio.Future[str] | None = None
    # Every part, the first included, when the recipients' routes split the message.
    parts: tuple[QueuedMessage, ...] = ()

    @property
    def message_id(self) -> str:
        return self.message.id

    @property
    def message_ids(self) -> list[str]:
        return [part.id for part in self.parts] or [self.message.id]

    async def outcome(self, timeout: float) -> str | None:
        """The first attempt's status if it ends within `timeout`; None while pending (or
        when nobody asked to watch)."""
        if self.attempt is None:
            return None
        try:
            return await asyncio.wait_for(self.attempt, timeout)
        except TimeoutError:
            return None


class Intake:
    def __init__(
        self,
        queue: Queue,
        pools: Pools,
        handoff: Handoff,
        signers: Signers | None = None,
        identities: Identities | None = None,
        return_path: ReturnPath | None = None,
    ) -> None:
        self._queue = queue
        self._return_path = return_path  # [bounces] domain: the reference header
        self._pools = pools
        self._handoff = handoff
        self._signers = signers
        self._identities = identities  # aliases for routing, verified senders for policy

    def suppressed(self, addresses: Sequence[str]) -> set[str]:
        """Which of `addresses` must not be sent to."""
        return self._queue.is_suppressed(addresses)

    async def envelope_problem(self, mail_from: str, sender: Sender | None = None) -> str | None:
        """Why the sender policy refuses this envelope sender (a reason safe to show), or
        None. For a door that can refuse before the message ("" is the null sender). With
        `sender`, also a connected account's address it may not send as."""
        identities = self._identities
        if identities is None or not mail_from:
            return None
        if identities.stale:
            await identities.refresh_if_stale()
        problem = identities.envelope_problem(mail_from)
        if problem is not None:
            metrics.MESSAGES_REFUSED.labels(reason="unverified_sender").inc()
            return problem
        problem = identities.accounts_refused((mail_from,), sender)
        if problem is not None:
            metrics.MESSAGES_REFUSED.labels(reason="account_not_shared").inc()
        return problem

    async def submit(self, submission: Submission, *, watch: bool = False) -> Accepted:
        """Apply policy, store durably, hand to delivery. Returns only after the commit.

        With `watch`, `Accepted.attempt` is registered before the message reaches a
        delivery worker, so even an instant upstream answer cannot be missed. A reused
        idempotency key raises Duplicate (KeyReused for another request): found when the
        message is stored (no extra read on the way), or, when policy would refuse the
        retry, looked up first (the recipient may have been suppressed since the first
        request was sent).
        """
        if self._identities is not None and self._identities.stale:
            await self._identities.refresh_if_stale()
        try:
            blocked, parts = self._policy(submission)
        except Refusal:
            await idempotency.raise_if_seen(self._queue.db, submission)
            raise
        parts = [(await self._signed(self._referenced(part)), route) for part, route in parts]
        # The client may go while the commit is under way (aiosmtpd then cancels the
        # handler), yet the commit goes on: storing and handing over are one unit that a
        # cancellation cannot split, or a claimed message would wait for a restart.
        stored = asyncio.ensure_future(self._store(parts, watch))
        try:
            messages, attempt = await asyncio.shield(stored)
        except asyncio.CancelledError:
            stored.add_done_callback(_observed)
            raise
        split = tuple(messages) if len(messages) > 1 else ()
        return Accepted(messages[0], tuple(sorted(blocked)), attempt, split)

    async def submit_many(
        self, submissions: Sequence[Submission]
    ) -> list[Accepted | Refused | Duplicate | KeyReused]:
        """A batch: each submission through the same policy as `submit` (split per route
        as it splits), then every one that passed stored in ONE transaction
        (gateway.queue.store.enqueue_many), after which delivery is woken to take them.
        Returns, in order, each one's Accepted or what refused it (a Refusal, Duplicate,
        KeyReused); a storage failure raises (nothing of the batch was stored)."""
        if self._identities is not None:
            await self._identities.refresh_if_stale()
        results: list[Accepted | Refused | Duplicate | KeyReused | None] = []
        passed: list[tuple[int, list[tuple[Submission, Route]], set[str]]] = []
        for index, submission in enumerate(submissions):
            try:
                blocked, parts = self._policy(submission)
            except Refusal as refusal:
                try:
                    await idempotency.raise_if_seen(self._queue.db, submission)
                except (Duplicate, KeyReused) as seen:
                    results.append(seen)
                    continue
                results.append(refusal)
                continue
            parts = [(await self._signed(self._referenced(part)), route) for part, route in parts]
            passed.append((index, parts, blocked))
            results.append(None)
        if passed:
            items = [parts for _, parts, _ in passed]
            stored = asyncio.ensure_future(self._store_many(items))
            try:
                outcomes = await asyncio.shield(stored)
            except asyncio.CancelledError:
                stored.add_done_callback(_observed)
                raise
            for (index, _, blocked), outcome in zip(passed, outcomes, strict=True):
                if isinstance(outcome, Duplicate | KeyReused):
                    results[index] = outcome
                else:
                    split = tuple(outcome) if len(outcome) > 1 else ()
                    results[index] = Accepted(outcome[0], tuple(sorted(blocked)), None, split)
        return [result for result in results if result is not None]

    async def _store_many(
        self, items: Sequence[list[tuple[Submission, Route]]]
    ) -> list[list[QueuedMessage] | Duplicate | KeyReused]:
        """Store the batch in one transaction, then wake delivery (the poller claims)."""
        outcomes = await self._queue.enqueue_many(items)
        woken = False
        for parts, outcome in zip(items, outcomes, strict=True):
            if isinstance(outcome, list):
                first = parts[0][0]
                metrics.MESSAGES_RECEIVED.labels(source=first.source).inc()
                for message, (part, _) in zip(outcome, parts, strict=True):
                    maillog.received(message.id, part)
                woken = woken or not (first.sandbox or first.scheduled_at)
        if woken:
            self._handoff.wake()
        return outcomes

    async def _store(
        self, parts: list[tuple[Submission, Route]], watch: bool
    ) -> tuple[list[QueuedMessage], asyncio.Future[str] | None]:
        """Store durably (every part in one transaction), then hand to delivery: claimed
        here when a worker has room."""
        first = parts[0][0]
        sandbox = first.sandbox
        later = first.scheduled_at is not None  # the poller claims it when it is due
        claim = not sandbox and not later and self._handoff.has_room()
        messages = await self._queue.enqueue_parts(parts, claim=claim)
        metrics.MESSAGES_RECEIVED.labels(source=first.source).inc()
        for message, (part, _) in zip(messages, parts, strict=True):
            maillog.received(message.id, part)
        attempt: asyncio.Future[str] | None = None
        if watch and not sandbox and not later:
            attempts = [self._handoff.wait_for(message.id) for message in messages]
            attempt = (
                attempts[0] if len(attempts) == 1 else asyncio.ensure_future(_combined(attempts))
            )
        if claim:
            for message in messages:
                self._handoff.push(message)
        elif not sandbox and not later:
            self._handoff.wake()
        return messages, attempt

    def _policy(self, submission: Submission) -> tuple[set[str], list[tuple[Submission, Route]]]:
        """Sender, suppression, routing and the key's permissions (no I/O: all in memory).
        Returns the suppressed and the parts to store: one, or one per route of the
        recipients' domains (the first keeps the door's message id and the suppressed)."""
        identities = self._identities
        problem = identities.sender_problem(submission) if identities is not None else None
        if problem is not None:
            metrics.MESSAGES_REFUSED.labels(reason="unverified_sender").inc()
            raise UnverifiedSender(problem)
        blocked = self._queue.is_suppressed(submission.recipients)
        if blocked:
            metrics.MESSAGES_SUPPRESSED.inc(len(blocked))
            if len(blocked) == len(set(submission.recipients)):
                raise AllSuppressed()
            kept = tuple(r for r in submission.recipients if r not in blocked)
            submission = replace(submission, recipients=kept, suppressed=tuple(sorted(blocked)))
        groups = self._routes(submission)
        parts: list[tuple[Submission, Route]] = []
        for index, (route, recipients) in enumerate(groups):
            part = submission
            if len(groups) > 1:
                part = replace(
                    submission,
                    recipients=recipients,
                    message_id=submission.message_id if index == 0 else None,
                    suppressed=submission.suppressed if index == 0 else (),
                )
            account = self._account_of(route)
            problem = identities.account_problem(part, account) if identities else None
            if problem is not None:
                metrics.MESSAGES_REFUSED.labels(reason="account_not_shared").inc()
                raise AccountNotPermitted(problem)
            if account is not None:
                parts.append((part, self._account_permitted(part, route)))
            else:
                parts.append((part, self._permitted(part, route)))
        return blocked, parts

    def _routes(self, submission: Submission) -> list[tuple[Route, tuple[str, ...]]]:
        """The routes of the message and the recipients of each (gateway.routing); a
        sandbox message is never split (it goes nowhere)."""
        identities = self._identities
        by_domain = identities.domain_routes if identities and not submission.sandbox else ()
        try:
            return choose_routes(
                submission.alias_id,
                submission.mail_from,
                submission.recipients,
                self._pools.settings(),
                identities.aliases if identities is not None else (),
                account_id=submission.account_id,
                accounts=identities.accounts if identities is not None else (),
                domain_routes=by_domain,
            )
        except UnknownAccount:
            metrics.MESSAGES_REFUSED.labels(reason="unknown_account").inc()
            raise NoSuchAccount() from None
        except UnknownRoute:
            metrics.MESSAGES_REFUSED.labels(reason="unknown_alias").inc()
            raise UnknownAlias() from None
        except AliasNotVerified:
            metrics.MESSAGES_REFUSED.labels(reason="alias_not_verified").inc()
            raise AliasUnverified() from None
        except NoActivePool as refused:
            metrics.MESSAGES_REFUSED.labels(reason="no_route").inc()
            raise NoRoute(str(refused)) from None

    def _account_of(self, route: Route) -> AccountView | None:
        """The connected account the route is pinned to, or None."""
        identities = self._identities
        return pinned_account(route, identities.accounts) if identities is not None else None

    def _referenced(self, submission: Submission) -> Submission:
        """With a bounce domain, the message gets its id now and an `X-Postern-Ref` field
        naming it (gateway.bounces.returnpath), before it is signed and stored: what
        delivery relays is the stored, signed bytes, so the field is added once, covered by
        no re-signing, and found in a report's returned headers even when a provider
        rewrote the return path. Delivery cannot add it: retries relay the stored bytes,
        and a field added after signing would be a second copy of work per attempt."""
        return_path = self._return_path
        if return_path is None or not return_path.enabled or submission.sandbox:
            return submission
        message_id = submission.message_id or ids.new_id_for(submission.sandbox)
        header = return_path.header(message_id)
        content = header + submission.content
        return replace(submission, message_id=message_id, content=content)

    async def _signed(self, submission: Submission) -> Submission:
        """Sign once, here, before storing: retries relay the stored, signed bytes."""
        if self._signers is None:
            return submission
        signer = await self._signers.for_message(submission.content)
        if signer is None:
            return submission
        try:
            return replace(submission, content=await signer.signed_async(submission.content))
        except DkimError as error:  # e.g. no From field: relay unsigned, say why
            log.warning("not DKIM-signing a message: %s", error)
            metrics.MESSAGES_REFUSED.labels(reason="dkim_unsigned").inc()
            return submission

    def _permitted(self, submission: Submission, route: Route) -> Route:
        """The route, if the submission's API key may use it (NotPermitted otherwise).

        A key limited to some ip_pools (`send:transactional`) that named no alias_id is
        sent through its own group rather than refused.
        """
        sender = submission.sender
        if sender is None:
            return route
        if missing_scope(sender, submission.sandbox) is not None:
            raise NotPermitted(_LACKING_SANDBOX if submission.sandbox else _LACKING_SEND)
        if submission.sandbox:
            return route
        allowed = sender.ip_pools
        if allowed is None:
            return route
        pools = self._pools.settings()
        kept = within_groups(route, allowed, pools, named=bool(submission.alias_id))
        if kept is None:
            names = ", ".join(sorted(allowed)) or "none"
            raise NotPermitted(f"this API key may only send through ip_pool {names}")
        return kept

    def _account_permitted(self, submission: Submission, route: Route) -> Route:
        """A route pinned to a connected account, if the key may send: a key limited to some
        ip_pools is refused (an account is in no group, and mail from a mailbox never leaves
        through another server)."""
        sender = submission.sender
        if sender is None:
            return route
        if missing_scope(sender, submission.sandbox) is not None:
            raise NotPermitted(_LACKING_SANDBOX if submission.sandbox else _LACKING_SEND)
        if sender.ip_pools is not None and not submission.sandbox:
            raise NotPermitted("this API key may only send through ip_pools, not an account")
        return route


async def _combined(attempts: Sequence[asyncio.Future[str]]) -> str:
    """A split message's status after every part's first attempt: delivered when every part
    was, deferred while any part waits, else bounced (final, someone refused)."""
    statuses = await asyncio.gather(*attempts)
    if all(status == "delivered" for status in statuses):
        return "delivered"
    if any(status not in ("delivered", "bounced") for status in statuses):
        return "deferred"
    return "bounced"


def _observed(stored: asyncio.Future[Any]) -> None:
    """Collect the outcome of a store its caller stopped waiting for (the client went
    without a reply, so a refusal or failure is only worth a log line)."""
    if not stored.cancelled() and stored.exception() is not None:
        log.info("message not stored after its client went: %r", stored.exception())
