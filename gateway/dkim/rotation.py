"""Rotating a domain's DKIM key with no gap in signing, the way M3AAWG's DKIM key rotation
practice describes it:

    start     a new key is made `pending` beside the active one (one rotation at a time);
              its TXT record is published at the DNS provider
    activate  only once DNS answers that record with this key: the new key signs from now
              on, the old one is `retired` (keep its record published a few days: mail in
              flight and receivers that check late still verify)
    cancel    a pending key is retired instead (a rotation abandoned)

Activating before the record is published would sign mail receivers cannot verify, so the
check is not optional here (the console's `postern dkim activate` is the way around it).
The signer cache (gateway.dkim.cache) picks an activated key up within its refresh period.
"""

from __future__ import annotations

import asyncio

from gateway.dkim.domains import Check, check_dkim
from gateway.dkim.errors import DkimError
from gateway.dkim.keys import generate_key, record_name
from gateway.dkim.names import default_selector
from gateway.dns import Resolver
from storage import dkim_keys
from storage.db import Database
from storage.dkim_keys import Cipher, DkimKeyRecord


class RotationRefused(DkimError):
    """A rotation step that cannot be taken in the key's present state."""


class RotationInProgress(RotationRefused):
    """The domain has a pending key already: activate or cancel it first."""


class RecordNotPublished(RotationRefused):
    """DNS does not answer the pending key's record (yet): `check` says what it found."""

    def __init__(self, message: str, check: Check) -> None:
        super().__init__(message)
        self.check = check


class NotPending(RotationRefused):
    """Only a pending key can be activated or cancelled."""


async def start(db: Database, box: Cipher, domain: str, algorithm: str = "rsa") -> DkimKeyRecord:
    """A new pending key for `domain` (normalised), beside its active one."""
    keys = await dkim_keys.list_keys(db, domain)
    pending = [key.selector for key in keys if key.status == "pending"]
    if pending:
        raise RotationInProgress(
            f"{domain} has a rotation in progress (selector {pending[0]!r}): "
            "activate or cancel it first"
        )
    pair = await asyncio.to_thread(generate_key, algorithm)
    try:  # pending even when the domain signs with no key: DNS has not seen this one
        return await dkim_keys.add_key(
            db, box, domain=domain, selector=default_selector([key.selector for key in keys]),
            algorithm=pair.algorithm, private_pem=pair.private_pem, public_key=pair.public_key,
            activate=False,
        )  # fmt: skip
    except dkim_keys.DkimKeyExists:  # another request started one at the same moment
        raise RotationInProgress(f"{domain} has a rotation in progress") from None


async def _pending(db: Database, domain: str, selector: str) -> DkimKeyRecord:
    key = await dkim_keys.get_key(db, domain, selector)
    if key.status != "pending":
        raise NotPending(f"the key {selector!r} of {domain} is {key.status}, not pending")
    return key


async def activate(
    db: Database, resolver: Resolver, domain: str, selector: str
) -> tuple[DkimKeyRecord, Check]:
    """The pending key made the signing key, once DNS answers its record with its public
    key (RecordNotPublished otherwise: nothing changes)."""
    key = await _pending(db, domain, selector)
    name = record_name(selector, domain)
    check = check_dkim(name, await resolver.txt(name), key.public_key)
    if not check.passed:
        raise RecordNotPublished(
            f"the DKIM record {name} does not carry this key yet ({check.status}): "
            "publish it, wait for DNS, then activate",
            check,
        )
    try:  # still pending: a cancel during the lookup wins
        return await dkim_keys.activate_key(db, domain, selector, only_from="pending"), check
    except dkim_keys.DkimKeyMoved as moved:
        raise NotPending(str(moved)) from None


async def cancel(db: Database, domain: str, selector: str) -> DkimKeyRecord:
    """The pending key retired: the rotation is abandoned, the active key signs on."""
    await _pending(db, domain, selector)
    try:  # still pending: an activation that committed first wins
        return await dkim_keys.retire_key(db, domain, selector, only_from="pending")
    except dkim_keys.DkimKeyMoved as moved:
        raise NotPending(str(moved)) from None
