"""The navigation: every page the dashboard has or will have, and who sees it.

An entry with no path is announced but not built yet ("coming"): shown, disabled, so the
navigation already has its final shape. An entry with a scope is shown only to those whose
role grants it, and its page refuses the others (web.guard) whatever the navigation shows.
"""

from __future__ import annotations

from dataclasses import dataclass

from api.auth import Caller
from gateway.people.roles import OWNER


@dataclass(frozen=True)
class Entry:
    label: str
    path: str | None  # None: coming
    scope: str | None = None  # the API scope the page needs
    owner_only: bool = False

    def visible_to(self, caller: Caller) -> bool:
        if self.owner_only and caller.role != OWNER:
            return False
        return self.scope is None or caller.has(self.scope)


MAIN = (
    Entry("Overview", "/"),
    Entry("Messages", "/messages"),
    Entry("Live", "/live"),
    Entry("Sandbox", "/sandbox"),
)
SETTINGS = (
    Entry("SMTP Pools", "/settings/pools", scope="pools"),
    Entry("Routes", "/settings/routes", scope="admin"),  # as /api/v1/routes (api.route_ops)
    Entry("Aliases", "/aliases", scope="aliases"),
    Entry("Domains", "/domains", scope="domains"),
    Entry("Webhooks", "/webhooks", scope="webhooks"),
    Entry("Suppressions", "/suppressions", scope="suppressions"),
    Entry("Bounces", "/bounces"),  # each sees the reports of their mail (api.bounce_ops)
    Entry("API keys", "/keys", scope="keys"),
    Entry("Users", "/settings/users", owner_only=True),
    Entry("My sessions", "/settings/sessions"),
    Entry("Accounts", "/accounts"),
    Entry("Reputation", "/reputation"),
)


def sections(caller: Caller) -> list[tuple[str, list[Entry]]]:
    """The navigation as `caller` sees it: (heading, entries) pairs."""
    return [
        ("", [entry for entry in MAIN if entry.visible_to(caller)]),
        ("Settings", [entry for entry in SETTINGS if entry.visible_to(caller)]),
    ]
