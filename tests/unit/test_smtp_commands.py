"""What the SMTP door follows line for line, pinned: gateway.smtpd.commands follows aiosmtpd
1.4.6's command loop (and the push it ends in), and PosternSMTP.push skips asyncio 3.11's
StreamWriter.drain when drain would return at once. An upgrade that changes one of them
fails here, to be read and carried over, never silently left behind (a fix upstream would
be missing, or a drain that now waits would be skipped)."""

from __future__ import annotations

import asyncio.streams
import hashlib
import inspect
from collections.abc import Callable
from typing import Any

import aiosmtpd
from aiosmtpd.smtp import SMTP

FOLLOWED: dict[str, tuple[Callable[..., Any], str]] = {  # sha256 of inspect.getsource
    "aiosmtpd SMTP._handle_client": (
        SMTP._handle_client,
        "0e4d096403af6c74c87b2fe722c213884e2140a9388e95feb05aec2f39e05556",
    ),
    "aiosmtpd SMTP.push": (
        SMTP.push,
        "15f4f1de5e30c337e3df529f7b5794d3dd071f6c32ddf53bf21248c6e2277c48",
    ),
    "asyncio StreamWriter.drain": (
        asyncio.streams.StreamWriter.drain,
        "31d717c85b1be4873d76e70a0759f3c0c4efd49a1cf67d9ae607d2e8662944ad",
    ),
    "asyncio FlowControlMixin._drain_helper": (
        asyncio.streams.FlowControlMixin._drain_helper,  # type: ignore[attr-defined]
        "567c79b19c9530584449fc89ad43b0603b19bd0fbc1409cebf9f37a71d6ef90c",
    ),
}


def test_the_followed_source_is_unchanged() -> None:
    changed = [
        name
        for name, (function, digest) in FOLLOWED.items()
        if hashlib.sha256(inspect.getsource(function).encode()).hexdigest() != digest
    ]
    assert not changed, (
        f"changed (aiosmtpd {aiosmtpd.__version__}): {changed}: carry the change over"
        " (gateway.smtpd.commands, PosternSMTP._must_drain), then update the digest"
    )
