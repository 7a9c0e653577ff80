"""The `postern` command line. Parses arguments, calls services, prints text or JSON.

Operator mistakes (bad config, unreadable file, port in use) are one line on stderr and
exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import signal
import sys
from collections.abc import Sequence

from gateway.config import Config, ConfigError, load
from gateway.errors import StorageUnavailable
from gateway.process import instance
from gateway.process.commands import admin as cli_admin
from gateway.process.commands import backup as cli_backup
from gateway.process.commands import bounces as cli_bounces
from gateway.process.commands import dkim as cli_dkim
from gateway.process.commands import domains as cli_domains
from gateway.process.commands import queue as cli_queue
from gateway.process.commands import tail as cli_tail
from gateway.process.commands import users as cli_users


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"postern: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="postern", description="Postern SMTP relay gateway")
    parser.add_argument("--version", action="version", version=f"postern {_version()}")
    parser.add_argument(
        "--config", help="config file (default: $POSTERN_CONFIG, else built-in defaults)"
    )
    parser.add_argument(
        "--verbose", action="store_true", help="name the config, data_dir and database on stderr"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the SMTP listener, HTTP API and delivery")
    cli_admin.common_options(serve)
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    check = commands.add_parser("check-config", help="validate the configuration and exit")
    cli_admin.common_options(check)
    cli_admin.add_commands(commands)
    cli_dkim.add_commands(commands)
    cli_domains.add_commands(commands)
    cli_queue.add_commands(commands)
    cli_tail.add_commands(commands)
    cli_bounces.add_commands(commands)
    cli_backup.add_commands(commands)
    cli_users.add_commands(commands)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("postern")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "(not installed)"


def _setup_logging(level: str) -> None:
    from gateway.process import logs

    logs.setup(level)


async def _serve(config: Config, config_path: str | None) -> int:
    from gateway.process.service import (
        Service,  # heavy imports only for the commands that need them
    )

    service = Service(config, config_path=config_path)  # SIGHUP reads the same file
    await service.start()
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
    args = _parser().parse_args(argv)
    if args.command == "serve":  # SIGHUP's default ends the process: not while it starts
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    config_path = (
        getattr(args, "sub_config", None) or args.config or os.environ.get("POSTERN_CONFIG") or None
    )
    try:
        config = load(config_path)
        if args.verbose or getattr(args, "sub_verbose", False):
            print(instance.describe(config, config_path), file=sys.stderr)
        if args.command == "check-config":
            print("configuration OK")
            return 0
        if args.command != "serve":
            instance.require_database(config, config_path)
        for commands in (
            cli_admin,
            cli_backup,
            cli_bounces,
            cli_dkim,
            cli_domains,
            cli_queue,
            cli_tail,
            cli_users,
        ):
            if args.command in commands.COMMANDS:
                return commands.run(args, config)
        _setup_logging(args.log_level)
        factory = _event_loop_runner()
        with asyncio.Runner(loop_factory=factory) as runner:  # type: ignore[arg-type]
            return runner.run(_serve(config, config_path))
    except ConfigError as error:  # the operator's mistake: fix it and run again
        print(f"postern: error: {error}", file=sys.stderr)
        return 2
    except StorageUnavailable as error:  # not a mistake: the same command may work later
        print(f"postern: error: the database is unavailable: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
