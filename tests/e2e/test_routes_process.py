"""Routes by recipient domain in a real `postern serve`: a message over SMTP to two routes
arrives split across two sinks, and `[[routes]]` edited in the file apply on SIGHUP."""

from __future__ import annotations

import signal
import smtplib

from tests.support.serve import MakePostern, Postern, wait_until
from tests.support.sink import Sink


def _send(postern: Postern, recipients: list[str]) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", postern.smtp_port, timeout=10) as client:
        client.ehlo("client.test")
        client.mail("app@sender.test")
        for rcpt in recipients:
            client.rcpt(rcpt)
        return client.data(b"From: app@sender.test\r\nSubject: routes\r\n\r\nhi\r\n")


def test_a_split_across_two_sinks_and_routes_reloaded_on_sighup(
    sink: Sink, postern_process: MakePostern
) -> None:
    other = Sink().start()
    try:
        second = (
            f'\n[[pools]]\nname = "other"\nhost = "127.0.0.1"\nport = {other.port}\n'
            'encryption = "none"\nip_pool = "other-group"\n'
        )
        postern = postern_process(sink.port, extra=second)
        code, reply = _send(postern, ["a@gmail.test", "b@else.test"])
        assert code == 250 and len(reply.split(b"queued as ", 1)[1].split()) == 1, reply
        assert sink.wait_for(1, timeout=10) and other.messages == []

        routes = '\n[[routes]]\nrecipient_domain = "gmail.test"\npool = "other"\n'
        postern.config.write_text(postern.config.read_text() + routes)
        assert postern.proc is not None
        postern.proc.send_signal(signal.SIGHUP)
        assert wait_until(lambda: "1 route(s)" in postern.stderr(), 5), postern.stderr()

        code, reply = _send(postern, ["c@gmail.test", "d@else.test", "e@GMAIL.test"])
        ids = reply.split(b"queued as ", 1)[1].split()
        assert code == 250 and len(ids) == 2, reply
        assert other.wait_for(1, timeout=10) and sink.wait_for(2, timeout=10)
        assert other.messages[0].rcpt_tos == ["c@gmail.test", "e@GMAIL.test"]
        assert sink.messages[1].rcpt_tos == ["d@else.test"]
        status, _ = postern.stop(signal.SIGTERM)
        assert status == 0 and "Traceback" not in postern.stderr(), postern.stderr()
    finally:
        other.stop()
