"""The import contracts: the layers hold, checked on every import statement of the code.

    gateway.process   the composition root: service, CLI, logging; the only code importing
          |           api and web
     api   web        the HTTP door; the dashboard beside it (web may import api, api never web)
          |
       gateway        smtpd (the SMTP door), intake, routing, queue, delivery, dkim, webhooks...
          |
       storage        tables and SQL; imports nothing above it

Inside gateway, intake and delivery meet only through the hand-off interface and storage (the
queue, which holds that interface, sits below both), the routing engine knows nothing of the
doors or of who calls it, the two doors (smtpd and api) do not know each other, and the API
reaches delivery only where ALLOWED says why. The dashboard's pages and the API's routes are
two doors to the same work: what both do lives in api/*_ops.py, so a page never imports a
route module (the sign-in page apart, which is the API's login on purpose), nor anything of
api's that is private. Every import counts, at module level or inside
a function, under TYPE_CHECKING or not: a deferred import is still a dependency.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("gateway", "api", "storage", "web")


def modules() -> Iterator[tuple[str, Path]]:
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            yield ".".join(parts), path


def imports_of(name: str, path: Path) -> Iterator[tuple[int, str]]:
    """(line, imported module) for every import in the file, relative ones resolved."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, base] if base else anchor)
            yield node.lineno, base
            for alias in node.names:  # `from gateway import dkim` imports gateway.dkim
                yield node.lineno, f"{base}.{alias.name}"


def within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


# (importer, imported, why): no module within the first may import one within the second.
FORBIDDEN: list[tuple[str, str, str]] = [
    ("storage", "gateway", "storage is the bottom layer"),
    ("storage", "api", "storage is the bottom layer"),
    ("storage", "web", "storage is the bottom layer"),
    ("api", "gateway.process", "only the composition root sits above api"),
    ("api", "web", "the dashboard sits beside the API, on it: never the other way"),
    ("web", "gateway.process", "only the composition root sits above web"),
    ("web", "gateway.delivery", "the dashboard reaches delivery through api.pool_ops only"),
    ("web", "gateway.smtpd", "the dashboard is a door of its own, beside the API's"),
    ("web", "api.routes", "what both doors do lives in api/*_ops.py; pages never import routes"),
    ("gateway.intake", "gateway.delivery", "intake hands over through the hand-off interface"),
    ("gateway.delivery", "gateway.intake", "delivery takes mail from storage and the hand-off"),
    ("gateway.queue", "gateway.intake", "the queue sits below intake and delivery"),
    ("gateway.queue", "gateway.delivery", "the queue sits below intake and delivery"),
    ("gateway.queue", "gateway.smtpd", "the queue knows nothing of the doors"),
    ("api", "gateway.delivery", "the API changes pools through storage and LivePools"),
    ("api", "gateway.smtpd", "the two doors do not know each other"),
    ("gateway.smtpd", "gateway.delivery", "a door hands mail to intake, never to delivery"),
    ("gateway.routing", "gateway.smtpd", "the routing engine knows nothing of the doors"),
    ("gateway.routing", "gateway.intake", "the routing engine knows nothing of its callers"),
    ("gateway.routing", "gateway.delivery", "the routing engine knows nothing of its callers"),
    ("gateway.accounts", "gateway.smtpd", "connected accounts know nothing of the doors"),
    ("gateway.accounts", "gateway.intake", "proving and syncing a mailbox sends no mail"),
    ("gateway.accounts", "gateway.delivery", "accounts reach delivery only where ALLOWED says"),
    (
        "gateway.reports",
        "gateway.smtpd",
        "the ways in know the processing's interface, not it them",
    ),
    ("gateway.reports", "gateway.accounts", "the ways in know the processing's interface only"),
    ("gateway.reports", "storage", "an interface: what implements it stores"),
    ("gateway.smtpd.bounce_listener", "gateway.intake", "a bounce listener queues nothing"),
    ("gateway.smtpd.bounce_listener", "gateway.queue", "a bounce listener queues nothing"),
    ("gateway.bounces", "gateway.smtpd", "reports come in through BounceIngest, not a door"),
    ("gateway.bounces", "gateway.intake", "processing a report sends no mail"),
    ("gateway.bounces", "gateway.delivery", "processing a report sends no mail"),
    ("gateway.bounces", "gateway.accounts", "the IMAP sync calls ingest, never the reverse"),
]
# (package, the only Postern modules it may import besides its own, why): the standard
# library is always allowed.
ONLY: list[tuple[str, tuple[str, ...], str]] = [
    (
        "gateway.bounces",
        ("gateway.errors", "gateway.addresses"),
        "the bounce parser is a pure library: stdlib, errors and addresses only",
    ),
]
# Modules inside an ONLY package that the rule does not bind: what is built on the pure
# library and does I/O (the FORBIDDEN rules still bind them).
EXEMPT = (
    # Bounce processing: stores, matches and applies reports through storage and the queue.
    "gateway.bounces.ingest",
    "gateway.bounces.effects",
)
_BELOW_ROOT = "gateway, outside the composition root"
# (importer, imported): the exceptions, each with its reason.
ALLOWED = {
    # The pool connection test is delivery's SMTP client run on a pool the API is editing.
    ("api.pool_ops", "gateway.delivery.probe"),
    # LivePools hands the API a live pool's settings (for that test): delivery's own type.
    ("api.management", "gateway.delivery.upstream"),
    # An account's SMTP AUTH is proved by the same dialogue as a pool's connection test.
    ("gateway.accounts.verify", "gateway.delivery.probe"),
    # Signing in from a page is POST /auth/login itself (throttling, rotation, the cookie).
    ("web.pages.auth", "api.routes.auth"),
}


def broken_rules(name: str, imported: str) -> Iterator[str]:
    if within(name, "gateway") and not within(name, "gateway.process"):
        for above in ("api", "web", "gateway.process"):
            if within(imported, above):
                yield f"{_BELOW_ROOT}, may not import {above}"
    for package, may_import, why in ONLY:
        exempt = any(within(name, module) for module in EXEMPT)
        if within(name, package) and not exempt and not _only_allows(package, may_import, imported):
            yield why
    allowed = any(name == a and within(imported, b) for a, b in ALLOWED)
    for importer, forbidden, why in FORBIDDEN:
        if within(name, importer) and within(imported, forbidden) and not allowed:
            yield why


def _only_allows(package: str, may_import: tuple[str, ...], imported: str) -> bool:
    """Whether `imported` is the standard library, `package` itself, or one of `may_import`;
    never a module EXEMPT takes out of the rule (a pure module may not lean on those)."""
    if imported.split(".")[0] in sys.stdlib_module_names:
        return True
    if any(within(imported, module) for module in EXEMPT):
        return False
    return any(within(imported, allowed) for allowed in (package, *may_import))


def violations() -> list[str]:
    found: dict[tuple[str, int, str], str] = {}  # one line per statement and rule
    for name, path in modules():
        shown = str(path.relative_to(REPO) if path.is_relative_to(REPO) else path)
        for line, imported in imports_of(name, path):
            for why in broken_rules(name, imported):
                text = f"{shown}:{line}: {name} imports {imported} ({why})"
                found.setdefault((shown, line, why), text)
    return sorted(found.values())


def test_the_layers_hold() -> None:
    broken = violations()
    assert not broken, "import contracts broken:\n" + "\n".join(broken)


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def private_uses(path: Path) -> Iterator[tuple[int, str]]:
    """(line, what) for every private name of api the file reaches: imported from an api
    module, or read as an attribute of a name an api module is bound to."""
    tree = ast.parse(path.read_text(), str(path))
    bound: set[str] = set()  # local names of api modules
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            bound |= {a.asname for a in node.names if a.asname and within(a.name, "api")}
        elif isinstance(node, ast.ImportFrom) and node.module and within(node.module, "api"):
            for alias in node.names:
                if _is_private(alias.name):
                    yield node.lineno, f"{node.module}.{alias.name}"
                bound.add(alias.asname or alias.name)
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in bound
            and _is_private(node.attr)
        ):
            yield node.lineno, f"{node.value.id}.{node.attr}"


def test_pages_use_nothing_private_of_the_api() -> None:
    """A page calls api's public functions (api/*_ops.py): a private helper of a route is
    that route's to change."""
    found = [
        f"{path.relative_to(REPO)}:{line}: {what}"
        for name, path in modules()
        if within(name, "web")
        for line, what in private_uses(path)
    ]
    assert not found, "pages reaching into api's privates:\n" + "\n".join(found)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from api.routes import aliases as a\na._visible(1)", True),
        ("from api import alias_ops\nalias_ops._bad('x', 'y')", True),
        ("from api.alias_ops import _bad", True),
        ("import api.alias_ops as ops\nops._bad", True),
        ("from api import alias_ops\nalias_ops.get(1)", False),
        ("from web import render\nrender._env", False),
    ],
)
def test_the_private_check_sees_each_kind_of_use(
    tmp_path: Path, source: str, expected: bool
) -> None:
    path = tmp_path / "m.py"
    path.write_text(source + "\n")
    assert bool(list(private_uses(path))) is expected


@pytest.mark.parametrize(
    ("importer", "source", "expected"),
    [
        ("storage.x", "from gateway.addresses import normalise", True),
        ("storage.x", "def f():\n    from gateway import dkim", True),
        ("gateway.queue.store", "from api import errors", True),
        ("gateway.process.service", "from api import app", False),
        ("api.app", "from gateway.process import cli", True),
        ("gateway.intake.pipeline", "from ..delivery import workers", True),
        ("gateway.intake.pipeline", "from gateway.queue import handoff", False),
        ("gateway.queue.leak", "from gateway.delivery import workers", True),
        ("api.routes.pools", "from gateway.delivery import upstream", True),
        ("api.management", "from gateway.delivery.upstream import PoolSettings", False),
        ("api.app", "from web.app import dashboard", True),
        ("gateway.accounts.sync", "from api import errors", True),
        ("gateway.accounts.verify", "from gateway.delivery.probe import probe", False),
        ("gateway.accounts.sync", "from gateway.delivery import workers", True),
        ("gateway.queue.store", "from web import render", True),
        ("web.pages.pools", "from gateway.delivery import probe", True),
        ("web.app", "from gateway.process import service", True),
        ("web.pages.pools", "from api import pool_ops", False),
        ("web.pages.aliases", "from api.routes import aliases", True),
        ("web.pages.keys", "def f():\n    from api.routes.keys import SCOPE", True),
        ("web.pages.aliases", "from api import alias_ops", False),
        ("web.pages.auth", "from api.routes.auth import login", False),
        ("web.pages.users", "from api.routes.auth import login", True),
        ("gateway.process.service", "from web.app import dashboard", False),
        ("gateway.bounces.report", "import email.parser", False),
        ("gateway.bounces.rules", "from gateway.errors import ConfigError", False),
        ("gateway.bounces.dsn", "from gateway.addresses import mailbox_key", False),
        ("gateway.bounces.dsn", "from . import mime", False),
        ("gateway.bounces.report", "def f():\n    from storage import db", True),
        ("gateway.bounces.report", "from gateway.queue import suppressions", True),
        ("gateway.bounces.rules", "import idna", True),
        ("gateway.reports", "from gateway import metrics", False),
        ("gateway.reports", "from gateway.accounts import inbox", True),
        ("gateway.smtpd.bounce_listener", "from gateway.intake import pipeline", True),
        ("gateway.smtpd.bounce_listener", "from gateway.reports import Ingest", False),
        ("gateway.bounces.ingest", "from storage import db", False),
        ("gateway.bounces.ingest", "from gateway.queue import events", False),
        ("gateway.bounces.ingest", "from gateway.delivery import workers", True),
        ("gateway.bounces.report", "from gateway.bounces import ingest", True),
        ("gateway.bounces.verp", "from . import effects", True),
    ],
)
def test_the_check_sees_each_kind_of_import(
    tmp_path: Path, importer: str, source: str, expected: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The contract check itself: absolute, deferred and relative imports all count."""
    path = tmp_path / "m.py"
    path.write_text(source + "\n")
    monkeypatch.setattr(f"{__name__}.modules", lambda: iter([(importer, path)]))
    assert bool(violations()) is expected
