"""Each `postern` command imports only what it needs: a command that reads the database
loads no API, HTTP server, SMTP, DNS or ORM, and reading the config loads no SQLAlchemy.
What is left is measured by bench/cli_start.py; this keeps the heavy parts from creeping
back in through one top-level import.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.processes import REPO, child_env

pytestmark = pytest.mark.timeout(60)

# Run `postern ARGS` in this interpreter, then print every module it imported.
_PROBE = """
import json, sys
from gateway.process.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print(json.dumps(sorted(sys.modules)), file=sys.stderr)
"""

# What no command that only reads or deletes through storage needs.
_SERVER = ("api", "web", "pydantic", "starlette", "uvicorn", "aiosmtpd", "aiosmtplib", "jinja2")
_OTHERS = (
    "dns", "sqlalchemy.orm", "sqlalchemy.ext.asyncio", "prometheus_client", "argon2",
    "email.parser", "gateway.bounces.report",
)  # fmt: skip
# What only some configurations, data or actions need: PostgreSQL's dialect (this database
# is SQLite), the IDNA tables (an internationalised domain), zoneinfo (a [warmup] timezone),
# routing and the queue's message classes (a config with [[routes]], a command that routes,
# delivers or acts on the queue).
_ON_DEMAND = (
    "sqlalchemy.dialects.postgresql", "idna", "zoneinfo",
    "gateway.routing", "gateway.message", "gateway.queue.store",
)  # fmt: skip
_DATABASE_COMMANDS = (
    ("users", "list"),
    ("pools", "list"),
    ("aliases", "list"),
    ("webhooks", "list"),
    ("queue", "list"),
    ("keys", "list"),
    ("suppressions", "list"),
    ("bounces", "list"),
    ("blocklists", "status"),
    ("domains", "list"),  # dnspython only for `domains verify`
    ("dkim", "list"),
)


def _imported(config: Path, *args: str) -> set[str]:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, "--config", str(config), *args],
        cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    return set(json.loads(done.stderr.strip().splitlines()[-1]))


def _found(modules: set[str], roots: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if any(m == r or m.startswith(f"{r}.") for r in roots))


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("cli_imports")
    path = folder / "postern.toml"
    path.write_text(f'[server]\ndata_dir = "{folder / "var"}"\n')
    return path


def test_help_and_check_config_load_no_database_code(config: Path) -> None:
    for args in (("--help",), ("check-config",)):
        modules = _imported(config, *args)
        assert _found(modules, ("sqlalchemy", "storage.db", "dns", "asyncio", *_SERVER)) == []
        assert _found(modules, _ON_DEMAND) == []


@pytest.mark.parametrize("args", _DATABASE_COMMANDS, ids=" ".join)
def test_a_command_that_reads_storage_loads_no_server_dns_or_orm(
    config: Path, args: tuple[str, ...]
) -> None:
    modules = _imported(config, *args, "--json")
    assert "storage.db" in modules  # it did read the database
    assert _found(modules, (*_SERVER, *_OTHERS, *_ON_DEMAND)) == []
    if args == ("queue", "list"):  # a search: no Queue, no writer
        assert _found(modules, ("storage.writer",)) == []


def test_routes_list_loads_the_api_errors_but_no_server_intake_or_dkim(config: Path) -> None:
    """`postern routes` shares api.route_ops, whose refusals are api.errors: the classes
    only (their HTTP answers, api.answers, name intake's, DKIM's... errors)."""
    modules = _imported(config, "routes", "list", "--json")
    assert {"storage.db", "api.errors", "api.route_ops"} <= modules
    server = tuple(root for root in _SERVER if root != "api")
    heavy = ("api.answers", "gateway.intake", "gateway.dkim", *server, *_OTHERS, *_ON_DEMAND)
    assert _found(modules, heavy) == []


def test_the_supervisor_loads_no_listener_intake_dns_or_database() -> None:
    """The supervisor binds the sockets and watches its workers; it runs no listener and
    opens no database, so aiosmtpd, the intake pipeline, DKIM, DNS, the metrics and
    SQLAlchemy stay in the workers (in the supervisor they were ~30 MB of resident memory)."""
    probe = "import json, sys, gateway.process.supervisor; print(json.dumps(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    modules = set(json.loads(done.stdout))
    heavy = ("aiosmtpd", "gateway.intake", "gateway.dkim", "dkim", "dns", "prometheus_client")
    assert _found(modules, (*heavy, "sqlalchemy", "storage.db")) == []
