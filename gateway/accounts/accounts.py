"""Connected mail accounts (seed 004): connect (prove, then store) and disconnect.

    connect:    fields checked -> both hosts through the SSRF guard -> address free and quota
                left (cheap refusals before any connection) -> IMAP login and SMTP AUTH proved
                (gateway.accounts.verify) -> stored, password sealed to the account's id,
                status pending (the sync takes it from there), quota and address checked again
                in the storing transaction
    update:     the changed fields checked as connect's; when where or how the password goes
                changes, the address changes, or a new password is given, both logins proved
                again with the
                result (the new password, else the stored one) before anything is stored;
                a move without a new password clears the stored one instead (nothing to
                prove: the account waits, in error, for its password)
    disconnect: the account's sync stops (the row goes; a sync under way records nothing),
                nothing synced is deleted; refused for the user's only default account while
                queued mail is From its address (storage.mail_accounts.AccountInUse)

Who may see or disconnect which account is the API's rule (api.ownership), not this module's.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway.accounts.verify import (
    IMAP,
    SMTP,
    Endpoint,
    check_imap,
    check_smtp,
    clear_text_problem,
    default_security,
)
from gateway.errors import InvalidInput, SecretError
from gateway.security.hostguard import HostGuard, HostRefused
from storage import mail_accounts
from storage.dkim_keys import Cipher
from storage.mail_accounts import AccountExists, AccountQuota, MailAccountRecord, SyncJob

log = logging.getLogger("postern.accounts")
_CONTEXT = "mail_account"


class BadAccountField(InvalidInput, ValueError):
    """A field the schema cannot judge alone (a clear-text side off loopback)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field, self.problem = field, message


class HostNotAllowed(HostRefused):
    """One side's host is in a denied network (the SSRF guard); `field` names it."""

    def __init__(self, field: str, refused: HostRefused) -> None:
        super().__init__(str(refused))
        self.field = field


def seal(box: Cipher, account_id: str, password: str) -> str:
    return box.seal(password, _CONTEXT, account_id, "password") if password else ""


def unseal(box: Cipher, job: SyncJob) -> str:
    """The password of a leased account; "" (and an error logged) when it cannot be opened."""
    return unseal_password(box, job.id, job.password_enc)


def unseal_password(box: Cipher, account_id: str, password_enc: str) -> str:
    """An account's password from its sealed form; "" (and an error logged) when it cannot
    be opened (sealed to another id, another key)."""
    if not password_enc:
        return ""
    try:
        return box.unseal(password_enc, _CONTEXT, account_id, "password").decode("utf-8")
    except (SecretError, UnicodeDecodeError) as error:
        log.error("the password of account %s cannot be decrypted: %s", account_id, error)
        return ""


@dataclass(frozen=True)
class Settings:
    max_per_user: int = 10
    timeout: float = 15.0  # each side's check, end to end
    hostname: str = "postern.localdomain"  # EHLO name of the SMTP check


def endpoints(values: Mapping[str, Any], password: str) -> tuple[Endpoint, Endpoint]:
    """(IMAP, SMTP) of an account's fields; a side's security defaults by its port."""

    def side(name: str) -> Endpoint:
        port = values[f"{name}_port"]
        return Endpoint(
            host=values[f"{name}_host"], port=port,
            security=values.get(f"{name}_security") or default_security(name, port),
            username=values["username"], password=password,
            tls_verify=values.get("tls_verify", True),
        )  # fmt: skip

    return side(IMAP), side(SMTP)


class Accounts:
    def __init__(self, db: Any, box: Cipher, guard: HostGuard, settings: Settings) -> None:
        self._db = db
        self._box = box
        self._guard = guard
        self.settings = settings

    async def connect(
        self, user_id: str, values: Mapping[str, Any], password: str
    ) -> MailAccountRecord:
        """Prove the credentials, then store the account (pending). VerifyFailed,
        HostRefused, BadAccountField, AccountExists, AccountQuota."""
        imap, smtp = endpoints(values, password)
        fields = dict(values) | {"imap_security": imap.security, "smtp_security": smtp.security}
        for name, endpoint in ((IMAP, imap), (SMTP, smtp)):
            problem = clear_text_problem(endpoint)
            if problem:
                raise BadAccountField(f"{name}_security", problem)
            try:
                await self._guard.check(endpoint.host, endpoint.port)
            except HostRefused as refused:
                raise HostNotAllowed(f"{name}_host", refused) from None
        await self._may_add(user_id, fields["email"])
        timeout = self.settings.timeout
        await check_imap(imap, self._guard, timeout)
        await check_smtp(smtp, self._guard, self.settings.hostname, timeout)
        record = await mail_accounts.create_account(
            self._db, fields, lambda account_id: seal(self._box, account_id, password),
            user_id, self.settings.max_per_user,
        )  # fmt: skip
        log.info("account %s connected: %s (user %s)", record.id, record.email, user_id)
        return record

    async def update(
        self, record: MailAccountRecord, changes: Mapping[str, Any], password: str | None
    ) -> MailAccountRecord:
        """Change an account: `changes` (its fields, `is_default`), `password` a new one
        (None: keep the stored one, unless the change moves it: cleared). A side whose port
        changes without its `*_security` takes the new port's default. VerifyFailed,
        HostRefused, BadAccountField, AccountExists, DefaultRequired, AccountNotFound."""
        fields = dict(changes)
        for side in (IMAP, SMTP):
            port = fields.get(f"{side}_port")
            if port is not None and fields.get(f"{side}_security") is None:
                fields.pop(f"{side}_security", None)
                if port != getattr(record, f"{side}_port"):
                    fields[f"{side}_security"] = default_security(side, port)
            elif f"{side}_security" in fields and fields[f"{side}_security"] is None:
                fields.pop(f"{side}_security")
        fields = mail_accounts.changed(record, fields)
        merged = {name: getattr(record, name) for name in mail_accounts.FIELDS} | fields
        moves = mail_accounts.moves_password(record, fields)
        stored = "" if moves else await mail_accounts.sealed_password(self._db, record.id)
        kept = unseal_password(self._box, record.id, stored) if stored else ""
        proving = password if password is not None else kept
        imap, smtp = endpoints(merged, proving)
        for name, endpoint in ((IMAP, imap), (SMTP, smtp)):
            problem = clear_text_problem(endpoint)
            if problem:
                raise BadAccountField(f"{name}_security", problem)
            if f"{name}_host" in fields or f"{name}_port" in fields:
                try:
                    await self._guard.check(endpoint.host, endpoint.port)
                except HostRefused as refused:
                    raise HostNotAllowed(f"{name}_host", refused) from None
        if "email" in fields:
            taken, _ = await mail_accounts.address_and_count(self._db, fields["email"], "")
            if taken:  # by another account: changed() kept only an address that differs
                key = mail_accounts.mailbox_key(fields["email"])
                raise AccountExists(f"{key} is already connected")
        # A new address is a new sending identity: proved as on connect, by logging in.
        relogin = password is not None or any(
            name in fields for name in (*mail_accounts.PASSWORD_BOUND, "tls_verify", "email")
        )
        if relogin and proving:
            timeout = self.settings.timeout
            await check_imap(imap, self._guard, timeout)
            await check_smtp(smtp, self._guard, self.settings.hostname, timeout)
        sealer = None if password is None else functools.partial(seal, self._box, password=password)
        updated = await mail_accounts.update_account(self._db, record.id, fields, sealer)
        log.info("account %s changed: %s", record.id, ", ".join(sorted(fields)) or "nothing")
        return updated

    async def _may_add(self, user_id: str, email: str) -> None:
        """The refusals that need no connection, before any is made (storing checks again)."""
        taken, count = await mail_accounts.address_and_count(self._db, email, user_id)
        if taken:
            raise AccountExists(f"{mail_accounts.mailbox_key(email)} is already connected")
        if count >= self.settings.max_per_user:
            limit = self.settings.max_per_user
            raise AccountQuota(f"account quota reached ({limit} connected accounts)")

    async def disconnect(self, account_id: str) -> MailAccountRecord:
        record = await mail_accounts.delete_account(self._db, account_id)
        log.info("account %s disconnected: %s", record.id, record.email)
        return record
