"""The per-key rate limit with `[server] workers = 2` (issue 22): one bucket per key for the
whole node. A key sending over SMTP on connections the kernel spread over both workers gets
`[http] rate_limit`, not that once per worker, and its HTTP requests (worker 0) draw on the
same bucket, as does a worker started again after a crash. A real `postern serve`, real
SMTP, a real sink."""

from __future__ import annotations

import json
import os
import signal
import smtplib
import threading
import urllib.error
import urllib.request
from email.policy import SMTP

import pytest

from tests.e2e.test_auth_workers import _serving
from tests.e2e.test_workers import worker_pid, workers_of
from tests.support.serve import (
    SENDER,
    MakePostern,
    Postern,
    message,
    run_cli,
    start_workers,
    wait_until,
)
from tests.support.sink import Sink

pytestmark = pytest.mark.timeout(120)

RATE = 5  # per hour: no token comes back (one per 12 min) while the test runs
CONNECTIONS = 12  # all on one worker: 1 in 2,048
PER_CONNECTION = 2


def _serve(postern_process: MakePostern, sink_port: int) -> Postern:
    postern = postern_process(sink_port, start=False)
    return start_workers(postern, 2, "http", f'rate_limit = "{RATE}/h"')


def _key(postern: Postern) -> str:
    made = run_cli(
        "keys", "create", "--name", "rated", "--scope", "send", "--json",
        "--config", str(postern.config),
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    return str(json.loads(made.stdout)["key"])


def _logged_in(postern: Postern, key: str) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", postern.smtp_port, local_hostname="rated.test", timeout=20)
    client.login("app", key)
    return client


def _spread(postern: Postern, clients: list[smtplib.SMTP]) -> None:
    workers = workers_of(postern.pid)
    ports = {client.sock.getsockname()[1] for client in clients if client.sock}
    assert _serving(workers, ports) == set(workers), "every connection on one worker"


def _send_all(clients: list[smtplib.SMTP]) -> list[tuple[int, bytes]]:
    """Every connection sends PER_CONNECTION messages, all at once: each one's reply to MAIL
    (or 250 for a message accepted whole)."""
    replies: list[tuple[int, bytes]] = []
    errors: list[BaseException] = []

    def one(index: int, client: smtplib.SMTP) -> None:
        for n in range(PER_CONNECTION):
            msg = message(index * PER_CONNECTION + n, "rated")
            try:
                client.sendmail(SENDER, [str(msg["To"])], msg.as_bytes(policy=SMTP))
                replies.append((250, b""))
            except smtplib.SMTPSenderRefused as refused:
                replies.append((refused.smtp_code, refused.smtp_error))
            except BaseException as error:  # reported in the test's thread
                errors.append(error)

    threads = [threading.Thread(target=one, args=pair) for pair in enumerate(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    return replies


def test_one_bucket_per_key_across_workers(sink: Sink, postern_process: MakePostern) -> None:
    postern = _serve(postern_process, sink.port)
    key = _key(postern)
    clients = [_logged_in(postern, key) for _ in range(CONNECTIONS)]
    try:
        _spread(postern, clients)
        replies = _send_all(clients)
    finally:
        for client in clients:
            client.close()
    accepted = [reply for reply in replies if reply[0] == 250]
    refused = [reply for reply in replies if reply[0] != 250]
    assert len(accepted) == RATE, replies  # per worker, up to twice RATE were accepted
    assert len(refused) == CONNECTIONS * PER_CONNECTION - RATE
    for code, text in refused:
        assert code == 451 and text.startswith(b"4.7.0 This API key's rate limit"), (code, text)
    # Its HTTP requests (worker 0) find the bucket empty too.
    request = urllib.request.Request(
        f"http://127.0.0.1:{postern.http_port}/v1/messages/none",
        headers={"Authorization": f"Bearer {key}"},
    )
    with pytest.raises(urllib.error.HTTPError) as answer:
        urllib.request.urlopen(request, timeout=10)
    assert answer.value.code == 429
    # Worker 1 killed and started again: the bucket was not in it, and stays empty.
    victim = worker_pid(postern, 1)
    os.kill(victim, signal.SIGKILL)
    assert wait_until(
        lambda: victim not in workers_of(postern.pid) and len(workers_of(postern.pid)) == 2, 30.0
    ), postern.stderr()
    clients = [_logged_in(postern, key) for _ in range(CONNECTIONS)]
    try:
        _spread(postern, clients)
        for client in clients:
            code, _ = client.mail(SENDER)
            assert code == 451, code
    finally:
        for client in clients:
            client.close()
    assert "Traceback" not in postern.stderr()
