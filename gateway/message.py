"""The domain types every part shares: what was submitted, where it goes, how it went."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

# The pool name of direct delivery to the recipients' MX hosts (metrics, the mail log): its 250
# is the recipient's own server accepting, where a relay's 250 is only the next hop's.
DIRECT_POOL = "direct"
# The pool name the simulator's results and events carry (its addresses never leave).
SIMULATOR_POOL = "simulator"


@dataclass(frozen=True)
class Sender:
    """Who submitted a message, when it came with an API key (SMTP AUTH or HTTP) or from a
    logged-in user. `api_key_id` names the caller (the key, else the user: the namespace of
    its idempotency keys); `user_id` is the user the message belongs to (the logged-in one,
    or the key's owner; None for a key made at the console)."""

    api_key_id: str
    may_send: bool
    may_sandbox: bool
    ip_pools: frozenset[str] | None = None  # the groups this key may use; None = any
    user_id: str | None = None
    role: str | None = None  # the user's role now (owner|admin|member); None: no user


@dataclass(frozen=True)
class Submission:
    """One message as it arrived, through either door, before policy is applied."""

    mail_from: str
    recipients: tuple[str, ...]
    content: bytes  # RFC 5322 bytes, CRLF line ends, control headers already removed
    source: str  # "smtp" | "http"
    alias_id: str | None = None
    account_id: str | None = None  # a connected account to send through (HTTP only)
    idempotency_key: str | None = None
    request_hash: str | None = None  # digest of the canonical request, for the key's reuse
    sandbox: bool = False
    tags: tuple[str, ...] = ()
    sender: Sender | None = None  # None: an unauthenticated client on a trusted listener
    metadata: dict[str, str] = field(default_factory=dict)
    suppressed: tuple[str, ...] = ()  # recipients intake dropped; stored for the record
    system: bool = False  # Postern's own mail (alias verification, pool test): no sender check
    message_id: str | None = None  # chosen by the door that names it in the message (SMTP)
    client: str = ""  # the submitting peer, `[address]:port`, for the mail log
    scheduled_at: float | None = None  # not attempted before (UNIX seconds); None: at once
    client_address: str = ""  # its IP address alone, stored for the search ("": none)


@dataclass(frozen=True)
class Route:
    """Where a message goes: one pool by id, a group of pools by ip_pool, or direct MX.

    `default`: chosen by default (no alias_id, no From alias), so chosen again at each
    attempt; an explicit route keeps to its pool or group."""

    pool_id: str | None = None
    ip_pool: str | None = None
    default: bool = False

    @property
    def direct(self) -> bool:
        return self.pool_id is None and self.ip_pool is None


class Outcome(enum.Enum):
    DELIVERED = "delivered"
    DEFERRED = "deferred"
    BOUNCED = "bounced"


@dataclass(frozen=True)
class Hop:
    """Where an attempt went and how long its parts took (the mail log's relay and delays)."""

    relay: str  # host[address]:port
    connect: float  # seconds opening the session; 0 when a pooled one was reused
    transfer: float  # seconds of the SMTP transaction


_RECIPIENT_GONE = frozenset({"5.1.1", "5.1.2", "5.1.3", "5.1.6", "5.1.10"})


@dataclass(frozen=True)
class DeliveryResult:
    """The upstream's answer for one recipient of one attempt."""

    outcome: Outcome
    code: int | None = None
    enhanced: str | None = None
    text: str = ""
    complaint: bool = False  # delivered, then reported as spam (the simulator's complained@)
    # No reply after the final dot went out: the upstream may have taken it (a retry may
    # deliver it twice).
    possible_duplicate: bool = False
    hop: Hop | None = field(default=None, compare=False)  # None: no upstream session answered

    @property
    def hard_bounce(self) -> bool:
        """A permanent fault of the recipient's address: it should not be tried again.

        Only the 5.1.x codes that blame the destination (RFC 3463, 7505); 5.1.7 and 5.1.8
        blame the sender and must not suppress good recipients.
        """
        return self.outcome is Outcome.BOUNCED and self.enhanced in _RECIPIENT_GONE

    def describe(self) -> str:
        parts = [str(self.code) if self.code else "", self.enhanced or "", self.text]
        return " ".join(part for part in parts if part)[:1000]


@dataclass
class QueuedMessage:
    """A claimed message in a delivery worker's hands."""

    id: str
    mail_from: str
    recipients: list[str]  # only those still pending
    content: bytes
    attempts: int
    created_at: float
    route: Route = field(default_factory=Route)
    any_bounced: bool = False  # an earlier attempt bounced some recipient
    # An operator's retry (`postern queue retry`, POST .../retry) asked for this attempt at
    # this time: it clears the route's pool cool-downs from before then, and takes no step
    # of retry_schedule. None: a scheduled attempt.
    retried_at: float | None = None
    forced_attempts: int = 0  # earlier attempts that operators' retries asked for
    # As stored when claimed: why it last waited or failed, and when that was written (a
    # message waiting for a pool backs off while the reason stays the same).
    last_response: str | None = None
    updated_at: float = 0.0
    held_for: float = 0.0  # seconds it spent on hold: max_age leaves them out
    scheduled_at: float | None = None  # a scheduled send's time
    source: str = ""  # the door it came through (smtp, http; dsn: a notification of ours)
    # The envelope sender as the client gave it, when delivery replaced mail_from (VERP).
    client_sender: str | None = None

    @property
    def envelope_sender(self) -> str:
        """The sender the client gave: whom a notification of a bounce goes to."""
        return self.mail_from if self.client_sender is None else self.client_sender

    @property
    def age_from(self) -> float:
        """When max_age starts counting: the scheduled time of a scheduled send, else the
        time it was accepted; moved on by the time it spent on hold (left out of max_age)."""
        return max(self.created_at, self.scheduled_at or 0.0) + self.held_for

    @property
    def schedule_steps(self) -> int:
        """The steps of retry_schedule taken so far: one per attempt that was not forced."""
        return self.attempts - self.forced_attempts
