"""The `postern` command line. Parses arguments, calls services, prints text or JSON.

Operator mistakes (bad config, unreadable file, port in use) are one line on stderr and
exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import atexit
import gc
import os
import signal
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from importlib import import_module
from types import ModuleType
from typing import TYPE_CHECKING, Any, NoReturn

from gateway.process.commands.options import common_options

if TYPE_CHECKING:
    import asyncio

    from gateway.config import Config

# Each command group's module, and its one line of `postern --help`. Only the module of the
# command given is imported (with its storage, SQLAlchemy, DNS...): `postern --help` and
# the parser of the others load nothing heavy (1.5 s of imports before, most of it unused).
GROUPS: dict[str, tuple[str, str]] = {
    "keys": ("admin", "create, list and revoke API keys"),
    "suppressions": ("admin", "the suppression list"),
    "dkim": ("dkim", "DKIM signing keys"),
    "domains": ("domains", "domains mail may be sent From"),
    "pools": ("resources", "SMTP pools mail is relayed through"),
    "aliases": ("resources", "sender addresses (aliases)"),
    "webhooks": ("resources", "webhook endpoints"),
    "queue": ("queue", "find, retry, cancel, hold and release messages"),
    "routes": ("routes", "routes by recipient domain (transport maps)"),
    "tail": ("tail", "print message events as they happen (tail -f)"),
    "bounces": ("bounces", "reports that came back (bounces, complaints)"),
    "blocklists": ("blocklists", "DNSBL checks of the sending IPs and domains"),
    "backup": ("backup", "copy the database (online) and the secret key into a new directory"),
    "users": ("users", "people who log in to the dashboard"),
    "reputation": ("reputation", "sender reputation scores and why"),
    "warmup": ("warmup", "warmups of pools and connected accounts"),
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"postern: error: {message}\n")


class _Version(argparse.Action):
    """`--version`, its number read only when asked: importlib.metadata costs every other
    command ~20 ms of imports."""

    def __init__(self, option_strings: Sequence[str], dest: str, help: str | None = None) -> None:
        super().__init__(option_strings, dest, nargs=0, help=help)

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> None:
        parser._print_message(f"postern {_version()}\n", sys.stdout)  # as argparse's own
        parser.exit()


def _group(command: str) -> ModuleType:
    return import_module(f"gateway.process.commands.{GROUPS[command][0]}")


def _chosen(argv: Sequence[str]) -> str | None:
    """The command group named on the command line (the first word that is one, but the
    value of --config), read before parsing so that only its module is imported."""
    words = list(argv)
    for index, word in enumerate(words):
        if word in GROUPS and (index == 0 or words[index - 1] != "--config"):
            return word
    return None


def _parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    parser = _Parser(prog="postern", description="Postern SMTP relay gateway")
    parser.add_argument("--version", action=_Version, help="show the version and exit")
    parser.add_argument(
        "--config", help="config file (default: $POSTERN_CONFIG, else built-in defaults)"
    )
    parser.add_argument(
        "--verbose", action="store_true", help="name the config, data_dir and database on stderr"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the SMTP listener, HTTP API and delivery")
    common_options(serve)
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    check = commands.add_parser("check-config", help="validate the configuration and exit")
    common_options(check)
    _add_groups(commands, _chosen(argv))
    return parser


def _add_groups(commands: Any, chosen: str | None) -> None:
    """The chosen group's module adds its commands (all of the module's groups, so the
    order of --help stays); every other group is a placeholder with its help line."""
    module = _group(chosen) if chosen else None
    added = set(module.COMMANDS) if module else set()
    if module:
        module.add_commands(commands)
    for name, (_, text) in GROUPS.items():
        if name not in added:
            commands.add_parser(name, help=text)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("postern")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "(not installed)"


def _setup_logging(level: str) -> None:
    from gateway.process import logs

    logs.setup(level)


async def _serve(config: Config, config_path: str | None, role_text: str | None) -> int:
    from gateway.process.service import (
        Service,  # heavy imports only for the commands that need them
    )
    from gateway.process.startup import WorkerRole
    from gateway.process.supervisor import say_ready

    role = WorkerRole.from_env(role_text) if role_text else None
    service = Service(config, config_path=config_path, role=role)  # SIGHUP reads the same file
    await service.start()
    if role is not None:
        say_ready()
    # What start-up built (modules, compiled statements, config) lives as long as the
    # process: move it out of the collector's reach, so that a full collection walks only
    # what requests create (gen-2 pauses of ~40 ms measured under HTTP load before).
    gc.freeze()
    await service.run_until_stopped()
    return 0


def _event_loop_runner() -> type[asyncio.Runner] | None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency, but stay usable
        return None
    return uvloop.new_event_loop  # type: ignore[return-value]


def console_main() -> NoReturn:
    """The `postern` program: main(), then out without the interpreter's teardown, which
    frees every imported module's objects one by one (~45 ms of a 0.3 s command, measured
    by bench/cli_start.py). Exit handlers still run; a command that left a thread running
    leaves the ordinary way, which waits for it."""
    try:
        status = main()
    except SystemExit as leaving:  # argparse's --help and its errors
        if not isinstance(leaving.code, int | None):
            raise
        status = leaving.code or 0
    threading = sys.modules.get("threading")  # not imported: no thread was started
    if threading and any(
        not t.daemon and t is not threading.main_thread() for t in threading.enumerate()
    ):
        sys.exit(status)
    atexit._run_exitfuncs()  # private but stable (CPython 3.11-3.13): what exit runs first
    os._exit(_flushed(status))


def _flushed(status: int) -> int:
    """The status once stdout and stderr are written out; 120 when that fails, as CPython
    exits when its own flush at exit fails."""
    for stream in (sys.stdout, sys.stderr):  # each: a failing stdout must not lose stderr
        try:
            stream.flush()
        except (OSError, ValueError):
            status = status or 120
    return status


@contextmanager
def _collector_paused() -> Iterator[None]:
    """No garbage collection while the command's modules are imported: they make many
    objects and no garbage, and the collector's passes over them cost ~25 ms of a 0.3 s
    command (bench/cli_start.py)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def main(argv: Sequence[str] | None = None) -> int:
    try:
        status = _main(argv)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (`postern queue list | head`): end quietly, as Unix tools
        # do, and keep the interpreter's own flush at exit from raising again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a tool killed by it
    return status


def _main(argv: Sequence[str] | None) -> int:
    words = sys.argv[1:] if argv is None else list(argv)
    with _collector_paused():
        args = _parser(words).parse_args(words)
        from gateway.config import ConfigError, load  # after parsing: --help needs neither
        from gateway.errors import StorageUnavailable
        from gateway.process.commands.refusals import NotFound

    if args.command == "serve":  # SIGHUP's default ends the process: not while it starts
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    config_path = (
        getattr(args, "sub_config", None) or args.config or os.environ.get("POSTERN_CONFIG") or None
    )
    try:
        config = load(config_path)
        if args.verbose or getattr(args, "sub_verbose", False):
            from gateway.process import instance  # SQLAlchemy: after check-config's answer

            print(instance.describe(config, config_path), file=sys.stderr)
        if args.command == "check-config":
            print("configuration OK")
            return 0
        from gateway.process import instance

        if args.command != "serve":
            instance.require_database(config, config_path)
        if args.command in GROUPS:
            return int(_group(args.command).run(args, config))
        import asyncio  # only `serve` runs an event loop here

        from gateway.process.startup import ROLE_ENV

        role_text = os.environ.pop(ROLE_ENV, None)  # a worker's (not its own children's)
        if role_text is None and config.server.workers > 1:
            from gateway.process.supervisor import Supervisor

            supervisor = Supervisor(config, config_path, args.log_level)
            with asyncio.Runner() as runner:
                return runner.run(supervisor.run())
        if role_text is not None:
            from gateway.process.parent import become_worker
            from gateway.process.startup import WorkerRole

            become_worker(WorkerRole.from_env(role_text).parent)
        _setup_logging(args.log_level)
        factory = _event_loop_runner()
        with asyncio.Runner(loop_factory=factory) as runner:  # type: ignore[arg-type]
            return runner.run(_serve(config, config_path, role_text))
    except NotFound as error:  # what it names is not there: no mistake in the command's form
        print(f"postern: error: {error}", file=sys.stderr)
        return 1
    except ConfigError as error:  # the operator's mistake: fix it and run again
        print(f"postern: error: {error}", file=sys.stderr)
        return 2
    except StorageUnavailable as error:  # not a mistake: the same command may work later
        print(f"postern: error: the database is unavailable: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    console_main()
