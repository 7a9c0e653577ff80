"""Every Prometheus metric, defined once (prefix `postern_`), observed where the work happens.

With several workers (gateway.process.supervisor) each process counts its own in
prometheus-client's multiprocess files and /metrics sums them (`exposition`): a gauge says
how (`multiprocess_mode`: `livesum` for what each live worker holds, `mostrecent` for what
one worker measures for all); outside that mode the argument is ignored."""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.metrics_core import Metric

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

MESSAGES_RECEIVED = Counter(
    "postern_messages_received_total", "Messages accepted and stored, by door.", ["source"]
)
MESSAGES_REFUSED = Counter(
    "postern_messages_refused_total", "Messages refused at intake, by reason.", ["reason"]
)
MESSAGES_DELIVERED = Counter(
    "postern_messages_delivered_total", "Recipients accepted by an upstream.", ["pool"]
)
MESSAGES_DEFERRED = Counter(
    "postern_messages_deferred_total", "Recipients deferred for a later attempt.", ["pool"]
)
MESSAGES_BOUNCED = Counter(
    "postern_messages_bounced_total", "Recipients refused permanently or expired.", ["pool"]
)
MESSAGES_SUPPRESSED = Counter(
    "postern_messages_suppressed_total", "Recipients refused because they are suppressed."
)
POSSIBLE_DUPLICATES = Counter(
    "postern_possible_duplicates_total",
    "Attempts cut off after the final dot, or whose claim lapsed before the answer was "
    "stored: the retry may deliver a second copy.",
    ["pool"],
)
QUEUE_MESSAGES = Gauge(
    "postern_queue_messages",
    "Messages with work left, by state.",
    ["state"],
    multiprocess_mode="mostrecent",
)
UPSTREAM_CONNECT_SECONDS = Histogram(
    "postern_upstream_connect_seconds",
    "Time to open an upstream session (TCP, greeting, EHLO, TLS, AUTH).",
    ["pool"],
    buckets=_LATENCY_BUCKETS,
)
UPSTREAM_SEND_SECONDS = Histogram(
    "postern_upstream_send_seconds",
    "Time of one upstream transaction (MAIL to the reply after the final dot).",
    ["pool"],
    buckets=_LATENCY_BUCKETS,
)
UPSTREAM_CONNECTIONS = Gauge(
    "postern_upstream_connections",
    "Open upstream sessions.",
    ["pool", "state"],
    multiprocess_mode="livesum",
)
HTTP_REQUEST_SECONDS = Histogram(
    "postern_http_request_seconds",
    "HTTP request latency.",
    ["route", "status"],
    buckets=_LATENCY_BUCKETS,
)
SMTP_SESSIONS = Gauge(
    "postern_smtp_sessions", "Open SMTP client sessions.", multiprocess_mode="livesum"
)
CONNECTIONS_REFUSED = Counter(
    "postern_connections_refused_total",
    "Client connections closed at once because their door was at its cap (smtp: 421,"
    " http and metrics: 503).",
    ["door"],
)
HTTP_HEADER_TIMEOUTS = Counter(
    "postern_http_header_timeouts_total",
    "HTTP connections closed (408) because a request head did not arrive within"
    " http.header_timeout.",
    ["door"],
)
WEBHOOK_DELIVERIES = Counter(
    "postern_webhook_deliveries_total",
    "Events sent to webhooks, by outcome (delivered, failed attempt, dropped past max_age).",
    ["status"],
)
EVENTS_PENDING = Gauge(
    "postern_events_pending",
    "Events after the cursor of each active webhook (not yet sent, summed over webhooks).",
    multiprocess_mode="mostrecent",
)
DKIM_SIGNATURES = Counter(
    "postern_dkim_signatures_total",
    "DKIM signatures made, by where the private-key operation ran: always event_loop (each"
    " worker signs on its own loop; the label stays for dashboards that group by it).",
    ["where"],
)
POOL_THROTTLED = Counter(
    "postern_pool_throttled_total",
    "Sends held back by a pool's limit (rate, daily) or met with an upstream throttling "
    "reply that halved the pool's concurrency (backoff), or by a warmup (warmup_hourly, "
    "warmup_daily, warmup_paused).",
    ["pool", "reason"],
)
WARMUP_PAUSED = Counter(
    "postern_warmup_paused_total",
    "Warmups paused by Postern itself: a bounce or complaint spike, or a receiver's "
    "throttling replies (a person's pauses are not counted).",
    ["kind", "reason"],
)
POOL_RATE_LIMIT = Gauge(
    "postern_pool_rate_limit",
    "A pool's configured rate in sends per second (0 = none).",
    ["pool"],
    multiprocess_mode="mostrecent",
)
STORAGE_WRITE_FAILURES = Counter(
    "postern_storage_write_failures_total",
    "Commits the database failed (nothing of them stored), by reason: full (no space: "
    "ENOSPC, SQLITE_FULL, PostgreSQL disk_full) or error (locked, I/O, unreachable).",
    ["reason"],
)
for _reason in ("full", "error"):  # exported as 0 before the first failure
    STORAGE_WRITE_FAILURES.labels(reason=_reason)
STORAGE_COMMIT_SECONDS = Histogram(
    "postern_storage_commit_seconds",
    "Group commits of the storage writer, from starting one to its return on the event loop: "
    "the wait for SQLite's write lock, the SQL, the fsync (a job waits for this and for the "
    "commit before it, if one was under way).",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5),
)
STORAGE_COMMIT_JOBS = Counter(
    "postern_storage_commit_jobs_total",
    "Writes the group commits carried (a message stored, an attempt recorded, a claim): "
    "divided by postern_storage_commit_seconds_count, the writes that shared each fsync.",
)
STORAGE_LOCK_WAIT = Counter(
    "postern_storage_lock_wait_seconds_total",
    "SQLite: time this process's write transactions waited for the write lock another "
    "process held (the other workers of serve, a CLI command), waits that timed out "
    "included; stays 0 on PostgreSQL.",
)
STORAGE_LOCK_HELD = Counter(
    "postern_storage_lock_held_seconds_total",
    "SQLite: time this process's write transactions held the write lock (the SQL, the "
    "fsync, any wait for the GIL between); its rate summed over the workers is the lock's "
    "busy share: near 1, writes queue on it however many workers there are. Stays 0 on "
    "PostgreSQL.",
)
EVENT_LOOP_LAG = Histogram(
    "postern_event_loop_lag_seconds",
    "How late the event loop woke a 50 ms timer (what held it: a long callback, a pause).",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5),
)
EVENT_LOOP_LAG_MAX = Gauge(
    "postern_event_loop_lag_max_seconds",
    "The worst event-loop lag since the process started (with workers: of any worker).",
    multiprocess_mode="max",
)
BOUNCE_REPORTS = Counter(
    "postern_bounce_reports_total",
    "Reports (bounces, complaints, auto-replies) that came in, by way in and result.",
    ["source", "result"],
)
BOUNCE_CLASSES = Counter(
    "postern_bounce_classes_total",
    "Entries of processed reports applied to a matched recipient, by class (hard, soft, "
    "policy, complaint); an operator's reclassifying counts the new class.",
    ["class"],
)
for _cls in ("hard", "soft", "policy", "complaint"):  # exported as 0 before the first
    BOUNCE_CLASSES.labels(**{"class": _cls})
BLOCKLIST_SUBJECTS = Gauge(
    "postern_blocklist_subjects",
    "Sending IPs and domains by their latest DNSBL verdict (clean, listed, unknown).",
    ["status"],
    multiprocess_mode="mostrecent",  # set in worker 0 alone
)
BLOCKLIST_COMPLETED = Gauge(
    "postern_blocklist_last_completed_timestamp_seconds",
    "When the last whole DNSBL round completed, on any node (0: never).",
    multiprocess_mode="mostrecent",  # set in worker 0 alone
)
REPUTATION_SCORE = Gauge(
    "postern_reputation_score",
    "Reputation score (0-100) of each account, pool and domain, as of the last evaluation on "
    "the node that holds its lease (absent while collecting).",
    ["kind", "subject"],
    multiprocess_mode="mostrecent",  # set in worker 0 alone
)
REPUTATION_POINTS = Gauge(
    "postern_reputation_points",
    "Points each signal costs a subject's reputation score.",
    ["kind", "subject", "signal"],
    multiprocess_mode="mostrecent",  # set in worker 0 alone
)
REPUTATION_VALUE = Gauge(
    "postern_reputation_signal",
    "Each signal's value behind a reputation score (a rate, a count of listings, 1 when a "
    "record is missing).",
    ["kind", "subject", "signal"],
    multiprocess_mode="mostrecent",  # set in worker 0 alone
)


def clear(*gauges: Gauge) -> None:
    """Drop every labelled sample of `gauges`, so that what is gone stops being exported.
    prometheus-client cannot drop samples from its multiprocess files (clear() warns on
    stderr each time and keeps them): with workers the last values stay until set again or
    the node restarts."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return
    for gauge in gauges:
        gauge.clear()


def node_families(*metrics: MetricWrapperBase) -> list[Metric]:
    """The families of `metrics` as /metrics answers them: this process's, or with workers
    every worker's summed (a page that read its own process's showed worker 0's share)."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return [family for metric in metrics for family in metric.collect()]
    from prometheus_client.multiprocess import MultiProcessCollector

    names = {family.name for metric in metrics for family in metric.describe()}
    return [family for family in MultiProcessCollector(None).collect() if family.name in names]


def exposition() -> bytes:
    """What /metrics answers: this process's metrics, or with workers every worker's summed
    (their files in PROMETHEUS_MULTIPROC_DIR, which the supervisor made)."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return generate_latest()
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    return generate_latest(registry)
