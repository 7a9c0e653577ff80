"""An upstream or MX host whose reply never ends (`250-` lines forever) against a real
`postern serve`: the connection is dropped after a bounded reply, the attempt deferred and
logged, Postern's memory stays flat, and everyone else keeps being served.

Found by an attacker: anyone who owns a recipient domain is an MX host Postern connects to
(direct delivery is the default), and the pipelined reply reader collected continuation
lines without limit (96 MB -> 794 MB RSS in 45 s). Each test runs the attack for a few
seconds at 2 MB/s, paced so that Postern reads a few KB at a time (a byte bound on the read
buffer alone does not stop it), with the product's default command timeout (5 minutes: the
timeout is not what may end the flood).
"""

from __future__ import annotations

import time

import pytest

from tests.support.attacks import HealthProbe, assert_deferred, rss_mb, submit
from tests.support.dnsserver import DnsServer
from tests.support.hostile import HostileSmtp, Stage
from tests.support.serve import Postern, Serve

pytestmark = pytest.mark.timeout(120)

ATTACK_SECONDS = 6.0  # long enough for several attempts (retry every second)
FLOOD_CAP = 40_000_000  # bytes; a broken Postern reads this much in ~20 s, then we stop
RSS_GROWTH_MB = 30.0  # bound on what the attack may add to Postern's resident set
PER_FLOOD = 2_000_000  # bytes one flood may get out before Postern hangs up (socket buffers)
DEFAULT_TIMEOUT = {"command_timeout": "5m"}


def endure(postern: Postern, hostile: HostileSmtp, rcpt: str) -> tuple[str, float]:
    """Send one message into the attack and let it run; (message id, RSS growth in MB).
    Meanwhile /healthz must answer and another client must get its message accepted."""
    time.sleep(0.5)  # start-up settles
    baseline = peak = rss_mb(postern.pid)
    with HealthProbe(postern) as probe:
        message_id = submit(postern, rcpt)
        deadline = time.monotonic() + ATTACK_SECONDS
        while time.monotonic() < deadline and hostile.flood_bytes < FLOOD_CAP:
            peak = max(peak, rss_mb(postern.pid))
            time.sleep(0.1)
        submit(postern, f"other+{rcpt}")  # another client, served during the attack
    assert probe.answered > 0 and probe.failed == 0, (probe.answered, probe.failed)
    assert hostile.floods >= 1, "the hostile stage was never reached"
    assert hostile.dropped >= 1, "Postern never hung up on the endless reply"
    assert hostile.flood_bytes / hostile.floods < PER_FLOOD, hostile.flood_bytes
    return message_id, peak - baseline


def hostile_pool(hostile: HostileSmtp) -> list[dict[str, object]]:
    return [
        {"name": "hostile", "host": "127.0.0.1", "port": hostile.port, "encryption": "none",
         "is_default": True},
    ]  # fmt: skip


@pytest.mark.parametrize("stage", ["mail", "data"])
def test_an_endless_reply_from_a_pool_is_cut_and_the_attempt_deferred(
    serve: Serve, stage: Stage
) -> None:
    with HostileSmtp(stage) as hostile:
        postern = serve({"delivery": DEFAULT_TIMEOUT}, pools=hostile_pool(hostile))
        message_id, growth = endure(postern, hostile, "victim@example.org")
    assert growth < RSS_GROWTH_MB, f"RSS grew {growth:.0f} MB"
    assert_deferred(postern, message_id, "reply too long")
    assert "connection dropped, attempt deferred" in postern.stderr()


@pytest.mark.parametrize("stage", ["ehlo", "data"])
def test_an_endless_reply_from_an_mx_host_is_cut_and_the_attempt_deferred(
    serve: Serve, dns: DnsServer, stage: Stage
) -> None:
    """Direct delivery (no pool): the recipient's domain points its MX at the attacker. The
    EHLO reply is read by aiosmtplib (bounded at 32 KiB), the rest by Postern's pipeline."""
    dns.add("attacker.test", "MX", "10 mx.attacker.test.").add("mx.attacker.test", "A", "127.0.0.1")
    with HostileSmtp(stage) as hostile:
        postern = serve(
            {
                "delivery": {**DEFAULT_TIMEOUT, "mx_port": hostile.port, "mx_allow_private": True},
                "dns": {"nameservers": [dns.nameserver]},
            }
        )
        message_id, growth = endure(postern, hostile, "victim@attacker.test")
    assert growth < RSS_GROWTH_MB, f"RSS grew {growth:.0f} MB"
    assert_deferred(postern, message_id, "too long")
