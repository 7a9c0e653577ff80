"""What the tests share. Fixtures live in the conftest.py files; the code behind them lives
here, so that no test module imports from another test module or from a conftest.

Peers Postern talks to:
    sink              the upstream: an aiosmtpd server that accepts, answers 4xx/5xx, hangs or drops
    hostile           an SMTP server that floods one stage with `250-` lines that never end
    dnsserver         a loopback DNS server whose answers the test sets
    webhook_receiver  an HTTP server that checks each webhook's signature and records it
    imap              a real IMAP server: Debian's dovecot with its own config, users and maildirs
Stand-ins for parts of Postern:
    ingest            RecordingIngest: the report processing's interface, recording each hand-over
Clients a test talks to Postern with:
    smtp              smtp_send (stdlib, one transaction), RawClient (exact bytes), Dialogue (AUTH)
    api               the HTTP API of an in-process Service and an httpx client for it
    resources         pools, domains and aliases made through that API
Postern in the test's process:
    service           configs pointing at a sink, ManagedService, ServiceFactory, metric, wait_until
    rows              rows of a Service's SQLite database, read with the stdlib driver
    stored            rows written to and read from a storage Database directly (any backend)
    databases         PostgreSQL for tests: reachable or skipped, emptied and held by one test
    dkim              DKIM keys as `postern dkim` makes them, their records for dkimpy
Postern as a process:
    processes         the repo root, free ports, the child's argv and environment
    serve             a `postern serve` handle, its config, and the Launcher both fixtures use
    attacks           what the attack reproductions poke a running process with and measure
    crashloop         the kill-and-restart driver of the crash-loop test and bench/soak.py

Only databases imports pytest; the modules bench/ uses (processes, crashloop, sink, hostile,
dnsserver) never do.
"""
