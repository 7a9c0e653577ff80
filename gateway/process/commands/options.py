"""Options every subcommand takes. Imports nothing heavy: `postern --help` and the
parser of each command are built from it before anything else is loaded."""

from __future__ import annotations

import argparse
from typing import Any


def leaf(actions: Any, name: str, text: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = actions.add_parser(name, help=text)
    common_options(parser)
    parser.add_argument("--json", action="store_true", help="print JSON")
    return parser


def common_options(parser: argparse.ArgumentParser) -> None:
    """--config and --verbose, accepted after the subcommand too (own dests: a subparser's
    defaults would overwrite what was given before the subcommand)."""
    parser.add_argument("--config", dest="sub_config", help=argparse.SUPPRESS)
    parser.add_argument(
        "--verbose", dest="sub_verbose", action="store_true", help=argparse.SUPPRESS
    )
