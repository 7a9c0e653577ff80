"""What the doors to DNSBL verdicts share (/api/v1/blocklists, and a dashboard page to
come): the stored verdicts of the sending IPs and domains (gateway.reputation.dnsbl), with
the API's times. Read only: a round is the scheduled check's, or `postern blocklists check`."""

from __future__ import annotations

from typing import Any

from api.context import ApiContext, iso
from storage import blocklists as stored

SCOPE = "admin"  # the gateway's standing with receivers: owners and admins
_TIMES = ("last_checked_at", "attempted_at", "listed_since")


async def overview(ctx: ApiContext, status: str | None = None) -> dict[str, Any]:
    """The last completed round and each subject's verdict (listed first), or only those of
    `status`."""
    state = await stored.run_state(ctx.db)
    checks = await stored.all_checks(ctx.db)
    subjects = []
    for check in checks:
        if status is not None and check.status != status:
            continue
        found = stored.as_json(check)
        subjects.append(found | {name: iso(found[name]) for name in _TIMES})
    return {
        "last_completed_at": iso(state.completed_at) if state else None,
        "subjects": subjects,
    }
