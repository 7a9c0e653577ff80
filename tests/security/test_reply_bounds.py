"""Where the reply bound lies: a long reply within it is an answer like any other; one
line more and the session is dropped (in process, against tests.support.hostile's server)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.delivery.pipelining import MAX_REPLY_LINES
from tests.support.hostile import HostileSmtp, Stage
from tests.support.rows import recipient_rows, wait_for_status
from tests.support.service import ServiceFactory, make_config
from tests.support.smtp import smtp_send

pytestmark = pytest.mark.timeout(60)

MESSAGE = b"From: app@sender.test\r\nTo: x\r\nSubject: long replies\r\n\r\nHi.\r\n"


async def relay(tmp_path: Path, service: ServiceFactory, upstream: HostileSmtp) -> str:
    pool = {"name": "long", "host": "127.0.0.1", "port": upstream.port, "encryption": "none"}
    svc = await service(make_config(tmp_path, None, pools=[pool]))
    code, text = await smtp_send(svc.smtp_port, "app@sender.test", ["a@example.org"], MESSAGE)
    assert code == 250, text
    return text.rsplit(" ", 1)[-1]


@pytest.mark.parametrize("stage", ["ehlo", "mail", "data"])
async def test_a_reply_of_the_largest_size_allowed_is_an_answer(
    tmp_path: Path, service: ServiceFactory, stage: Stage
) -> None:
    extra = 3 if stage == "ehlo" else 0  # the EHLO reply's own lines come after the long ones
    with HostileSmtp(stage, lines=MAX_REPLY_LINES - 1 - extra) as upstream:
        message_id = await relay(tmp_path, service, upstream)
        assert await wait_for_status(service.started[-1], message_id, {"delivered"}, timeout=10)


@pytest.mark.parametrize("stage", ["mail", "data"])
async def test_one_line_more_drops_the_session_and_defers(
    tmp_path: Path, service: ServiceFactory, stage: Stage
) -> None:
    with HostileSmtp(stage, lines=MAX_REPLY_LINES) as upstream:
        message_id = await relay(tmp_path, service, upstream)
        svc = service.started[-1]
        assert await wait_for_status(svc, message_id, {"deferred"}, timeout=10)
        response = (await recipient_rows(svc, message_id))["a@example.org"]["response"]
        assert "reply too long" in response
