"""SSRF decided where the connection is made, against a real `postern serve`.

What an attacker did: a pool host name that resolved to an allowed address when it was
created, then (TTL 0) to a denied one; `/test` refused it, but delivery resolved the name
again on its own and relayed the mail to the denied 127.0.0.1. And `0.0.0.0` (which reaches
this host) passed a deny list that held 127.0.0.0/8.

Here the denied address is 127.0.0.3 (`[security] deny_networks`), with an SMTP sink on it
that counts every connection: the attack succeeded if it saw one. The allowed address is
127.0.0.1. Names resolve through a loopback DNS server the test controls (`[dns]
nameservers`, which the guard uses), so it can change its answer between check and connect.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.attacks import admin_key, assert_deferred, http, submit, wait_for
from tests.support.dnsserver import DnsServer
from tests.support.serve import Postern, Serve
from tests.support.sink import Sink

pytestmark = pytest.mark.timeout(90)

DENIED = "127.0.0.3"
POOLS = "/api/v1/smtp-pools"


@pytest.fixture
def denied_sink(sink: Sink) -> Iterator[Sink]:
    """A sink on the denied address, on the same port as `sink` (a pool has one port)."""
    secret = Sink(host=DENIED, port=sink.port).start()
    try:
        yield secret
    finally:
        secret.stop()


def guarded(dns: DnsServer, **tables: Any) -> dict[str, Any]:
    return {
        "dns": {"nameservers": [dns.nameserver]},
        "security": {"deny_networks": [f"{DENIED}/32"]},
        "webhooks": {"allow_private": True},  # the allowed receiver is on 127.0.0.1
        **tables,
    }


def sink_pool(host: str, sink: Sink) -> dict[str, Any]:
    return {"name": "relay", "host": host, "port": sink.port, "encryption": "none",
            "is_default": True}  # fmt: skip


def test_a_name_rebound_after_the_pool_checks_cannot_redirect_delivery(
    serve: Serve, dns: DnsServer, sink: Sink, denied_sink: Sink
) -> None:
    dns.add("relay.rebind.test", "A", "127.0.0.1", ttl=0)
    postern = serve(guarded(dns))
    key = admin_key(postern)
    status, pool = http(postern, "POST", POOLS, key, sink_pool("relay.rebind.test", sink))
    assert status == 201, pool  # checked: 127.0.0.1 is allowed

    dns.set("relay.rebind.test", "A", DENIED, ttl=0)  # the attacker rebinds the name
    status, tested = http(postern, "POST", f"{POOLS}/{pool['id']}/test", key, {})
    assert (status, tested.get("code")) == (400, "host_not_allowed"), tested

    message_id = submit(postern, "someone@example.org")
    assert_deferred(postern, message_id, "denied network")
    assert denied_sink.connections_total == 0, "mail went to the denied address"
    assert sink.connections_total == 0
    assert "not connecting" in postern.stderr()


def test_delivery_connects_to_the_address_it_checked_never_to_a_second_answer(
    serve: Serve, dns: DnsServer, sink: Sink, denied_sink: Sink
) -> None:
    """The name answers 127.0.0.1 once, then 127.0.0.3: one resolution per connection,
    checked and dialled, so the first connection goes to 127.0.0.1; the next one (after
    the idle session closed) is refused; none reaches 127.0.0.3."""
    dns.in_turn("flip.rebind.test", "A", "127.0.0.1", DENIED)
    postern = serve(guarded(dns), pools=[sink_pool("flip.rebind.test", sink)])

    submit(postern, "first@example.org")
    assert sink.wait_for(1, timeout=10), postern.stderr()[-2000:]
    assert dns.count("flip.rebind.test", "A") == 1

    time.sleep(2.5)  # past idle_timeout: the next message needs a new connection
    second = submit(postern, "second@example.org")
    assert_deferred(postern, second, "denied network")
    assert denied_sink.connections_total == 0, "a second resolution was dialled"
    assert len(sink.messages) == 1


def test_a_webhook_whose_name_rebinds_is_not_posted_to_the_denied_address(
    serve: Serve, dns: DnsServer, sink: Sink
) -> None:
    catcher = Sink(host=DENIED).start()  # counts any connection to the denied address
    try:
        dns.in_turn("hook.rebind.test", "A", "127.0.0.1", DENIED)
        postern = serve(guarded(dns), pools=[sink_pool("127.0.0.1", sink)])
        key = admin_key(postern)
        url = f"http://hook.rebind.test:{catcher.port}/hook"
        status, created = http(postern, "POST", "/api/v1/webhooks", key, {"url": url})
        assert status == 201, created  # checked while the name said 127.0.0.1
        hook_id = created["webhook"]["id"]

        submit(postern, "someone@example.org")  # its events are POSTed to the webhook

        def refused() -> bool:
            _, shown = http(postern, "GET", f"/api/v1/webhooks/{hook_id}/deliveries", key)
            return any("denied network" in (row["error"] or "") for row in shown["deliveries"])

        assert wait_for(refused, timeout=15), postern.stderr()[-2000:]
        assert catcher.connections_total == 0
    finally:
        catcher.stop()


UNSPECIFIED = ["0.0.0.0", "0", "::", "[::]", "::ffff:0.0.0.0", "0.0.0.7", "[::ffff:0:0]"]


def test_unspecified_addresses_are_refused_wherever_a_host_is_given(serve: Serve) -> None:
    """They reach this host like 127.0.0.1 does: never an upstream or a webhook."""
    postern = serve({"security": {"deny_networks": ["127.0.0.0/8", "::1/128"]}})
    key = admin_key(postern)
    for host in UNSPECIFIED:
        body = {"name": "zero", "host": host, "port": 2525, "encryption": "none"}
        status, answer = http(postern, "POST", POOLS, key, body)
        assert (status, answer.get("code")) == (400, "host_not_allowed"), (host, answer)
    for host in ("0.0.0.0", "0", "[::]", "[::ffff:0.0.0.0]"):
        url = f"http://{host}:8080/hook"
        status, answer = http(postern, "POST", "/api/v1/webhooks", key, {"url": url})
        assert (status, answer.get("code")) == (400, "host_not_allowed"), (url, answer)


@pytest.mark.parametrize("host", ["0.0.0.0", "::ffff:0.0.0.0"])
def test_a_config_pool_at_an_unspecified_address_is_not_connected(
    serve: Serve, sink: Sink, host: str
) -> None:
    """Config pools are not checked when loaded: delivery's guard refuses them. Dialled,
    0.0.0.0 would reach the sink listening on 127.0.0.1."""
    postern: Postern = serve(pools=[sink_pool(host, sink)])
    message_id = submit(postern, "someone@example.org")
    assert_deferred(postern, message_id, "denied network (0.0.0.0/8)")
    assert sink.connections_total == 0


@pytest.mark.parametrize(
    ("host", "encryption", "delivered"),
    [("sink.test", "tls", True), ("sink.test", "ssl", True), ("impostor.test", "tls", False)],
)
def test_tls_to_a_pool_dials_the_checked_address_and_verifies_the_name(
    serve: Serve,
    dns: DnsServer,
    monkeypatch: pytest.MonkeyPatch,
    host: str,
    encryption: str,
    delivered: bool,
) -> None:
    """Both names resolve to 127.0.0.1; the sink's certificate names sink.test (and
    127.0.0.1), so only the name, sent as SNI and checked against the certificate, can tell
    them apart."""
    tls_sink = Sink(tls="starttls" if encryption == "tls" else "implicit").start()
    try:
        dns.add(host, "A", "127.0.0.1")
        monkeypatch.setenv("SSL_CERT_FILE", str(tls_sink.cert_path))  # postern trusts it
        pool = {**sink_pool(host, tls_sink), "encryption": encryption, "tls_verify": True}
        postern = serve(guarded(dns), pools=[pool])
        message_id = submit(postern, "someone@example.org")
        if delivered:
            assert tls_sink.wait_for(1, timeout=10), postern.stderr()[-2000:]
            assert tls_sink.messages[0].tls
        else:
            assert_deferred(postern, message_id, "certificate")
            assert tls_sink.messages == []
    finally:
        tls_sink.stop()
