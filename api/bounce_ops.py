"""What both doors (the API's /api/v1/bounces and the dashboard's Bounces pages) say about
the reports that came back: whose a caller sees, one report if they may see it, and who may
give it another class.

A report follows its matched message (api.message_ops): an admin or owner (the `admin`
scope) sees every report; anyone else those matched to a message they sent (a member, or
any key of theirs: the mail of that user; a key made at the console: the mail it sent).
A user also sees what concerns a connected account they own: the reports of a message that
left through it, and every report that arrived in its mailbox (unmatched and unparsed
ones too). A user the account is shared with sees only the reports of their own mail: the
raw report of another's message names its recipients. Any other report matched to no
message (unmatched, unparsed, or its message deleted by retention) is an admin's only. A
report the caller may not see is a 404, never a 403.

Reclassifying changes what happens to the recipients of someone's mail (a suppression, which
applies to the whole installation): an admin, or the sender of the matched message (the
user, or the console key that sent it) holding the `suppressions` scope too (a member's role
has it not: a send-only key or a member may not lift or add suppressions this way).
Uploading a report (`POST /api/v1/bounces`) follows the same rule: an admin's upload may
match any message; anyone else's only a message they sent (`uploader`), and one naming
another's message is stored unmatched and does nothing (answered `unmatched`, as a report
for an unknown message is: the answer tells no one that the message exists).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from api import errors
from api.auth import Caller
from api.context import ApiContext
from api.message_ops import restriction
from gateway.bounces.ingest import CLASSES
from storage import bounce_reports as stored

_MAX_DIGITS = 18


async def viewer(ctx: ApiContext, caller: Caller) -> stored.Viewer | None:
    """Whose reports the caller sees; None: everyone's."""
    restricted = restriction(caller)
    if not restricted:
        return None
    if "user_id" in restricted:
        return stored.Viewer(user_id=restricted["user_id"])
    return stored.Viewer(api_key_id=restricted["api_key_id"])


def uploader(caller: Caller) -> stored.Sender | None:
    """Whose messages a report the caller uploads may act on; None: any (an admin)."""
    restricted = restriction(caller)
    return stored.Sender(**restricted) if restricted else None


async def page(
    ctx: ApiContext, caller: Caller, statuses: Sequence[str] | None, limit: int, before: int | None
) -> stored.Page:
    """A page of the reports the caller sees, newest first (without the raw bytes)."""
    seen = await viewer(ctx, caller)
    return await ctx.db.read(lambda conn: stored.page(conn, statuses, limit, before, seen))


def report_id(value: str) -> int:
    """A report id from a path; one that is no number names no report (404)."""
    if not (value.isascii() and value.isdigit() and len(value) <= _MAX_DIGITS):
        raise errors.NotFound("no such report")
    return int(value)


async def get(ctx: ApiContext, caller: Caller, report: int) -> Any:
    """The stored report (with `sender_user_id`, `sender_key_id`) if the caller may see it;
    another's is a 404, as a message is."""
    seen = await viewer(ctx, caller)
    row = await ctx.db.read(lambda conn: stored.get(conn, report, seen))
    if row is None:
        raise errors.NotFound("no such report")
    return row


def may_reclassify(caller: Caller, row: Any) -> bool:
    """An admin, or whoever sent the report's message and holds the `suppressions` scope
    (a new class adds or lifts installation-wide suppressions)."""
    if not restriction(caller):
        return True
    if row.message_id is None or not caller.has("suppressions"):
        return False
    if caller.user is not None:
        return bool(row.sender_user_id == caller.user.id)
    return bool(row.sender_key_id == caller.id)


async def reclassify(ctx: ApiContext, caller: Caller, report: int, cls: str) -> str:
    """Give the report another class, applied to its matched recipients: "changed" or
    "unchanged". 404 when the caller may not see it, 403 when they may see it but did not
    send its message or lack the `suppressions` scope."""
    row = await get(ctx, caller, report)
    if not may_reclassify(caller, row):
        raise errors.Forbidden(
            "only an admin, or the sender of its message with the suppressions scope,"
            " may reclassify it"
        )
    if cls not in CLASSES:
        raise errors.InvalidRequest(
            f"class: one of {', '.join(CLASSES)}",
            [{"field": "class", "message": f"one of {', '.join(CLASSES)}"}],
        )
    if ctx.bounces is None:
        raise errors.Unavailable("bounce processing is not running on this node")
    outcome = await ctx.bounces.reclassify(report, cls)
    if outcome == "unknown":
        raise errors.NotFound("no such report")
    return outcome
