"""dir() of an SMTP session and of its handler: the hook names aiosmtpd looks for, alone.

aiosmtpd's `SMTP.__init__` finds its hooks again at every new connection: the names
starting `auth_` by `inspect.getmembers` of the session and of its handler (which reads
every attribute of both, properties included), `handle_` by `dir()` of the handler and
`smtp_` by `dir()` of the session. That was three quarters of a connection's set-up in
the server (cProfile, 2,000 connections: 1.5 s of 2.1 s), ~0.35 ms a connection on a
2-core EPYC, paid by every client that opens a connection per message, as most
application libraries do. With `dir()` answering those names alone (the class's, found
once per class, and the instance's own), aiosmtpd finds exactly the hooks it found
before (tests/unit/test_hook_names.py compares them with a full dir()). Nothing else here
calls dir() on these objects; a debugger's completion sees the hooks only.

It also reads `inspect.signature` of the handler's `handle_EHLO` at every connection (to
tell its old four-argument form): the function carries its signature here, computed once
as the class is made, which `inspect.signature` returns as it is."""

from __future__ import annotations

import inspect

HOOK_PREFIXES = ("auth_", "smtp_", "handle_")


class HookNamesDir:
    """A mixin: dir() lists the attributes named like aiosmtpd's hooks, and only those."""

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        ehlo = cls.__dict__.get("handle_EHLO")
        if inspect.isfunction(ehlo):
            ehlo.__signature__ = inspect.signature(ehlo)  # type: ignore[attr-defined]

    def __dir__(self) -> list[str]:
        names = _class_hook_names(type(self))
        own = [n for n in vars(self) if n.startswith(HOOK_PREFIXES) and n not in names]
        return [*names, *own]


_CLASS_HOOK_NAMES: dict[type, tuple[str, ...]] = {}


def _class_hook_names(cls: type) -> tuple[str, ...]:
    names = _CLASS_HOOK_NAMES.get(cls)
    if names is None:
        names = tuple(name for name in type.__dir__(cls) if name.startswith(HOOK_PREFIXES))
        _CLASS_HOOK_NAMES[cls] = names
    return names
