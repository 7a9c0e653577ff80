"""The scheduled DNSBL check: every sending IP and domain against the configured lists.

    subjects    `[blocklists] sending_ips`, the verified sender domains, the domains of the
                connected accounts' addresses (what mail leaves as)
    a round     lease the check in storage (one node of many; none while the last round is
                younger than `interval`) --> verify each list --> ask each list about each
                subject (bounded concurrency, each query bounded by `timeout`) --> store one
                verdict per subject --> mark the round completed, give the lease back

One query's outcome is a value, never an exception (`Listed`, `NotListed`, `QueryError`):
NXDOMAIN or NODATA is "not listed"; an A answer in 127.0.0.0/8 is a listing with its code
and the list's meaning for it (and the TXT the list gives, if any); a code the list documents
as an error (Spamhaus's 127.255.255.252/254/255, and any answer in 127.255.255.0/24, which
Spamhaus reserves for errors) or an answer outside 127/8 (a resolver that invents answers) is
an error; SERVFAIL or a timeout too. A list is verified at the start of each round, and at a
node's start (RFC 5782 §5): its test entry must be listed and its clean entry not; a list
that fails is logged, reported in the round's `verification`, not asked, and left out of the
verdicts: one dead list (Barracuda asked through an unregistered resolver) says nothing of
any subject, neither "clean" nor "unknown".

A subject's verdict, from the verified lists that take it: `listed` when any lists it, else
`unknown` when one could not answer (a query error) or none takes it, else `clean`. A
Spamhaus DQS key is part of the query name: it is replaced by `<dqs-key>` in every reason
logged or stored.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from gateway.addresses import CONTROL
from gateway.config import BlocklistsConfig
from gateway.dns import Addresses, NoRecords, NoSuchDomain, Resolver, Temporary, TxtRecords
from gateway.metrics import BLOCKLIST_COMPLETED, BLOCKLIST_SUBJECTS
from gateway.reputation.lists import LISTS, Blocklist
from storage import blocklists as stored
from storage.blocklists import CLEAN, LISTED, UNKNOWN, Verdict
from storage.db import Database
from storage.domains import verified_domains
from storage.mail_accounts import list_accounts

log = logging.getLogger("postern.blocklists")
_CONTROL = re.compile(f"[{CONTROL}]")  # a list's TXT is stored and shown without them
DQS_MASK = "<dqs-key>"
WATCH = 300.0  # at most this long between two looks at whether a round is due


@dataclass(frozen=True)
class Listed:
    code: str  # the first code (those the list's table names first, then by address)
    meaning: str
    text: str = ""  # the list's TXT for the entry (a reason, a removal link)
    more: tuple[tuple[str, str], ...] = ()  # further codes answered, with their meanings

    @property
    def codes(self) -> tuple[tuple[str, str], ...]:
        return ((self.code, self.meaning), *self.more)


@dataclass(frozen=True)
class NotListed:
    pass


@dataclass(frozen=True)
class QueryError:
    reason: str


QueryResult = Listed | NotListed | QueryError


@dataclass(frozen=True)
class Settings:
    node: str
    interval: float = 6 * 3600.0
    timeout: float = 5.0  # one query
    concurrency: int = 8
    sending_ips: tuple[str, ...] = ()
    lists: tuple[str, ...] = tuple(LISTS)
    spamhaus_dqs_key: str = ""


@dataclass(frozen=True)
class Subject:
    name: str  # an IP address (compressed form) or a lower-case domain
    kind: str  # ip | domain


@dataclass(frozen=True)
class RoundReport:
    """What one round did (the CLI prints it)."""

    ran: bool  # False: not due, or another node holds the lease
    verification: dict[str, str | None]  # list -> None when verified, else why not
    verdicts: tuple[Verdict, ...] = ()
    newly_listed: tuple[Verdict, ...] = ()
    completed_at: float | None = None
    subjects: int = 0  # how many there were to check (0: nothing asked at all)


def query_name(subject: str, blocklist: Blocklist, dqs_key: str = "") -> str | None:
    """The name to ask `blocklist` about `subject`; None when the list does not take it (an
    IPv6 address for an IPv4-only list, a domain for an IP list and the reverse)."""
    zone = f"{dqs_key}.{blocklist.dqs_zone}" if dqs_key and blocklist.dqs_zone else blocklist.zone
    try:
        address = ipaddress.ip_address(subject)
    except ValueError:
        if blocklist.kind != "domain":
            return None
        return f"{subject.strip().rstrip('.').lower()}.{zone}"
    if blocklist.kind != "ip":
        return None
    if address.version == 4:
        return ".".join(reversed(str(address).split("."))) + f".{zone}"
    if not blocklist.ipv6:
        return None
    nibbles = address.exploded.replace(":", "")
    return ".".join(reversed(nibbles)) + f".{zone}"


def entry_name(entry: str, blocklist: Blocklist, dqs_key: str) -> str:
    zone = f"{dqs_key}.{blocklist.dqs_zone}" if dqs_key and blocklist.dqs_zone else blocklist.zone
    if blocklist.kind == "ip":
        return ".".join(reversed(entry.split("."))) + f".{zone}"
    return f"{entry}.{zone}"


class Dnsbl:
    """Queries lists through one resolver (`[dns] nameservers`), uncached: a list's answer
    is read fresh each round."""

    def __init__(self, resolver: Resolver, dqs_key: str = "") -> None:
        self._resolver = resolver
        self._key = dqs_key

    def _masked(self, text: str) -> str:
        return text.replace(self._key, DQS_MASK) if self._key else text

    async def query(self, subject: str, blocklist: Blocklist) -> QueryResult | None:
        """`blocklist`'s answer about `subject`; None when the list does not take it."""
        name = query_name(subject, blocklist, self._key)
        if name is None:
            return None
        return await self._ask(name, blocklist)

    async def _ask(self, name: str, blocklist: Blocklist, with_text: bool = True) -> QueryResult:
        answer = await self._resolver.a(name)
        if isinstance(answer, NoSuchDomain | NoRecords):
            return NotListed()
        if isinstance(answer, Temporary):
            return QueryError(self._masked(answer.reason))
        assert isinstance(answer, Addresses)
        for code in answer.addresses:
            error = blocklist.error(code)
            if error is not None:
                return QueryError(f"{blocklist.name} answered {code}: {error}")
        codes = [code for code in answer.addresses if _in_loopback_net(code)]
        if len(codes) != len(answer.addresses):
            odd = next(code for code in answer.addresses if code not in codes)
            return QueryError(
                f"{blocklist.name} answered {odd}, outside 127.0.0.0/8: "
                "the resolver invents answers (not a blocklist's reply)"
            )
        ordered = sorted(
            set(codes), key=lambda c: (c not in blocklist.codes, ipaddress.ip_address(c))
        )
        more = tuple((other, blocklist.meaning(other)) for other in ordered[1:])
        code = ordered[0]
        text = ""
        if with_text:
            txt = await self._resolver.txt(name)
            if isinstance(txt, TxtRecords) and txt.values:
                text = _CONTROL.sub(" ", self._masked(txt.values[0]))[:300]
        return Listed(code, blocklist.meaning(code), text, more)

    async def verify(self, blocklist: Blocklist) -> str | None:
        """None when `blocklist` lists its test entry and not its clean one (RFC 5782 §5),
        else why it cannot be trusted."""
        listed, clean = await asyncio.gather(
            self._ask(entry_name(blocklist.test_listed, blocklist, self._key), blocklist, False),
            self._ask(entry_name(blocklist.test_clean, blocklist, self._key), blocklist, False),
        )
        if isinstance(listed, QueryError):
            return f"test entry {blocklist.test_listed}: {listed.reason}"
        if not isinstance(listed, Listed):
            return f"test entry {blocklist.test_listed} is not listed (the list does not answer)"
        if isinstance(clean, QueryError):
            return f"clean entry {blocklist.test_clean}: {clean.reason}"
        if isinstance(clean, Listed):
            return (
                f"clean entry {blocklist.test_clean} is listed ({clean.code}): the list "
                "answers everything"
            )
        return None


def _in_loopback_net(code: str) -> bool:
    try:
        return ipaddress.ip_address(code) in ipaddress.ip_network("127.0.0.0/8")
    except ValueError:
        return False


async def subjects(db: Database, sending_ips: Sequence[str]) -> list[Subject]:
    """The sending IPs configured, the verified sender domains, and the connected accounts'
    email domains; each once."""
    found = [Subject(str(ipaddress.ip_address(ip)), "ip") for ip in sending_ips]
    domains = set(await verified_domains(db))
    domains.update(
        account.email.rpartition("@")[2] for account in await list_accounts(db) if account.email
    )
    found += [Subject(domain.lower(), "domain") for domain in sorted(domains) if domain]
    return list(dict.fromkeys(found))


class BlocklistCheck:
    """The scheduled check on one node: `run_once` from a loop, `check_now` from the CLI."""

    def __init__(
        self,
        db: Database,
        resolver: Resolver,
        settings: Settings,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._db = db
        self.settings = settings
        self.lists = tuple(LISTS[name] for name in settings.lists)
        self.dnsbl = Dnsbl(resolver, settings.spamhaus_dqs_key)
        self._clock = clock
        self._verified = False  # this process has verified the lists (at its first look)

    @classmethod
    def build(
        cls, db: Database, config: BlocklistsConfig, nameservers: Sequence[str], node: str
    ) -> BlocklistCheck:
        """The check `[blocklists]` describes, asking through `[dns] nameservers`, uncached."""
        settings = Settings(
            node, config.interval, config.timeout, config.concurrency, config.sending_ips,
            config.lists, config.spamhaus_dqs_key,
        )  # fmt: skip
        timeout = config.timeout
        resolver = Resolver(nameservers, timeout=timeout, lifetime=timeout, cache_size=0)
        return cls(db, resolver, settings)

    @property
    def watch(self) -> float:
        """How often the loop looks whether a round is due."""
        return min(WATCH, self.settings.interval)

    async def release(self) -> None:
        """Give back the lease this node held when it last stopped (start-up)."""
        node = self.settings.node
        await self._db.transaction(lambda conn: stored.release(conn, node))

    async def run_once(self) -> None:
        """One look from the loop: a round if one is due and this node wins the lease. The
        first look of a process verifies the lists even when no round is due (a node
        restarted within the interval), so that a broken list is reported at start."""
        report = await self.round(force=False)
        if not report.ran and report.subjects and not self._verified:
            await self.verify()
        await self.count()

    async def count(self) -> None:
        """The gauges from storage (every node: whichever ran the round)."""
        checks = await stored.all_checks(self._db)
        for status in stored.STATUSES:
            BLOCKLIST_SUBJECTS.labels(status).set(sum(c.status == status for c in checks))
        state = await stored.run_state(self._db)
        BLOCKLIST_COMPLETED.set((state.completed_at or 0.0) if state else 0.0)

    async def check_now(self) -> RoundReport:
        """A round now, however recent the last one (unless another node runs one)."""
        return await self.round(force=True)

    def _lease(self, pairs: int) -> float:
        # Each query and its TXT take at most one timeout each; verification two more.
        waves = math.ceil(pairs / self.settings.concurrency) if pairs else 0
        return self.settings.timeout * (2 * waves + 4) + 60.0

    async def round(self, force: bool) -> RoundReport:
        found = await subjects(self._db, self.settings.sending_ips)
        if not found:
            return RoundReport(False, {})  # nothing to ask about: no query leaves
        pairs = len(found) * len(self.lists)
        node, now = self.settings.node, self._clock()
        lease = self._lease(pairs)
        due_before = math.inf if force else now - self.settings.interval
        won = await self._db.transaction(
            lambda conn: stored.claim(conn, node, now, now + lease, due_before)
        )
        if not won:
            return RoundReport(False, {}, subjects=len(found))
        try:
            async with asyncio.timeout(lease - 30.0):
                report = await self._round(found)
        except BaseException:
            await self._db.transaction(lambda conn: stored.release(conn, node))
            raise
        return report

    async def _round(self, found: Sequence[Subject]) -> RoundReport:
        verification = await self.verify()
        verdicts = await self.check(found, verification)
        completed = self._clock()
        newly = await stored.record(self._db, verdicts, completed)
        node = self.settings.node
        kept = await self._db.transaction(lambda conn: stored.finish(conn, node, completed))
        if not kept:
            log.warning("blocklist check: the lease lapsed during the round (another node ran)")
        for verdict in newly:
            names = ", ".join(f"{x['list']} ({x['code']})" for x in verdict.listings)
            log.warning(
                "blocklist: %s %s is now listed on %s", verdict.kind, verdict.subject, names
            )
        counts = {status: sum(v.status == status for v in verdicts) for status in stored.STATUSES}
        log.info(
            "blocklist check: %d subjects, %d listed, %d unknown, %d clean",
            len(verdicts), counts[LISTED], counts[UNKNOWN], counts[CLEAN],
        )  # fmt: skip
        return RoundReport(True, verification, tuple(verdicts), tuple(newly), completed, len(found))

    async def verify(self) -> dict[str, str | None]:
        """Each list's verification: None when it may be trusted, else why not (logged)."""
        self._verified = True
        results = await asyncio.gather(*(self.dnsbl.verify(blocklist) for blocklist in self.lists))
        pairs = zip(self.lists, results, strict=True)
        verification = {blocklist.name: why for blocklist, why in pairs}
        for name, why in verification.items():
            if why is not None:
                log.warning("blocklist %s failed verification, not trusted: %s", name, why)
        return verification

    async def check(
        self, found: Sequence[Subject], verification: dict[str, str | None]
    ) -> list[Verdict]:
        """Ask every verified list about every subject it takes; one verdict per subject."""
        gate = asyncio.Semaphore(self.settings.concurrency)

        async def ask(subject: Subject, blocklist: Blocklist) -> QueryResult | None:
            if verification.get(blocklist.name) is not None:
                return None  # not verified: left out (the round reports it, the log too)
            async with gate:
                return await self.dnsbl.query(subject.name, blocklist)

        jobs = [(subject, blocklist) for subject in found for blocklist in self.lists]
        answers = await asyncio.gather(*(ask(subject, blocklist) for subject, blocklist in jobs))
        per_subject: dict[Subject, list[tuple[Blocklist, QueryResult]]] = {s: [] for s in found}
        for (subject, blocklist), answer in zip(jobs, answers, strict=True):
            if answer is not None:
                per_subject[subject].append((blocklist, answer))
        return [_verdict(subject, results) for subject, results in per_subject.items()]


def _verdict(subject: Subject, results: Sequence[tuple[Blocklist, QueryResult]]) -> Verdict:
    listings = tuple(
        {"list": blocklist.name, "code": code, "meaning": meaning}
        | ({"text": answer.text} if answer.text else {})
        for blocklist, answer in results
        if isinstance(answer, Listed)
        for code, meaning in answer.codes
    )  # one per code: ZEN may answer SBL and XBL at once
    errors = tuple(
        {"list": blocklist.name, "reason": answer.reason}
        for blocklist, answer in results
        if isinstance(answer, QueryError)
    )
    if not results:
        errors = ({"list": "-", "reason": "no verified list of those configured takes it"},)
    if listings:
        status = LISTED
    elif errors:
        status = UNKNOWN  # no list could answer about it is no "clean"
    else:
        status = CLEAN
    return Verdict(subject.name, subject.kind, status, listings, errors)
