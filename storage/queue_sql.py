"""The SQL of gateway.queue.store's state changes, built once (compiled statements are cached).

Parameter names are shared: `m_id` the message, `node` the claiming node, `now` the time
of the change. gateway.queue.store decides what to write; this module only says how.
"""

from __future__ import annotations

from sqlalchemy import bindparam, delete, insert, select, update

from storage.models import Event, Message, MessageBody, MessageTag, Recipient

M = Message.__table__  # type: ignore[attr-defined]
B = MessageBody.__table__  # type: ignore[attr-defined]
R = Recipient.__table__  # type: ignore[attr-defined]
T = MessageTag.__table__  # type: ignore[attr-defined]
E = Event.__table__  # type: ignore[attr-defined]

INSERT_MESSAGE = insert(M)
INSERT_BODY = insert(B)
INSERT_RECIPIENT = insert(R)
INSERT_TAG = insert(T)
UPDATE_RECIPIENT = (
    update(R)
    .where(R.c.message_id == bindparam("m_id"), R.c.email == bindparam("m_email"))
    .values(
        status=bindparam("status"),
        attempts=R.c.attempts + 1,
        code=bindparam("code"),
        response=bindparam("response"),
        updated_at=bindparam("now"),
    )
)
UPDATE_MESSAGE = (
    update(M)
    .where(M.c.id == bindparam("m_id"), M.c.claimed_by == bindparam("node"))
    .values(
        status=bindparam("status"),
        attempts=M.c.attempts + 1,
        forced_attempts=M.c.forced_attempts + bindparam("forced"),
        retried_at=None,
        due_at=bindparam("due"),
        claimed_by=None,
        last_pool=bindparam("pool"),
        last_response=bindparam("response"),
        updated_at=bindparam("now"),
    )
)
DELETE_BODY = delete(B).where(B.c.message_id == bindparam("m_id"))

# An attempt's rows are written only if its message update went through (this node still
# held the claim). That update runs first in the shared transaction and stamps the message
# with the attempt's time and number; the statements below test for that stamp in SQL, so
# that every attempt of a group commit shares one executemany per statement.
RECORDED = (
    select(1)
    .where(
        M.c.id == bindparam("m_id"),
        M.c.updated_at == bindparam("stamp_at"),
        M.c.attempts == bindparam("stamp_attempt"),
    )
    .exists()
)
RECORD_RECIPIENT = UPDATE_RECIPIENT.where(RECORDED)
RECORD_BODY_GONE = DELETE_BODY.where(RECORDED)
# Every column but those the database fills in (the id, the transaction's id).
_EVENT_COLUMNS = [c for c in E.columns if not c.primary_key and c.server_default is None]
RECORD_EVENT = insert(E).from_select(
    [column.name for column in _EVENT_COLUMNS],
    select(*(bindparam(c.name, type_=c.type) for c in _EVENT_COLUMNS)).where(RECORDED),
)
RENEW = (
    update(M)
    .where(M.c.claimed_by == bindparam("node"), M.c.due_at.is_not(None))
    .values(due_at=bindparam("until"))
)
RELEASE = (
    update(M)
    .where(M.c.claimed_by == bindparam("node"), M.c.due_at.is_not(None))
    .values(claimed_by=None, due_at=bindparam("now"))
)
RELEASE_ONE = (
    update(M)
    .where(M.c.id == bindparam("m_id"), M.c.claimed_by == bindparam("node"))
    .values(claimed_by=None, due_at=bindparam("due"))
)


POSTPONE = (
    update(M)
    .where(M.c.id == bindparam("m_id"), M.c.claimed_by == bindparam("node"))
    .values(
        status="deferred",
        claimed_by=None,
        due_at=bindparam("due"),
        last_response=bindparam("why"),
        updated_at=bindparam("now"),
    )
)
