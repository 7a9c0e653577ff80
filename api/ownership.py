"""Who sees which records: the one rule for aliases, domains, pools, webhooks and keys.

Admins and owners see everything, as does a key made at the console (its scope is its only
bound, as before users existed). A member sees what they created (`created_by`, a key's
`user_id`) and the accounts shared with them (storage.shares), joined here, in
`visible_to`, and nowhere else. A record a caller may not see is answered as absent (404),
never as forbidden, so that its id confirms nothing. Messages follow their own rule
(api.routes.messages), on the `message.user_id` index.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TypeVar

from api.auth import Caller
from api.context import ApiContext
from gateway.people import roles
from storage.accounts import KINDS
from storage.shares import shared_account_ids

T = TypeVar("T")


@dataclass(frozen=True)
class Visibility:
    """What one caller sees of one kind of record: everything (`user_id` None), or what
    `user_id` created and the records of `shared` (ids)."""

    user_id: str | None = None
    shared: frozenset[str] = field(default_factory=frozenset)

    @property
    def everything(self) -> bool:
        return self.user_id is None

    def allows(self, record_id: str, created_by: str | None) -> bool:
        if self.user_id is None:
            return True
        return created_by == self.user_id or record_id in self.shared

    def only(self, records: Iterable[T], owner: Callable[[T], tuple[str, str | None]]) -> list[T]:
        """The records it allows; `owner` gives a record's (id, created_by)."""
        return [record for record in records if self.allows(*owner(record))]


def sees_everything(caller: Caller) -> bool:
    """An admin's or owner's session or key, or a key made at the console."""
    return caller.user is None or roles.at_least(caller.user.role, roles.ADMIN)


async def visible_to(ctx: ApiContext, caller: Caller, kind: str) -> Visibility:
    """What `caller` sees of `kind` ("alias", "domain", "account", "pool", "webhook",
    "key"): what they created, and the accounts (aliases, domains, connected accounts)
    shared with them."""
    if sees_everything(caller):
        return Visibility()
    assert caller.user is not None
    shared = await shared_account_ids(ctx.db, caller.user.id, kind) if kind in KINDS else set()
    return Visibility(caller.user.id, frozenset(shared))
