"""dir() of the SMTP session and of its handlers answers aiosmtpd's hook names alone
(gateway.smtpd.hook_names): aiosmtpd must find exactly the hooks a full dir() would give."""

from __future__ import annotations

import hashlib
import inspect
from types import SimpleNamespace
from typing import Any, cast

import aiosmtpd
import aiosmtpd.smtp
from aiosmtpd.smtp import SMTP

from gateway.smtpd.bounce_listener import BounceHandler
from gateway.smtpd.hook_names import HOOK_PREFIXES
from gateway.smtpd.limits import ListenerLimits
from gateway.smtpd.server import PosternHandler, PosternSMTP

LIMITS = ListenerLimits(
    hostname="postern.test", max_message_size=1 << 20, max_recipients=10,
    max_connections=10, idle_timeout=30.0,
)  # fmt: skip
# aiosmtpd 1.4.6's SMTP.__init__ (sha256 of inspect.getsource): it looks the hooks up by
# these prefixes alone. An upgrade that changes it fails here, to be read again.
INIT_DIGEST = "8a9ca80f23ad"  # the first 12 hex digits


def full_dir(obj: object) -> set[str]:
    return set(object.__dir__(obj))


def test_aiosmtpd_init_is_the_one_read() -> None:
    """...and the only place aiosmtpd lists members (an upgrade that lists them elsewhere
    would see only the hook names there)."""
    digest = hashlib.sha256(inspect.getsource(SMTP.__init__).encode()).hexdigest()
    assert digest[:12] == INIT_DIGEST, (
        f"aiosmtpd {aiosmtpd.__version__} changed SMTP.__init__: check which names it looks"
        " hooks up by (gateway.smtpd.hook_names.HOOK_PREFIXES), then update the digest"
    )
    source = inspect.getsource(aiosmtpd.smtp)
    calls = [source.count(call) for call in ("dir(", "getmembers(", "signature(")]
    assert calls == [2, 1, 1], f"aiosmtpd {aiosmtpd.__version__}: read its new calls"


async def test_a_session_finds_the_hooks_a_full_dir_gives() -> None:
    for handler in (
        PosternHandler(cast(Any, None), LIMITS),
        BounceHandler(cast(Any, None), cast(Any, SimpleNamespace(verp=None)), LIMITS),
    ):
        session = PosternSMTP(handler, LIMITS)
        for obj in (session, handler):
            hooks = {name for name in full_dir(obj) if name.startswith(HOOK_PREFIXES)}
            assert set(dir(obj)) == hooks
        assert set(session._smtp_methods) == {
            name.removeprefix("smtp_") for name in full_dir(session) if name.startswith("smtp_")
        }
        assert set(session._handle_hooks) == {
            name.removeprefix("handle_") for name in full_dir(handler) if name.startswith("handle_")
        }
        mechanisms = {  # as aiosmtpd names them, from every auth_ member of either
            getattr(getattr(obj, name), "__auth_mechanism_name__", None)
            or name.replace("auth_", "").replace("__", "-")
            for obj in (session, handler)
            for name in full_dir(obj)
            if name.startswith("auth_")
        }
        assert set(session._auth_methods) == mechanisms and mechanisms
        if hasattr(handler, "handle_EHLO"):  # the new, five-argument hook, as before
            assert session._ehlo_hook_ver == "new"
            assert "__signature__" in vars(type(handler).handle_EHLO)
        session.auth_EXTRA = None  # an instance's own attribute is listed too
        assert "auth_EXTRA" in dir(session)
