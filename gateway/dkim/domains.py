"""Sender domains: the DNS records to publish for one, and checking that they are there.

    register(domain) -> DKIM key (storage.dkim_keys; the active key signs)
                     -> records: DKIM TXT at <selector>._domainkey.<domain>, SPF TXT at the
                        domain, DMARC TXT at _dmarc.<domain>
    verify(domain)   -> each record looked up through gateway.dns.Resolver ([dns]
                        nameservers, no cache) -> verified when DKIM and SPF pass

DKIM passes when a TXT record at the selector's name carries the key's public key (p=),
SPF when the domain has exactly one `v=spf1` record (RFC 7208 §4.5: two are an error; its
mechanisms are the operator's, who must add each upstream provider's include:), DMARC
when `_dmarc.<domain>` has a `v=DMARC1` record. DMARC is reported but not required.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from gateway.dkim.keys import dns_record, generate_key, record_name
from gateway.dkim.names import default_selector
from storage import dkim_keys, domains
from storage.db import Database
from storage.dkim_keys import Cipher, DkimKeyRecord
from storage.domains import DomainRecord

if TYPE_CHECKING:  # dnspython (~35 ms of imports) only where records are looked up
    from gateway.dns import Resolver


@dataclass(frozen=True)
class Record:
    """One DNS record to publish."""

    purpose: str  # dkim | spf | dmarc
    type: str
    name: str
    value: str
    required: bool


@dataclass(frozen=True)
class Check:
    """What DNS says about one record."""

    purpose: str
    name: str
    status: str  # verified | missing | mismatch | temporary_error
    required: bool
    found: tuple[str, ...] = ()
    detail: str = ""

    @property
    def passed(self) -> bool:
        return self.status == "verified"

    def as_json(self) -> dict[str, object]:
        return {**asdict(self), "found": list(self.found)}


def records(domain: str, key: DkimKeyRecord | None, hostname: str) -> list[Record]:
    found: list[Record] = []
    if key is not None:
        record = dns_record(key.selector, domain, key.algorithm, key.public_key)
        found.append(Record("dkim", "TXT", record.name, record.value, True))
    found.append(Record("spf", "TXT", domain, f"v=spf1 a:{hostname} ~all", True))
    found.append(Record("dmarc", "TXT", f"_dmarc.{domain}", "v=DMARC1; p=none", False))
    return found


async def signing_key(db: Database, domain: str) -> DkimKeyRecord | None:
    """The key whose record to publish: the active one, else the newest pending one."""
    keys = await dkim_keys.list_keys(db, domain)
    for status in ("active", "pending"):
        matching = [key for key in keys if key.status == status]
        if matching:
            return max(matching, key=lambda key: key.created_at)
    return None


async def register(
    db: Database,
    box: Cipher,
    domain: str,
    *,
    verified: bool,
    algorithm: str = "rsa",
    created_by: str | None = None,
) -> tuple[DomainRecord, DkimKeyRecord | None]:
    """Add a domain for user `created_by` (DomainExists when it is there) and make sure it
    has a DKIM key: a key made before (e.g. by `postern dkim generate`) is kept, else one is
    generated."""
    record = await domains.add_domain(db, domain, verified=verified, created_by=created_by)
    key = await signing_key(db, domain)
    if key is None:
        pair = await asyncio.to_thread(generate_key, algorithm)
        taken = [k.selector for k in await dkim_keys.list_keys(db, domain)]
        key = await dkim_keys.add_key(
            db, box, domain=domain, selector=default_selector(taken),
            algorithm=pair.algorithm, private_pem=pair.private_pem, public_key=pair.public_key,
        )  # fmt: skip
    return record, key


def _tags(value: str) -> dict[str, str]:
    tags = {}
    for part in value.split(";"):
        name, eq, tag_value = part.partition("=")
        if eq:
            tags[name.strip().lower()] = "".join(tag_value.split())
    return tags


def _values(answer: object) -> tuple[str, ...] | str:
    """TXT values, or the status the answer amounts to."""
    from gateway.dns import NoRecords, NoSuchDomain, Temporary, TxtRecords

    if isinstance(answer, TxtRecords):
        return answer.values
    if isinstance(answer, Temporary):
        return "temporary_error"
    if isinstance(answer, NoRecords | NoSuchDomain):
        return ()
    return "temporary_error"


def check_dkim(name: str, answer: object, public_key: str) -> Check:
    values = _values(answer)
    if isinstance(values, str):
        return Check("dkim", name, values, True, detail=getattr(answer, "reason", ""))
    keys = [_tags(value).get("p") for value in values if "p=" in value]
    if not keys:
        return Check("dkim", name, "missing", True, values)
    if public_key in keys:
        return Check("dkim", name, "verified", True, values)
    return Check("dkim", name, "mismatch", True, values, "p= is not this domain's DKIM key")


def _starts(value: str, tag: str) -> bool:
    head = value.strip().lower()
    return head == tag or head.startswith(tag + " ") or head.startswith(tag + ";")


def check_spf(name: str, answer: object) -> Check:
    values = _values(answer)
    if isinstance(values, str):
        return Check("spf", name, values, True, detail=getattr(answer, "reason", ""))
    spf = tuple(value for value in values if _starts(value, "v=spf1"))
    if not spf:
        return Check("spf", name, "missing", True, values)
    if len(spf) > 1:
        return Check("spf", name, "mismatch", True, spf, "more than one SPF record (RFC 7208)")
    return Check("spf", name, "verified", True, spf)


def check_dmarc(name: str, answer: object) -> Check:
    values = _values(answer)
    if isinstance(values, str):
        return Check("dmarc", name, values, False, detail=getattr(answer, "reason", ""))
    dmarc = tuple(value for value in values if _starts(value, "v=dmarc1"))
    return Check("dmarc", name, "verified" if dmarc else "missing", False, dmarc or values)


async def verify(
    db: Database, resolver: Resolver, record: DomainRecord
) -> tuple[DomainRecord, list[Check]]:
    """Look the records up; a pass (DKIM and SPF) verifies the domain."""
    checks = await check_records(db, resolver, record.domain)
    passed = all(check.passed for check in checks if check.required)
    updated = await domains.record_check(db, record.id, passed)
    return (updated or record), checks


async def check_records(db: Database, resolver: Resolver, domain: str) -> list[Check]:
    """What DNS says of the domain's DKIM (its signing key's record), SPF and DMARC
    records, changing nothing (the reputation's domain setup reads it too)."""
    key = await signing_key(db, domain)
    dmarc_name = f"_dmarc.{domain}"
    lookups = [resolver.txt(domain), resolver.txt(dmarc_name)]
    dkim_name = record_name(key.selector, domain) if key is not None else ""
    if key is not None:
        lookups.append(resolver.txt(dkim_name))
    answers = await asyncio.gather(*lookups)
    checks = []
    if key is not None:
        checks.append(check_dkim(dkim_name, answers[2], key.public_key))
    else:
        checks.append(Check("dkim", "", "missing", True, detail="the domain has no DKIM key"))
    checks += [check_spf(domain, answers[0]), check_dmarc(dmarc_name, answers[1])]
    return checks
