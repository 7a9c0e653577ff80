"""Sender reputation (issue 21): what the world thinks of the IPs and domains Postern sends
from, measured in the open.

    lists   the DNS blocklists known by name: zone, what each answer code means, test entries
    dnsbl   the scheduled check of every sending IP and domain against those lists (one node
            of many each round, under a lease in storage), its list verification at start,
            and the typed outcome of one query
    score   the score, a pure function over recorded counts and thresholds.toml
    report  each subject's report (score, components, blocklist and warmup state)
    watch   the periodic evaluation that acts on it (gauges, reputation_at_risk, pause)
"""
