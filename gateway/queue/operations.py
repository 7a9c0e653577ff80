"""Operator actions on the queue, shared by the HTTP API and `postern queue`.

Both front ends read a filter from their own syntax (query string, JSON body, options)
into the same `MessageFilter` through `make_filter`, and act through the same functions,
so a retry from the CLI and one over HTTP cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import aclosing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from gateway import timestamps
from gateway.addresses import envelope_problem, has_control
from gateway.errors import InvalidInput, Refused
from gateway.headers import MAX_LINE, normal_message_id
from storage.db import Database
from storage.message_search import (
    ACTIVE,
    CHUNK,
    STATUSES,
    Key,
    MessageFilter,
    MessageSummary,
    active_keys,
    count_active,
    decode_cursor,
    encode_cursor,
)
from storage.messages import MessageState, message_state
from storage.search_keys import MAX_QUERY_WORDS, address_range, subject_words

if TYPE_CHECKING:  # the queue's own imports: not for a search (`postern queue list`)
    from gateway.queue.store import Queue

Action = Literal["retry", "cancel", "hold", "release"]
# The statuses each action acts on (a bulk call matches only these): a retry and a hold take
# mail that may be delivered, a release only held mail, a cancel any with work left.
ACTS_ON: dict[str, tuple[str, ...]] = {
    "retry": ("queued", "deferred"),
    "cancel": ACTIVE,
    "hold": ("queued", "deferred"),
    "release": ("held",),
}
# What the answer calls the messages an action changed.
DONE_WORD = {"retry": "retried", "cancel": "cancelled", "hold": "held", "release": "released"}
# The most messages one bulk call acts on, so that one HTTP request never runs for minutes;
# the answer says how many are left and where to go on from.
MAX_BULK = 10_000
FILTER_FIELDS = (
    "status",
    "pool",
    "recipient",
    "from",
    "tag",
    "message_id_header",
    "subject",
    "client",
    "since",
    "until",
)
# What /openapi.json states of the filter values make_filter takes.
Status = Literal[STATUSES]  # type: ignore[valid-type]
_STATUS = f"(?:{'|'.join(STATUSES)})"
STATUS_PATTERN = rf"^[ \t]*{_STATUS}[ \t]*(?:,[ \t]*{_STATUS}[ \t]*)*$"  # "queued, deferred"


class FilterError(InvalidInput, ValueError):
    """A filter value that cannot be used; `field` names it for the 400's details."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class MessageFinal(Refused):
    """The message has no work left (delivered, bounced, cancelled, sandbox)."""


class MessageBusy(Refused):
    """A worker is delivering the message right now."""


class MessageHeld(Refused):
    """The message is on hold: a retry or a second hold waits for its release."""


class MessageNotHeld(Refused):
    """A release of a message that is not on hold."""


def parse_time(field: str, value: Any) -> float:
    """A time in gateway.timestamps' grammar -> UNIX seconds; FilterError naming `field`."""
    try:
        return timestamps.parse(value)
    except ValueError as error:
        raise FilterError(field, str(error)) from None


def _text(field: str, value: Any, max_length: int) -> str:
    if not isinstance(value, str) or not value or len(value) > max_length:
        raise FilterError(field, f"1 to {max_length} characters")
    if has_control(value):
        raise FilterError(field, "control characters are not allowed")
    return value


def _message_id(value: Any) -> str | None:
    """A Message-ID with or without its angle brackets, in the form stored with the message
    (gateway.headers.normal_message_id); None: no criterion."""
    if value is None:
        return None
    found = normal_message_id(_text("message_id_header", value, MAX_LINE))
    if found is None:
        raise FilterError("message_id_header", "a Message-ID, such as <id@example.com>")
    return found


def _subject(value: Any) -> tuple[str, ...]:
    """Words the Subject must all have, in any order and case, the longest first (a fair
    guess at the rarest, until storage.message_search.rarest_first counts); () when none
    is asked."""
    if value is None:
        return ()
    words = subject_words(_text("subject", value, MAX_LINE), MAX_QUERY_WORDS + 1)
    if not words:
        raise FilterError("subject", "one or more words (letters or digits)")
    if len(words) > MAX_QUERY_WORDS:
        raise FilterError("subject", f"at most {MAX_QUERY_WORDS} words")
    return tuple(sorted(words, key=len, reverse=True))


def _client(value: Any) -> tuple[str, str] | None:
    """An IP address or a CIDR block, as the range of stored keys it covers."""
    if value is None:
        return None
    try:
        return address_range(_text("client", value, 64).strip())
    except ValueError:
        raise FilterError(
            "client", "an IP address or a CIDR block, such as 192.0.2.7 or 192.0.2.0/24"
        ) from None


def _address(field: str, value: Any) -> str:
    text = _text(field, value, 254)
    problem = envelope_problem(text)
    if problem:
        raise FilterError(field, problem)
    return text


def _statuses(value: Any) -> tuple[str, ...]:
    """ "queued, deferred" (blanks around each name dropped) or ["queued", "deferred"]."""
    names = [name.strip(" \t") for name in value.split(",")] if isinstance(value, str) else value
    if not isinstance(names, list | tuple) or not names:
        raise FilterError("status", f"one or more of {', '.join(STATUSES)}")
    found: list[str] = []
    for name in names:
        if name not in STATUSES:
            raise FilterError("status", f"one or more of {', '.join(STATUSES)}")
        if name not in found:
            found.append(name)
    return tuple(found)


def make_filter(
    values: Mapping[str, Any], api_key_id: str | None = None, user_id: str | None = None
) -> MessageFilter:
    """A filter from field -> value (names as in FILTER_FIELDS; absent or None: no criterion).

    `api_key_id` restricts the result to that key's messages, `user_id` to that user's (None:
    everyone's, for admins and the CLI). Raises FilterError naming the first bad field.
    """
    get = {name: values.get(name) for name in FILTER_FIELDS}
    flt = MessageFilter(
        statuses=_statuses(get["status"]) if get["status"] is not None else (),
        pool=_text("pool", get["pool"], 255) if get["pool"] is not None else None,
        recipient=_address("recipient", get["recipient"]) if get["recipient"] is not None else None,
        mail_from=_address("from", get["from"]) if get["from"] is not None else None,
        tag=_text("tag", get["tag"], 128) if get["tag"] is not None else None,
        message_id_header=_message_id(get["message_id_header"]),
        subject=_subject(get["subject"]),
        client=_client(get["client"]),
        since=parse_time("since", get["since"]) if get["since"] is not None else None,
        until=parse_time("until", get["until"]) if get["until"] is not None else None,
        api_key_id=api_key_id,
        user_id=user_id,
    )
    return flt  # until <= since is no error: such a range matches nothing


@dataclass(frozen=True)
class BulkResult:
    action: Action
    matched: int  # messages the action applies to that matched (up to the cap)
    done: int  # retried, cancelled, held or released
    busy: int  # held by a worker (or finished) meanwhile: left alone
    dry_run: bool
    remaining: int = 0  # matching messages with work left beyond the cap: not looked at
    next_cursor: str | None = None  # where to go on from, while `remaining`

    def as_json(self) -> dict[str, Any]:
        verb = DONE_WORD[self.action]
        found: dict[str, Any] = {
            "matched": self.matched,
            verb: self.done,
            "busy": self.busy,
            "dry_run": self.dry_run,
        }
        if self.remaining:
            found.update(remaining=self.remaining, next_cursor=self.next_cursor)
        return found


async def bulk(
    queue: Queue,
    db: Database,
    flt: MessageFilter,
    action: Action,
    dry_run: bool,
    *,
    limit: int | None = None,
    cursor: str | None = None,
) -> BulkResult:
    """Retry, cancel, hold or release the messages matching `flt` that the action applies
    to (ACTS_ON), newest first, a chunk per
    transaction, at most `limit` of them (None: MAX_BULK), after `cursor` when given (the
    `next_cursor` of the call before; InvalidCursor when it is not one).

    A dry run only counts (all of them). Messages a worker holds are counted as busy, not
    touched. When more match than `limit`, the result says how many were left and the
    cursor to pass to go on: repeating a retry without it would retry the same ones again.
    """
    limit = MAX_BULK if limit is None else max(1, limit)
    after: Key | None = decode_cursor(cursor) if cursor else None
    among = ACTS_ON[action]
    if dry_run:
        return BulkResult(action, await count_active(db, flt, after, among), 0, 0, True)
    matched = done = 0
    last: Key | None = None
    async with aclosing(active_keys(db, flt, min(CHUNK, limit), after, among)) as chunks:
        async for keys in chunks:
            keys = keys[: limit - matched]
            ids = [message_id for _, message_id in keys]
            matched += len(ids)
            last = keys[-1]
            done += len(await act(queue, action, ids))
            if matched >= limit:
                break
    remaining = await count_active(db, flt, last, among) if matched >= limit else 0
    next_cursor = encode_cursor(last) if remaining and last is not None else None
    return BulkResult(action, matched, done, matched - done, False, remaining, next_cursor)


async def act(queue: Queue, action: Action, ids: list[str]) -> list[str]:
    """Run `action` on these messages (each chunk one transaction); the ids it changed."""
    if action == "retry":
        return await queue.retry(ids)
    if action == "cancel":
        return (await queue.cancel(ids)).cancelled
    if action == "hold":
        return (await queue.hold(ids)).done
    return (await queue.release_held(ids)).done


async def retry_one(queue: Queue, db: Database, state: MessageState) -> None:
    """Make one message due now; MessageFinal / MessageBusy / MessageHeld when that cannot
    be."""
    if state.status == "held":
        raise MessageHeld(state.id)
    if state.status not in ACTIVE:
        raise MessageFinal(state.id)
    if await queue.retry([state.id]):
        return
    after = await message_state(db, state.id)
    if after is not None and after.status == "held":
        raise MessageHeld(state.id)  # held between the read and the retry
    raise MessageFinal(state.id) if after is None or after.status not in ACTIVE else MessageBusy()


async def hold_one(queue: Queue, state: MessageState) -> None:
    """Put one message on hold; MessageFinal / MessageBusy / MessageHeld when that cannot
    be."""
    if state.status == "held":
        raise MessageHeld(state.id)
    if state.status not in ACTIVE:
        raise MessageFinal(state.id)
    result = await queue.hold([state.id])
    if state.id in result.busy:
        raise MessageBusy(state.id)
    if state.id not in result.done:
        raise MessageFinal(state.id)  # it finished (or was held) between read and hold


async def release_one(queue: Queue, state: MessageState) -> None:
    """Release one held message; MessageNotHeld (MessageFinal once final) otherwise."""
    if state.status != "held":
        raise MessageFinal(state.id) if state.status not in ACTIVE else MessageNotHeld(state.id)
    result = await queue.release_held([state.id])
    if state.id in result.busy:
        raise MessageBusy(state.id)
    if state.id not in result.done:
        raise MessageNotHeld(state.id)  # released or cancelled meanwhile


async def cancel_one(queue: Queue, state: MessageState) -> None:
    """Cancel one message; MessageFinal / MessageBusy when that cannot be."""
    if state.status not in ACTIVE:
        raise MessageFinal(state.id)
    result = await queue.cancel([state.id])
    if state.id in result.busy:
        raise MessageBusy(state.id)
    if state.id not in result.cancelled:
        raise MessageFinal(state.id)  # it finished between the read and the cancel


def summary_json(
    message: MessageSummary, when: Callable[[float | None], str | None]
) -> dict[str, Any]:
    """A search result as GET /v1/messages and `postern queue list --json` show it
    (`when` formats the times)."""
    return {
        "message_id": message.id,
        "status": message.status,
        "from": message.mail_from,
        "recipients": message.recipients,
        "pool": message.pool,
        "attempts": message.attempts,
        "tags": message.tags,
        "created_at": when(message.created_at),
        "updated_at": when(message.updated_at),
        "next_attempt_at": when(message.next_attempt_at),
        "last_response": message.last_response,
        "client_address": message.client_address,
    }
