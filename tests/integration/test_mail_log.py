"""The mail log, with Postfix's as the yardstick: every refusal at either door is one
`NOQUEUE: reject` line (stage, client, envelope, the reply sent), a failed AUTH names the
mechanism and user but never the key, an accepted message has its intake line and each
delivery attempt a line per recipient (relay, delays, dsn, size, attempt, status).

Everything goes through the real doors: SMTP over loopback, HTTP through uvicorn, delivery
to the sink; the lines are read as the product formats them.
"""

from __future__ import annotations

import base64
import io
import logging
import re
from collections.abc import Iterator

import pytest

from gateway.process.logs import FORMAT, EscapingFormatter
from gateway.smtpd import replies
from tests.support.api import Api, ApiFactory, auth, payload
from tests.support.service import wait_until
from tests.support.sink import Sink
from tests.support.smtp import RawClient, smtp_send

pytestmark = pytest.mark.timeout(60)

STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d"


class MailLog:
    """The records of `postern.mail`, formatted as `postern serve` writes them."""

    def __init__(self) -> None:
        self.output = io.StringIO()

    def lines(self, *needles: str) -> list[str]:
        found = [line for line in self.output.getvalue().splitlines() if " postern.mail: " in line]
        return [line for line in found if all(needle in line for needle in needles)]

    def one(self, *needles: str) -> str:
        found = self.lines(*needles)
        assert len(found) == 1, (needles, self.output.getvalue())
        return found[0]

    async def wait(self, *needles: str, timeout: float = 10.0) -> str:
        assert await wait_until(lambda: self.lines(*needles), timeout), (
            needles,
            self.output.getvalue(),
        )
        return self.one(*needles)


@pytest.fixture
def mail_log() -> Iterator[MailLog]:
    log = MailLog()
    handler = logging.StreamHandler(log.output)
    handler.setFormatter(EscapingFormatter(FORMAT))
    logger = logging.getLogger("postern.mail")
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield log
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)


def local_port(client: RawClient) -> int:
    return int(client.writer.get_extra_info("sockname")[1])


# --- SMTP refusals ----------------------------------------------------------------------------


async def test_every_smtp_refusal_is_one_line_with_stage_envelope_and_reply(
    api_client: ApiFactory, mail_log: MailLog
) -> None:
    api = await api_client(smtp={"max_recipients": 1, "max_message_size": 10_000})
    key = await api.key("suppressions")
    added = await api.http.post(
        "/api/v1/suppressions", json={"email": "gone@y.test"}, headers=auth(key)
    )
    assert added.status_code == 201
    client = await RawClient.connect(api.svc.smtp_port)
    me = f"[127.0.0.1]:{local_port(client)}"
    await client.ehlo("client.test")

    assert (await client.command("DATA")).code == 503
    assert (await client.command("MAIL FROM:<a@x.test> SIZE=20000")).code == 552
    assert (await client.command("MAIL FROM:<a@x.test>")).code == 250
    assert (await client.command("RCPT TO:<gone@y.test>")).code == 550
    assert (await client.command("RCPT TO:<b@y.test>")).code == 250
    assert (await client.command("RCPT TO:<c@y.test>")).code == 452
    assert (await client.data(b"Subject: s\r\n\r\nbare\nLF\r\n")).code == 550
    assert (await client.command("MAIL FROM:<a\x01@x.test>")).code == 501
    assert (await client.command("XYZZY")).code == 500
    await client.close()

    tail = "proto=ESMTP helo=<client.test>"
    assert f"NOQUEUE: reject: DATA from {me}: {replies.NEED_RECIPIENT}; {tail}" in (
        mail_log.one("reject: DATA ")
    )
    assert mail_log.one("reject: MAIL ", replies.SIZE_EXCEEDED).endswith(
        f"from {me}: {replies.SIZE_EXCEEDED}; from=<a@x.test> {tail}"
    )
    assert mail_log.one("reject: RCPT ", "550 ").endswith(
        f"from {me}: {replies.SUPPRESSED}; from=<a@x.test> to=<gone@y.test> {tail}"
    )
    assert mail_log.one("reject: RCPT ", "452 ").endswith(
        f"from {me}: {replies.TOO_MANY_RECIPIENTS}; from=<a@x.test> to=<c@y.test> {tail}"
    )
    bare_lf = replies.BAD_CONTENT.format(problem="bare CR or LF in message")
    assert mail_log.one("reject: END-OF-DATA ").endswith(
        f"from {me}: {bare_lf}; from=<a@x.test> to=<b@y.test> {tail}"
    )
    # The address as the client wrote it, escaped like all user input.
    assert mail_log.one("reject: MAIL ", "501 ").endswith(
        f"from {me}: {replies.CONTROL_IN_COMMAND}; from=<a\\x01@x.test> {tail}"
    )
    assert mail_log.one("reject: UNKNOWN from ").endswith(
        f"from {me}: 500 5.5.2 Error: command not recognized; command=XYZZ… {tail}"
    )
    for line in mail_log.lines():
        assert re.match(STAMP + " INFO postern.mail: NOQUEUE: reject: ", line), line
    assert len(mail_log.lines("NOQUEUE: reject:")) == 7


async def test_the_connection_cap_refusal_is_logged(
    api_client: ApiFactory, mail_log: MailLog
) -> None:
    api = await api_client(smtp={"max_connections": 1})
    first = await RawClient.connect(api.svc.smtp_port)
    second = await RawClient.connect(api.svc.smtp_port)
    assert second.greeting is not None and second.greeting.code == 421
    me = f"[127.0.0.1]:{local_port(second)}"
    assert mail_log.one("reject: CONNECT").endswith(f"from {me}: {replies.TOO_MANY_CONNECTIONS}")
    await first.close()
    await second.close()


# --- SMTP AUTH --------------------------------------------------------------------------------


def plain(user: str, secret: str) -> str:
    return base64.b64encode(f"\0{user}\0{secret}".encode()).decode()


async def test_a_failed_auth_names_mechanism_user_and_key_but_never_the_secret(
    api: Api, mail_log: MailLog
) -> None:
    reader_id, reader_secret = await api.key_record("suppressions")  # no send scope
    wrong = "msk_" + "x" * 43
    client = await RawClient.connect(api.svc.smtp_port)
    me = f"[127.0.0.1]:{local_port(client)}"
    await client.ehlo("client.test")
    assert (await client.command(f"AUTH PLAIN {plain('app', wrong)}")).code == 535
    assert (await client.command(f"AUTH PLAIN {plain('app', reader_secret)}")).code == 535
    assert (await client.command("AUTH LOGIN")).code == 334
    await client.command(base64.b64encode(wrong.encode()).decode())  # the key as user name
    assert (await client.command(base64.b64encode(wrong.encode()).decode())).code == 535
    await client.close()  # the third failure ends the session (a 421 follows)
    client = await RawClient.connect(api.svc.smtp_port)
    second = f"[127.0.0.1]:{local_port(client)}"
    await client.ehlo("client.test")
    assert (await client.command("AUTH PLAIN !!!")).code == 501
    await client.close()

    reply = replies.AUTH_INVALID
    lines = mail_log.lines("reject: AUTH ", reply)
    tail = " proto=ESMTP helo=<client.test>"
    assert [line.split(f"from {me}: {reply}; ")[1] for line in lines] == [
        "mechanism=PLAIN user=<app> key=unknown" + tail,
        f"mechanism=PLAIN user=<app> key={reader_id} (no send scope)" + tail,
        "mechanism=LOGIN user=<(hidden: looks like a key)> key=unknown" + tail,
    ]
    assert "501 5.5.2 Can't decode base64" in mail_log.one("reject: AUTH ", "501 ")
    assert second in mail_log.one("reject: AUTH ", "501 ")
    text = mail_log.output.getvalue()
    assert wrong not in text and reader_secret not in text
    assert "msk_" not in text


@pytest.fixture
def every_log() -> Iterator[io.StringIO]:
    """Every record of every logger, at the levels `postern serve` sets (gateway.process.logs)."""
    output = io.StringIO()
    handler = logging.StreamHandler(output)
    handler.setFormatter(EscapingFormatter(FORMAT))
    root, aiosmtpd = logging.getLogger(), logging.getLogger("mail.log")
    levels = root.level, aiosmtpd.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    aiosmtpd.setLevel(logging.WARNING)
    try:
        yield output
    finally:
        root.removeHandler(handler)
        root.setLevel(levels[0])
        aiosmtpd.setLevel(levels[1])


async def test_credentials_pipelined_after_a_refused_auth_never_reach_the_log(
    api: Api, mail_log: MailLog, every_log: io.StringIO
) -> None:
    """A client that sends its AUTH LOGIN lines without waiting: the AUTH is refused, so
    the user name and the key arrive as commands, which aiosmtpd's reply echoes."""
    _, secret = await api.key_record("send")
    user = base64.b64encode(b"ann@x.test").decode()
    password = base64.b64encode(secret.encode()).decode()
    client = await RawClient.connect(api.svc.smtp_port)
    await client.ehlo("client.test")
    await client.send(f"AUTH CRAM-MD5\r\n{user}\r\n{password}\r\n".encode())
    assert [(await client.reply()).code for _ in range(3)] == [504, 500, 500]
    await client.close()

    lines = mail_log.lines("reject: UNKNOWN ", "500 5.5.2 Error: command not recognized;")
    assert len(lines) == 2, mail_log.output.getvalue()
    assert all("; command=? proto=ESMTP" in line for line in lines), lines
    text = every_log.getvalue() + mail_log.output.getvalue()
    for secret_form in (password, password.upper(), password[4:12].upper(), user.upper()):
        assert secret_form not in text, text
    assert "msk_" not in text


async def test_a_failed_auth_hides_a_user_name_that_looks_like_a_password(
    api: Api, mail_log: MailLog
) -> None:
    for user in ("ann@x.test", "Tr0ub4dor3xyzzy123456", "pass word", "msk_x", "MSK_Y"):
        client = await RawClient.connect(api.svc.smtp_port)  # a session allows 3 failures
        await client.ehlo("client.test")
        reply = await client.command(f"AUTH PLAIN {plain(user, 'msk_' + 'q' * 43)}")
        assert reply.code == 535
        await client.close()
    users = [line.split("user=<")[1].split(">")[0] for line in mail_log.lines("reject: AUTH ")]
    assert users == [
        "ann@x.test",
        "(hidden: not a plain user name)",
        "(hidden: not a plain user name)",
        "(hidden: looks like a key)",
        "(hidden: looks like a key)",
    ]
    text = mail_log.output.getvalue()
    assert "Tr0ub4dor" not in text and "pass word" not in text


# --- intake and delivery ----------------------------------------------------------------------


MESSAGE = b"From: a@x.test\r\nTo: b@y.test\r\nMessage-ID: <m1@x.test>\r\nSubject: s\r\n\r\nhi\r\n"


async def test_an_smtp_message_has_an_intake_line_and_a_delivery_line(
    api: Api, sink: Sink, mail_log: MailLog
) -> None:
    code, text = await smtp_send(api.svc.smtp_port, "a@x.test", ["b@y.test"], MESSAGE)
    assert code == 250, text
    intake = await mail_log.wait("source=smtp")
    match = re.search(
        r"INFO postern\.mail: id=(msg_\S+) client=\[127\.0\.0\.1\]:\d+ key=- source=smtp "
        r"from=<a@x\.test> size=(\d+) nrcpt=1 message-id=<m1@x\.test>$",
        intake,
    )
    assert match, intake
    message_id, size = match.groups()
    delivered = await mail_log.wait(f"id={message_id} from=")
    assert re.fullmatch(
        STAMP + rf" INFO postern\.mail: id={message_id} from=<a@x\.test> to=<b@y\.test> "
        rf"relay=127\.0\.0\.1\[127\.0\.0\.1\]:{sink.port} pool=sink delay=\d+\.\d{{3}} "
        rf"delays=\d+\.\d{{3}}/\d+\.\d{{3}}/\d+\.\d{{3}} dsn=2\.0\.0 size={size} attempt=1 "
        r"status=delivered reply='250 2\.0\.0 OK queued'",
        delivered,
    ), delivered
    assert int(size) == len(sink.messages[0].data)  # what was stored is what was sent


async def test_deferred_then_delivered_and_bounced_attempts(
    api: Api, sink: Sink, mail_log: MailLog
) -> None:
    sink.fail("rcpt", "451 4.3.0 come back later", match="slow@y.test", times=1)
    sink.fail("rcpt", "550 5.1.1 no such user", match="gone@y.test")
    code, text = await smtp_send(
        api.svc.smtp_port, "", ["slow@y.test", "gone@y.test", "b@y.test"], MESSAGE
    )
    assert code == 250, text
    first = await mail_log.wait("to=<slow@y.test>", "attempt=1")
    assert "from=<> " in first
    assert " dsn=4.3.0 " in first and " status=deferred reply='451 4.3.0 come back later'" in first
    bounced = mail_log.one("to=<gone@y.test>")
    assert " dsn=5.1.1 " in bounced and " attempt=1 status=bounced " in bounced
    assert " attempt=1 status=delivered " in mail_log.one("to=<b@y.test>")
    retried = await mail_log.wait("to=<slow@y.test>", "attempt=2")  # retry_schedule: 1 s
    assert " dsn=2.0.0 " in retried and " status=delivered " in retried


# --- HTTP -------------------------------------------------------------------------------------


async def test_an_http_send_has_an_intake_line_with_its_key(
    api: Api, sink: Sink, mail_log: MailLog
) -> None:
    key_id, key = await api.key_record("send")
    sent = await api.send(key=key)
    assert sent.status_code == 200, sent.text
    message_id = sent.json()["message_id"]
    intake = mail_log.one(f"id={message_id} client=")
    assert re.search(
        rf"id={message_id} client=\[127\.0\.0\.1\]:\d+ key={key_id} source=http "
        r"from=<app@sender\.test> size=\d+ nrcpt=1 message-id=<[^>]+@postern\.test>$",
        intake,
    ), intake
    assert " status=delivered " in mail_log.one(f"id={message_id} from=")
    assert not mail_log.lines("reject")


async def test_every_http_send_refusal_is_one_line_with_key_envelope_and_status(
    api_client: ApiFactory, mail_log: MailLog
) -> None:
    api = await api_client(policy={"sender": "verified"}, http={"max_body_size": 100_000})
    key_id, key = await api.key_record("send")
    start = "NOQUEUE: reject: POST /v1/send from [127.0.0.1]:"

    async def refused(status: int, **kwargs: object) -> str:
        """The line of the refusal after its client's port."""
        response = await api.http.post("/v1/send", **kwargs)  # type: ignore[arg-type]
        assert response.status_code == status, response.text
        return mail_log.lines(start)[-1].split(start)[1]

    unverified = await refused(403, json=payload(), headers=auth(key))
    assert re.fullmatch(
        r"\d+: 403 unverified_sender: .+; from=<app@sender\.test> to=<rcpt@example\.test> "
        rf"proto=HTTP key={key_id}",
        unverified,
    ), unverified
    unknown_key = await refused(401, json=payload(), headers=auth("msk_" + "y" * 43))
    expected = ": 401 unauthorized: missing or invalid API key or session; proto=HTTP"
    assert unknown_key.endswith(expected)
    bad_json = await refused(400, content=b"{", headers=auth(key))
    assert re.fullmatch(rf"\d+: 400 invalid_request: .+; proto=HTTP key={key_id}", bad_json)
    too_big = await refused(413, content=b"x" * 100_001, headers=auth(key))  # by BodyLimit
    assert re.fullmatch(r"\d+: 413 payload_too_large: .+; proto=HTTP", too_big), too_big
    assert len(mail_log.lines("NOQUEUE: reject:")) == 4
    assert "msk_" not in mail_log.output.getvalue()


async def test_an_http_send_to_suppressed_recipients_is_logged(api: Api, mail_log: MailLog) -> None:
    key_id, key = await api.key_record("send", "suppressions")
    added = await api.http.post(
        "/api/v1/suppressions", json={"email": "rcpt@example.test"}, headers=auth(key)
    )
    assert added.status_code == 201
    response = await api.send(key=key, path="/api/v1/send")
    assert response.status_code == 422
    assert mail_log.one("NOQUEUE: reject: POST /api/v1/send ").endswith(
        ": 422 suppressed: Send suppressed — recipient unsubscribed or bounced; "
        f"from=<app@sender.test> to=<rcpt@example.test> proto=HTTP key={key_id}"
    )
