"""dir() of an SMTP session and of its handler: the hook names aiosmtpd looks for, alone.

aiosmtpd's `SMTP.__init__` finds its hooks again at every new connection: the names
starting `auth_` by `inspect.getmembers` of the session and of its handler (which reads
every attribute of both, properties included), `handle_` by `dir()` of the handler and
`smtp_` by `dir()` of the session. That was about 70 % of a connection's set-up in the
server (cProfile, 2,000 connections: 1.5 s of 2.1 s), ~0.2 ms a connection on a 2-core
EPYC, paid by every client that opens a connection per message, as most application
libraries do. With `dir()` answering those names alone (the class's, listed as the class
is made, and the instance's own), aiosmtpd finds exactly the hooks it found before
(tests/unit/test_hook_names.py compares them with a full dir()). Nothing else here calls
dir() on these objects; a debugger's completion sees the hooks only, and a hook added to
a class after it is made (a test's monkeypatch) is not listed.

It also reads `inspect.signature` of the handler's `handle_EHLO` at every connection (to
tell its old four-argument form): the function carries its signature, computed once as the
class is made, from which `inspect.signature` builds the bound method's at a third of the
cost."""

from __future__ import annotations

import inspect

HOOK_PREFIXES = ("auth_", "smtp_", "handle_")


class HookNamesDir:
    """A mixin: dir() lists the attributes named like aiosmtpd's hooks, and only those."""

    _hook_names: tuple[str, ...] = ()  # the class's, as it was made

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        names = (name for name in type.__dir__(cls) if name.startswith(HOOK_PREFIXES))
        cls._hook_names = tuple(names)
        ehlo = cls.__dict__.get("handle_EHLO")
        if inspect.isfunction(ehlo):
            ehlo.__signature__ = inspect.signature(ehlo)  # type: ignore[attr-defined]

    def __dir__(self) -> list[str]:
        names = self._hook_names
        own = [n for n in vars(self) if n.startswith(HOOK_PREFIXES) and n not in names]
        return [*names, *own]
