"""Intake: the one policy pipeline behind both doors (SMTP and HTTP).

    recipients not suppressed -> route chosen -> sender may use it -> DKIM-signed once
    (From domain with an active key) -> stored (one transaction, group-committed,
    idempotency key reserved in it) -> handed to delivery (sandbox: never) -> acknowledged

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
    choose_route,
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
    message: QueuedMessage
    suppressed: tuple[str, ...] = ()
    # Resolved with the message's status after its first attempt (when asked to watch).
    attempt: asyncio.Future[str] | None = None

    @property
    def message_id(self) -> str:
        return self.message.id

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

    async def suppressed(self, addresses: Sequence[str]) -> set[str]:
        """Which of `addresses` must not be sent to."""
        return await self._queue.is_suppressed(addresses)

    async def envelope_problem(self, mail_from: str, sender: Sender | None = None) -> str | None:
        """Why the sender policy refuses this envelope sender (a reason safe to show), or
        None. For a door that can refuse before the message ("" is the null sender). With
        `sender`, also a connected account's address it may not send as."""
        identities = self._identities
        if identities is None or not mail_from:
            return None
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
        if self._identities is not None:
            await self._identities.refresh_if_stale()
        try:
            blocked, submission, route = self._policy(submission)
        except Refusal:
            await idempotency.raise_if_seen(self._queue.db, submission)
            raise
        submission = await self._signed(self._referenced(submission))
        # The client may go while the commit is under way (aiosmtpd then cancels the
        # handler), yet the commit goes on: storing and handing over are one unit that a
        # cancellation cannot split, or a claimed message would wait for a restart.
        stored = asyncio.ensure_future(self._store(submission, route, watch))
        try:
            message, attempt = await asyncio.shield(stored)
        except asyncio.CancelledError:
            stored.add_done_callback(_observed)
            raise
        return Accepted(message, tuple(sorted(blocked)), attempt)

    async def submit_many(
        self, submissions: Sequence[Submission]
    ) -> list[Accepted | Refused | Duplicate | KeyReused]:
        """A batch: each submission through the same policy as `submit`, then every one that
        passed stored in ONE transaction (gateway.queue.store.enqueue_many), after which
        delivery is woken to take them. Returns, in order, each one's Accepted or what
        refused it (a Refusal, Duplicate, KeyReused); a storage failure raises (nothing of
        the batch was stored)."""
        if self._identities is not None:
            await self._identities.refresh_if_stale()
        results: list[Accepted | Refused | Duplicate | KeyReused | None] = []
        passed: list[tuple[int, Submission, Route, set[str]]] = []
        for index, submission in enumerate(submissions):
            try:
                blocked, checked, route = self._policy(submission)
            except Refusal as refusal:
                try:
                    await idempotency.raise_if_seen(self._queue.db, submission)
                except (Duplicate, KeyReused) as seen:
                    results.append(seen)
                    continue
                results.append(refusal)
                continue
            checked = await self._signed(self._referenced(checked))
            passed.append((index, checked, route, blocked))
            results.append(None)
        if passed:
            stored = asyncio.ensure_future(self._store_many(passed))
            try:
                outcomes = await asyncio.shield(stored)
            except asyncio.CancelledError:
                stored.add_done_callback(_observed)
                raise
            for (index, _, _, blocked), outcome in zip(passed, outcomes, strict=True):
                if isinstance(outcome, Duplicate | KeyReused):
                    results[index] = outcome
                else:
                    results[index] = Accepted(outcome, tuple(sorted(blocked)))
        return [result for result in results if result is not None]

    async def _store_many(
        self, passed: Sequence[tuple[int, Submission, Route, set[str]]]
    ) -> list[QueuedMessage | Duplicate | KeyReused]:
        """Store the batch in one transaction, then wake delivery (the poller claims)."""
        items = [(submission, route) for _, submission, route, _ in passed]
        outcomes = await self._queue.enqueue_many(items)
        woken = False
        for (submission, _), outcome in zip(items, outcomes, strict=True):
            if isinstance(outcome, QueuedMessage):
                metrics.MESSAGES_RECEIVED.labels(source=submission.source).inc()
                maillog.received(outcome.id, submission)
                woken = woken or not (submission.sandbox or submission.scheduled_at)
        if woken:
            self._handoff.wake()
        return outcomes

    async def _store(
        self, submission: Submission, route: Route, watch: bool
    ) -> tuple[QueuedMessage, asyncio.Future[str] | None]:
        """Store durably, then hand to delivery: claimed here when a worker has room."""
        sandbox = submission.sandbox
        later = submission.scheduled_at is not None  # the poller claims it when it is due
        claim = not sandbox and not later and self._handoff.has_room()
        message = await self._queue.enqueue(submission, route, claim=claim)
        metrics.MESSAGES_RECEIVED.labels(source=submission.source).inc()
        maillog.received(message.id, submission)
        watched = watch and not sandbox and not later
        attempt = self._handoff.wait_for(message.id) if watched else None
        if claim:
            self._handoff.push(message)
        elif not sandbox and not later:
            self._handoff.wake()
        return message, attempt

    def _policy(self, submission: Submission) -> tuple[set[str], Submission, Route]:
        """Sender, suppression, routing and the key's permissions (no I/O: all in memory)."""
        identities = self._identities
        problem = identities.sender_problem(submission) if identities is not None else None
        if problem is not None:
            metrics.MESSAGES_REFUSED.labels(reason="unverified_sender").inc()
            raise UnverifiedSender(problem)
        blocked = self._queue.suppressions.suppressed(submission.recipients)
        if blocked:
            metrics.MESSAGES_SUPPRESSED.inc(len(blocked))
            if len(blocked) == len(set(submission.recipients)):
                raise AllSuppressed()
            kept = tuple(r for r in submission.recipients if r not in blocked)
            submission = replace(submission, recipients=kept, suppressed=tuple(sorted(blocked)))
        route = self._route(submission)
        account = self._account_of(route)
        problem = identities.account_problem(submission, account) if identities else None
        if problem is not None:
            metrics.MESSAGES_REFUSED.labels(reason="account_not_shared").inc()
            raise AccountNotPermitted(problem)
        if account is not None:
            return blocked, submission, self._account_permitted(submission, route)
        return blocked, submission, self._permitted(submission, route)

    def _route(self, submission: Submission) -> Route:
        identities = self._identities
        try:
            return choose_route(
                submission.alias_id,
                submission.mail_from,
                self._pools.settings(),
                identities.aliases if identities is not None else (),
                account_id=submission.account_id,
                accounts=identities.accounts if identities is not None else (),
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


def _observed(stored: asyncio.Future[Any]) -> None:
    """Collect the outcome of a store its caller stopped waiting for (the client went
    without a reply, so a refusal or failure is only worth a log line)."""
    if not stored.cancelled() and stored.exception() is not None:
        log.info("message not stored after its client went: %r", stored.exception())
