"""Webhook pieces without a service: signatures, URL checks, the [webhooks] config."""

from __future__ import annotations

import time

import pytest

from gateway.config import ConfigError, from_dict
from gateway.webhooks.signing import new_secret, signature, verify
from gateway.webhooks.urls import BadUrl, parse


def test_signature_verifies_and_refuses_tampering() -> None:
    secret = new_secret()
    assert secret.startswith("whsec_") and len(secret) == 6 + 43
    now = int(time.time())
    header = signature(secret, now, b'{"events":[]}')
    assert verify(secret, header, b'{"events":[]}', now)
    assert not verify(secret, header, b'{"events":[1]}', now)
    assert not verify(new_secret(), header, b'{"events":[]}', now)
    assert not verify(secret, header, b'{"events":[]}', now + 301)  # too old: a replay
    assert not verify(secret, "garbage", b"", now)


@pytest.mark.parametrize(
    "url",
    ["ftp://x.test/", "http://u:p@x.test/", "http:///path", "http://x.test/a b", "x.test/hook",
     "http://x.test/#frag", "http://" + "a" * 2050 + ".test/"],
)  # fmt: skip
def test_bad_urls(url: str) -> None:
    with pytest.raises(BadUrl):
        parse(url)


def test_good_url() -> None:
    assert parse("https://hooks.example.com:8443/p?q=1").port == 8443


def test_webhooks_config() -> None:
    config = from_dict({"webhooks": {"max_age": "2d", "timeout": "5s", "batch_size": 10}})
    assert (config.webhooks.max_age, config.webhooks.timeout) == (172800.0, 5.0)
    assert config.webhooks.enabled
    with pytest.raises(ConfigError, match="24h"):
        from_dict({"webhooks": {"max_age": "23h"}})
    with pytest.raises(ConfigError, match="batch_size"):
        from_dict({"webhooks": {"batch_size": 0}})
