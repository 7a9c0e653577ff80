"""Postern's errors as one tree (gateway.errors), and each door's table of answers to them
(gateway.smtpd.replies for SMTP, api.answers.ANSWERS for HTTP)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import api
import gateway
import storage
from api import answers as http
from api import errors as api_errors
from gateway.dkim.errors import DkimError
from gateway.errors import InvalidInput, PosternError, StorageFull, WriterStopped
from gateway.intake.message_builder import BuildError
from gateway.intake.pipeline import NoRoute, UnverifiedSender
from gateway.queue.operations import FilterError
from gateway.smtpd import replies
from gateway.webhooks.urls import BadUrl
from storage import pools
from storage.idempotency import Duplicate
from storage.keys import UnknownScope
from storage.message_search import InvalidCursor

ROOT = Path(__file__).resolve().parents[2]


def _exception_classes() -> Iterator[type[BaseException]]:
    for package in (gateway, api, storage):
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            module = importlib.import_module(info.name)
            for value in vars(module).values():
                if (
                    inspect.isclass(value)
                    and issubclass(value, BaseException)
                    and value.__module__ == module.__name__
                ):
                    yield value


def test_every_exception_class_has_the_one_root() -> None:
    strays = [
        f"{kind.__module__}.{kind.__qualname__}"
        for kind in _exception_classes()
        if not issubclass(kind, PosternError)
    ]
    assert strays == []


@pytest.mark.parametrize("kind", [BuildError, FilterError, BadUrl, InvalidCursor, UnknownScope])
def test_a_refusal_that_was_a_value_error_still_is_one(kind: type[Exception]) -> None:
    assert issubclass(kind, InvalidInput) and issubclass(kind, ValueError)


def test_dns_no_longer_imports_config() -> None:
    probe = "import sys, gateway.dns; assert 'gateway.config' not in sys.modules"
    subprocess.run([sys.executable, "-c", probe], cwd=ROOT, check=True)


def test_the_smtp_door_answers_an_error_from_its_table() -> None:
    assert replies.for_error(NoRoute("grp")) == "550 5.7.1 No route: no active pool for grp"
    assert replies.for_error(Duplicate("msg_1")) == "250 2.0.0 OK queued as msg_1"
    assert replies.for_error(UnverifiedSender("not yours")) == "550 5.7.1 not yours"
    assert replies.for_error(StorageFull("disk")) == replies.STORAGE_FULL
    assert replies.for_error(WriterStopped("stopping")) == replies.TEMPORARY
    assert replies.for_error(DkimError("a bug")) is None  # not the client's: a 451 and a log


def test_the_http_door_answers_an_error_from_its_table() -> None:
    refused = http.answer(pools.BadMoveTarget("no other active pool"))
    assert (refused.status, refused.body()) == (
        400,
        {
            "success": False,
            "code": "invalid_request",
            "error": "move_to: no other active pool",
            "details": [{"field": "move_to", "message": "no other active pool"}],
        },
    )
    unavailable = http.answer(WriterStopped("stopping"))
    assert (unavailable.status, unavailable.headers) == (503, {"Retry-After": "1"})
    assert "stopping" not in unavailable.error  # the detail is for the log
    assert http.answer(StorageFull("disk")).status == 507
    assert http.answer(DkimError("a bug")).status == 500


def _drawn_tree() -> dict[str, str]:
    """class -> parent, as api.errors' docstring draws them (each level 4 columns in)."""
    drawn: dict[str, str] = {}
    parents = ["ApiError"]
    for line in (api_errors.__doc__ or "").splitlines():
        branch = re.search(r"[├└]── (\w+)", line)
        if branch is not None:
            depth = branch.start() // 4
            parents[depth:] = [branch.group(1)]
            drawn[branch.group(1)] = parents[depth - 1]
    return drawn


def test_the_api_errors_docstring_draws_every_class_under_its_parent() -> None:
    defined = {
        kind.__name__: kind.__base__.__name__
        for kind in vars(api_errors).values()
        if inspect.isclass(kind)
        and issubclass(kind, api_errors.ApiError)
        and kind is not api_errors.ApiError
    }
    assert _drawn_tree() == defined


def test_the_api_errors_load_no_http_intake_or_dkim() -> None:
    """The CLI's commands raise them through api/*_ops.py (`postern routes`)."""
    probe = (
        "import sys, api.errors; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('starlette', 'sqlalchemy') "
        "or m.startswith(('gateway.intake', 'gateway.dkim', 'api.answers'))]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", probe], cwd=ROOT, check=True)
