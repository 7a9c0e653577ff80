"""Sharing an account with people through invitations (seed 004).

An account (storage.accounts: an alias, a domain or a connected mail account) is managed by
its owner: the user who created it, or any owner or admin (and the operator: an admin-scoped
API key without a user, `Actor.user` None). The owner invites an address with a role (admin
or member, never above their own); the invitee accepts, by id when logged in as that
address's user or by the emailed token (which creates the user, role member, if there is
none), or declines. An invitation is bound to its address: to anyone else it does not
exist (InvitationNotFound, never a refusal that would confirm it does), and an account a
user may not see does not exist either (AccountNotFound). Only the SHA-256 of the emailed
token is kept.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass

from gateway.addresses import CONTROL
from gateway.errors import InvalidInput, Refused
from gateway.intake.message_builder import Draft, Mailbox
from gateway.people import roles
from gateway.people.sessions import hash_token
from gateway.people.users import LoginRefused, Users, check_email
from storage import accounts, shares
from storage import invitations as stored
from storage import users as stored_users
from storage.accounts import AccountRecord
from storage.db import Database
from storage.invitations import PENDING, InvitationRecord
from storage.shares import ShareRecord
from storage.users import UserRecord

INVITABLE = (roles.ADMIN, roles.MEMBER)
TOKEN_BYTES = 32
TOKEN_MAX = 128  # longer is no token of ours
LINK_PATH = "/invitations/accept"
# The one control class (gateway.addresses), and the Unicode line separators: a name shown
# on a line of the text must not break it either.
_CONTROL = re.compile(f"[{CONTROL}\u2028\u2029]")


class AccountNotFound(Refused):
    """No account with this id that the actor may see."""


class InvitationNotFound(Refused):
    """No invitation with this id (or token) for this actor."""


class InvitationClosed(Refused):
    """The invitation was answered, revoked or has expired: `status` says which."""

    def __init__(self, status: str) -> None:
        super().__init__(f"this invitation is {status}")
        self.status = status


class NotInvitable(InvalidInput):
    """A role an invitation cannot carry, or an account that cannot be shared yet."""


class SignInRequired(Refused):
    """The invitee has a user: the link is accepted by signing in as them."""


@dataclass(frozen=True)
class Actor:
    """Who acts on an account: a user, or the operator (`user` None: an admin-scoped API
    key without a user). `id` is recorded as the inviter."""

    id: str
    user: UserRecord | None = None

    @property
    def role(self) -> str | None:
        return self.user.role if self.user is not None else None

    @property
    def sees_everything(self) -> bool:
        return self.user is None or self.user.role in (roles.OWNER, roles.ADMIN)


@dataclass(frozen=True)
class Received:
    """A pending invitation as its invitee sees it."""

    invitation: InvitationRecord
    account_email: str


def plain(text: str, limit: int = 100) -> str:
    """`text` fit for a header or one line of a message: no control characters, bounded."""
    return _CONTROL.sub(" ", text).strip()[:limit]


def compose(invitation: InvitationRecord, account_email: str, link: str, hostname: str) -> Draft:
    """The invitation email: From postmaster@ this server, on the inviter's behalf."""
    inviter = plain(invitation.inviter_name) or "Someone"
    account = plain(account_email, 254)
    return Draft(
        sender=Mailbox(f"postmaster@{hostname}", plain(f"{inviter} via Postern")),
        to=[Mailbox(invitation.invitee_email)],
        subject=plain(f"{inviter} invited you to send as {account}", 200),
        text=(
            f"{inviter} invited you to use {account} on Postern as {invitation.role}.\n\n"
            f"To accept, open this link within 30 days (it works once):\n\n{link}\n\n"
            "If you do not want this, ignore this message or decline it once signed in.\n"
        ),
    )


class Invitations:
    def __init__(
        self, db: Database, users: Users | None = None, clock: Callable[[], float] = time.time
    ) -> None:
        self._db = db
        self._users = users  # None: no new users (bare nodes); the link then needs one
        self._clock = clock

    # --- the account's owner ---------------------------------------------------------

    async def account(self, actor: Actor, account_id: str, manage: bool) -> AccountRecord:
        """The account, if the actor may see it (else AccountNotFound); with `manage`, only
        for its owner (OwnerRequired when they may see it but not manage it)."""
        found = await accounts.get_account(self._db, account_id)
        if found is None:
            raise AccountNotFound("account not found")
        owns = actor.sees_everything or (
            actor.user is not None and found.created_by == actor.user.id
        )
        if owns:
            return found
        assert actor.user is not None
        share = await shares.get_share(self._db, *found.ref, actor.user.id)
        if share is None:
            raise AccountNotFound("account not found")
        if manage and share.role != roles.ADMIN:  # an admin share manages it as its owner
            raise roles.OwnerRequired("only the account's owner (or its admins) manages this")
        return found

    async def invite(
        self, actor: Actor, account_id: str, email: str, role: str = roles.MEMBER
    ) -> tuple[InvitationRecord, str]:
        """A new pending invitation and its token (for the email only)."""
        found = await self.account(actor, account_id, manage=True)
        if role not in INVITABLE:
            raise NotInvitable(f"role: an invitation's role is one of {', '.join(INVITABLE)}")
        roles.require_may_grant(actor.role, role)
        if found.kind == accounts.DOMAIN and not found.is_verified:
            raise NotInvitable(f"{found.email} is not verified yet: verify it, then share it")
        key = check_email(email)
        if found.created_by is not None:
            creator = await stored_users.get_user(self._db, found.created_by)
            if creator is not None and creator.email == key:
                raise stored.AlreadyShared(f"{key} owns this account")
        token = new_token()
        invitation = await stored.create_invitation(
            self._db, account=found.ref, invitee_email=key, role=role, inviter_id=actor.id,
            token_hash=hash_token(token), now=self._clock(),
        )  # fmt: skip
        return invitation, token

    async def listed(
        self, actor: Actor, account_id: str, statuses: Collection[str]
    ) -> list[InvitationRecord]:
        found = await self.account(actor, account_id, manage=True)
        return await stored.list_for_account(self._db, found.ref, statuses, self._clock())

    async def revoke(self, actor: Actor, account_id: str, invitation_id: str) -> InvitationRecord:
        invitation = await self._of_account(actor, account_id, invitation_id)
        if not await stored.revoke(self._db, invitation.id, self._clock()):
            raise await self._closed(invitation.id)
        return await self._get(invitation.id)

    async def resend(
        self, actor: Actor, account_id: str, invitation_id: str
    ) -> tuple[InvitationRecord, str]:
        """The invitation with a new token and expiry (the old link stops working)."""
        invitation = await self._of_account(actor, account_id, invitation_id)
        token = new_token()
        renewed = await stored.renew(self._db, invitation.id, hash_token(token), self._clock())
        if renewed is None:
            raise await self._closed(invitation.id)
        return renewed, token

    async def shares(self, actor: Actor, account_id: str) -> list[ShareRecord]:
        found = await self.account(actor, account_id, manage=True)
        return await shares.list_shares(self._db, *found.ref)

    async def unshare(self, actor: Actor, account_id: str, user_id: str) -> None:
        """Stop sharing: the owner removes anyone, a user leaves an account themselves."""
        leaving = actor.user is not None and actor.user.id == user_id
        found = await self.account(actor, account_id, manage=not leaving)
        if not await shares.remove_share(self._db, *found.ref, user_id):
            raise AccountNotFound("this account is not shared with that user")

    async def _of_account(
        self, actor: Actor, account_id: str, invitation_id: str
    ) -> InvitationRecord:
        found = await self.account(actor, account_id, manage=True)
        invitation = await stored.get_invitation(self._db, invitation_id)
        if invitation is None or invitation.account != found.ref:
            raise InvitationNotFound("invitation not found")
        return invitation

    # --- the invitee -----------------------------------------------------------------

    async def pending(self, user: UserRecord) -> list[Received]:
        """The live invitations to the user's address, with the accounts' addresses."""
        found = await stored.pending_for(self._db, user.email, self._clock())
        named = await accounts.get_accounts(self._db, {i.account for i in found})
        return [Received(i, named[i.account].email) for i in found if i.account in named]

    async def accept(self, user: UserRecord, invitation_id: str) -> InvitationRecord:
        invitation = await self._for(user, invitation_id)
        if not await stored.accept(self._db, invitation.id, user.id, self._clock()):
            raise await self._closed(invitation.id)
        return await self._get(invitation.id)

    async def decline(self, user: UserRecord, invitation_id: str) -> InvitationRecord:
        invitation = await self._for(user, invitation_id)
        if not await stored.decline(self._db, invitation.id, self._clock()):
            raise await self._closed(invitation.id)
        return await self._get(invitation.id)

    async def by_token(self, token: str) -> InvitationRecord:
        """The live invitation of an emailed token; InvitationNotFound if there is none."""
        if not token or len(token) > TOKEN_MAX or not token.isascii():
            raise InvitationNotFound("this link is unknown, already used or expired")
        found = await stored.find_by_token(self._db, hash_token(token), self._clock())
        if found is None:
            raise InvitationNotFound("this link is unknown, already used or expired")
        return found

    async def invitee(self, invitation: InvitationRecord) -> UserRecord | None:
        return await stored_users.find_by_email(self._db, invitation.invitee_email)

    async def accept_token(
        self, token: str, password: str = "", name: str = "", signed_in: UserRecord | None = None
    ) -> UserRecord:
        """Accept the link's invitation; the user it is now shared with. The invitee's user,
        if there is one, proves itself by its session (`signed_in`) or its password
        (SignInRequired without either, LoginRefused for a wrong one); without one, the
        user is created with `password` (and `name`), role member."""
        invitation = await self.by_token(token)
        user = await self.invitee(invitation)
        if user is None:
            return await self._accept_as_new(invitation, password, name)
        if signed_in is None or signed_in.id != user.id:
            if not password:
                raise SignInRequired(f"sign in as {user.email} to accept this invitation")
            user = await self._need_users().login(user.email, password)
        if not user.is_active:
            raise LoginRefused()
        if not await stored.accept(self._db, invitation.id, user.id, self._clock()):
            raise InvitationNotFound("this link is unknown, already used or expired")
        return user

    async def _accept_as_new(
        self, invitation: InvitationRecord, password: str, name: str
    ) -> UserRecord:
        users = self._need_users()
        record = await users.new_record(invitation.invitee_email, roles.MEMBER, password, name)
        accepted = await stored.accept(
            self._db, invitation.id, record.id, self._clock(), new_user=record
        )
        if not accepted:
            raise InvitationNotFound("this link is unknown, already used or expired")
        return record

    def _need_users(self) -> Users:
        if self._users is None:
            raise SignInRequired("users are not available on this node")
        return self._users

    async def _for(self, user: UserRecord, invitation_id: str) -> InvitationRecord:
        """The invitation, if it is addressed to `user` (to anyone else it does not exist)."""
        invitation = await stored.get_invitation(self._db, invitation_id)
        if invitation is None or invitation.invitee_email != user.email:
            raise InvitationNotFound("invitation not found")
        return invitation

    async def _get(self, invitation_id: str) -> InvitationRecord:
        found = await stored.get_invitation(self._db, invitation_id)
        if found is None:
            raise InvitationNotFound("invitation not found")
        return found

    async def _closed(self, invitation_id: str) -> InvitationClosed:
        """Why a change found the invitation no longer pending."""
        found = await self._get(invitation_id)
        status = found.status_at(self._clock())
        return InvitationClosed("expired" if status == PENDING else status)


def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)
