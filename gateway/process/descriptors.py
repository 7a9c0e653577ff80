"""Open-file descriptors: the one resource every door shares.

Each connection holds a descriptor. Were one door allowed to take them all, a flood on it
(EMFILE) would stop the other doors from accepting too, and the database, upstream sessions
and webhooks with them. So the soft RLIMIT_NOFILE is raised to the hard limit at start, and
the doors' connection caps are fitted under it with a reserve for everything else: a door
at its cap refuses new connections at once (SMTP 421, HTTP 503) while the others go on.
"""

from __future__ import annotations

import logging
import math
import resource
from dataclasses import dataclass

from gateway.config import Config
from gateway.errors import PosternError

log = logging.getLogger("postern")

RESERVE = 256  # beyond delivery.workers: database, idle upstream sessions, webhooks, DNS, logs
METRICS_CONNECTIONS = 32  # the cap of [http] metrics_listen: a few scrapers
BOUNCE_CONNECTIONS = 100  # the bounce listener's cap: MTAs returning reports, not clients
MIN_PER_DOOR = 16
CEILING = 1 << 20  # when the hard limit is "unlimited" (the kernel's default nr_open)


class TooFewDescriptors(PosternError):
    """The open-file limit leaves no room for the doors."""


def raise_soft_limit() -> int:
    """Raise the soft open-file limit to the hard one; the limit now in force.

    The hard limit is never raised (that needs CAP_SYS_RESOURCE): it is the operator's."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = CEILING if hard == resource.RLIM_INFINITY else hard
    if soft == resource.RLIM_INFINITY or soft >= target:
        return CEILING if soft == resource.RLIM_INFINITY else soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):  # e.g. above the kernel's nr_open: keep what we have
        return soft
    return target


@dataclass(frozen=True)
class Budget:
    """Connection caps per door that, with `reserve`, fit in `limit` descriptors."""

    caps: dict[str, int]
    limit: int
    reserve: int
    lowered: bool  # the configured caps did not fit and were scaled down


def fit(wanted: dict[str, int], limit: int, reserve: int) -> Budget:
    """The configured caps if they fit under `limit - reserve`, else each scaled down in
    proportion (so that no door can starve the others of descriptors)."""
    room = limit - reserve
    total = sum(wanted.values())
    if room < MIN_PER_DOOR * len(wanted):
        raise TooFewDescriptors(
            f"the open-file limit ({limit}) leaves too few descriptors for connections: "
            f"raise it (ulimit -n, or LimitNOFILE= under systemd) to {reserve + total}"
        )
    if total <= room:
        return Budget(dict(wanted), limit, reserve, lowered=False)
    scale = room / total
    caps = {
        door: min(cap, max(MIN_PER_DOOR, math.floor(cap * scale))) for door, cap in wanted.items()
    }
    return Budget(caps, limit, reserve, lowered=True)


def door_budget(config: Config) -> Budget:
    """Each door's cap for this process: raise the limit, fit the configured caps under it."""
    wanted = {"smtp": config.smtp.max_connections, "http": config.http.max_connections}
    if config.http.metrics_listen:
        wanted["metrics"] = METRICS_CONNECTIONS
    if config.bounces.listen:
        wanted["bounces"] = BOUNCE_CONNECTIONS
    budget = fit(wanted, raise_soft_limit(), RESERVE + config.delivery.workers)
    if budget.lowered:
        log.warning(
            "the open-file limit (%d) is too low for the configured connection caps: lowered "
            "to %s, keeping %d descriptors for storage, upstreams and webhooks; raise the "
            "limit (ulimit -n, LimitNOFILE=) to use them",
            budget.limit, ", ".join(f"{door} {cap}" for door, cap in budget.caps.items()),
            budget.reserve,
        )  # fmt: skip
    return budget
