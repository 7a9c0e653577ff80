"""A really full disk: data_dir on a small tmpfs, filled to the last byte by another file.

SMTP answers `452 4.3.1` at the end of DATA, and at MAIL while the disk is known to be
full; HTTP answers 507 `storage_full`; /readyz answers 503 `storage_full` while /healthz
stays 200 (the process is alive and reads work); `postern_storage_write_failures_total
{reason="full"}` counts the failed commits. Nothing acknowledged before is lost or doubled,
and once space is back the node is ready again and takes and delivers mail with nobody
restarting it. Other write failures keep `451 4.3.0` / 503 (test_storage_faults.py).

Mounting needs root (CAP_SYS_ADMIN): without it the test is skipped, saying so.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import re
import smtplib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.smtpd import replies
from storage.keys import create_key
from tests.support.rows import query
from tests.support.service import ManagedService, ServiceFactory, wait_until
from tests.support.sink import Sink
from tests.support.smtp import smtp_send

pytestmark = pytest.mark.timeout(120)

TMPFS_SIZE = "16m"
# Larger than anything SQLite could still squeeze into pages it already has.
BIG_BODY = (b"x" * 998 + b"\r\n") * 200


class FullDisk:
    """A tmpfs at `path`; fill() takes its last free byte, free() gives the space back."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.filler = path / "filler"

    def fill(self) -> None:
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            chunk = b"\0" * 65536
            while True:
                try:
                    os.write(fd, chunk)
                except OSError as error:
                    if error.errno != errno.ENOSPC:
                        raise
                    if len(chunk) == 1:
                        break
                    chunk = chunk[: len(chunk) // 2]
        finally:
            os.close(fd)
        assert os.statvfs(self.path).f_bavail == 0

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[FullDisk]:
    """data_dir (tmp_path/var, where make_config puts it) on a tmpfs of its own.

    Requested before `service`, so torn down after it: the service is stopped first."""
    mountpoint = tmp_path / "var"
    mountpoint.mkdir(mode=0o700)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE},mode=0700", "tmpfs", str(mountpoint)],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root): {mounted.stderr.strip()}")
    try:
        yield FullDisk(mountpoint)
    finally:
        with contextlib.suppress(subprocess.SubprocessError):
            subprocess.run(["umount", "-l", str(mountpoint)], timeout=10, check=False)


def _http(svc: ManagedService) -> httpx.AsyncClient:
    host, port = svc.config.http.listen
    return httpx.AsyncClient(base_url=f"http://{host}:{port}", timeout=30)


async def _failures_full(http: httpx.AsyncClient) -> float:
    text = (await http.get("/metrics")).text
    found = re.search(r'^postern_storage_write_failures_total\{reason="full"\} (\S+)$', text, re.M)
    assert found, "postern_storage_write_failures_total{reason=full} is not exported"
    return float(found.group(1))


async def _smtp(svc: ManagedService, name: str, body: bytes = b"body\r\n") -> tuple[int, str]:
    """One message to `name`@y.test (each test message has its own recipient)."""
    rcpt = f"{name}@y.test"
    data = f"From: a@x.test\r\nTo: {rcpt}\r\nSubject: {name}\r\n\r\n".encode() + body
    return await smtp_send(svc.smtp_port, "a@x.test", [rcpt], data)


def _mail_reply(port: int) -> tuple[int, str]:
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=10) as client:
        client.ehlo()
        code, text = client.mail("a@x.test")
        return code, text.decode()


async def _http_send(http: httpx.AsyncClient, key: str, name: str) -> httpx.Response:
    body = {
        "from": {"email": "a@x.test"},
        "to": [{"email": f"{name}@y.test"}],
        "subject": name,
        "text": ("y" * 76 + "\n") * 3000,
    }
    return await http.post("/v1/send", json=body, headers={"Authorization": f"Bearer {key}"})


async def _copies(svc: ManagedService, name: str) -> int:
    """How many messages the database holds for `name`@y.test."""
    rows = await query(svc, "SELECT count(*) AS n FROM recipient WHERE email = ?", f"{name}@y.test")
    return int(rows[0]["n"])


async def test_a_full_disk_is_452_and_507_and_nothing_acknowledged_is_lost(
    full_disk: FullDisk, service: ServiceFactory, sink: Sink
) -> None:
    svc = await service()
    _, key = await create_key(svc.db, "disk", ["send"])
    # One message delivered before the disk fills, one acknowledged but still being retried
    # (its upstream says 451) while the disk is full.
    assert (await _smtp(svc, "before"))[0] == 250
    sink.fail("rcpt", "451 4.3.0 try later", match="late@y.test")
    assert (await _smtp(svc, "late"))[0] == 250
    assert await sink.wait_for_async(1, timeout=10)

    async with _http(svc) as http:
        failures = await _failures_full(http)
        full_disk.fill()
        try:
            code, text = await _smtp(svc, "during", BIG_BODY)
            assert (code, text[:5]) == replies.STORAGE_FULL.status, (code, text)
            # Known to be full: the next client is turned away at MAIL, content unsent.
            code, text = await asyncio.to_thread(_mail_reply, svc.smtp_port)
            assert (code, text[:5]) == replies.STORAGE_FULL.status, (code, text)

            ready = await http.get("/readyz")
            assert ready.status_code == 503, ready.text
            assert ready.json()["reason"] == "storage_full"
            assert (await http.get("/healthz")).status_code == 200  # alive: reads work

            response = await _http_send(http, key, "during-http")
            assert response.status_code == 507, response.text
            assert response.json()["code"] == "storage_full"
            assert response.headers.get("Retry-After", "").isdigit()
            assert await _failures_full(http) >= failures + 2
        finally:
            full_disk.free()
        sink.clear()

        # Space is back: the probe write behind /readyz finds out, with nobody restarting.
        async def ready_again() -> bool:
            return (await http.get("/readyz")).status_code == 200

        assert await wait_until(ready_again, timeout=30, interval=0.5)
        code, text = await _smtp(svc, "after")
        assert code == 250, text
        assert (await _http_send(http, key, "after-http")).status_code in (200, 202)

    acknowledged = ["before", "late", "after", "after-http"]
    assert await sink.wait_for_async(len(acknowledged), timeout=20)
    assert sorted(sink.recipients()) == sorted(f"{name}@y.test" for name in acknowledged)
    for name in acknowledged:
        assert await _copies(svc, name) == 1, name
    for name in ("during", "during-http"):
        assert await _copies(svc, name) == 0, name
