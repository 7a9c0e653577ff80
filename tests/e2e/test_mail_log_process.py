"""The mail log as `postern serve` writes it to stderr: ISO 8601 times with the UTC offset,
one line per record, the intake, delivery and refusal lines of tests/integration/test_mail_log.py.
"""

from __future__ import annotations

import re
import smtplib

import pytest

from tests.support.serve import SENDER, MakePostern, wait_until
from tests.support.sink import Sink

pytestmark = pytest.mark.timeout(90)

RECORD = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d [A-Z]+ \S+: ")


def test_the_process_log_has_zoned_times_and_the_mail_lines(
    sink: Sink, postern_process: MakePostern
) -> None:
    postern = postern_process(sink.port)
    postern.send(1, "log")
    with smtplib.SMTP("127.0.0.1", postern.smtp_port, timeout=10) as client:
        client.ehlo("client.test")
        code, _ = client.mail(SENDER)
        assert code == 250
        code, _ = client.rcpt("bad\x7f@example.org")
        assert code == 501
    assert wait_until(lambda: " status=delivered " in postern.stderr(), 20.0), postern.stderr()
    status, _ = postern.stop()
    assert status == 0

    lines = postern.stderr().splitlines()
    assert lines and all(RECORD.match(line) for line in lines), lines
    mail = [line for line in lines if " INFO postern.mail: " in line]
    intake = rf"id=msg_\S+ client=\[127\.0\.0\.1\]:\d+ key=- source=smtp from=<{SENDER}> "
    assert any(re.search(intake, line) for line in mail), mail
    assert any(
        f"from=<{SENDER}> to=<rcpt0@example.org> relay=127.0.0.1[127.0.0.1]:{sink.port} "
        "pool=sink " in line
        for line in mail
    ), mail
    assert any(
        "NOQUEUE: reject: RCPT from [127.0.0.1]:" in line
        and f"; from=<{SENDER}> to=<bad\\x7f@example.org> proto=ESMTP helo=<client.test>" in line
        for line in mail
    ), mail
