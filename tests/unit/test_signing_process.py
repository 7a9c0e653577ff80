"""The DKIM signing child process: real child processes, killed, stopped and restarted."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from gateway.dkim import signing_process
from gateway.dkim.keys import KeyPair, generate_key, load_private_key
from gateway.dkim.signer import Signer
from gateway.dkim.signing_process import SigningProcess, SigningUnavailable
from tests.support.service import wait_until


@pytest.fixture(scope="module")
def rsa_key() -> KeyPair:
    return generate_key("rsa")


@pytest.fixture
async def process() -> AsyncIterator[SigningProcess]:
    offload = SigningProcess(lag=60)  # these tests wait for the child's answers
    yield offload
    await offload.close()


@functools.cache
def loaded(pem: bytes) -> rsa.RSAPrivateKey:
    private = load_private_key(pem)  # ~25 ms: RSA keys are checked when loaded
    assert isinstance(private, rsa.RSAPrivateKey)
    return private


def reference(key: KeyPair, digest: bytes) -> bytes:
    private = loaded(key.private_pem)
    return private.sign(digest, padding.PKCS1v15(), Prehashed(hashes.SHA256()))


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:  # a zombie is not alive
        return stat.read().split(") ")[1][0] != "Z"


async def test_signatures_are_the_ones_openssl_makes_in_process(
    process: SigningProcess, rsa_key: KeyPair
) -> None:
    """PKCS#1 v1.5 is deterministic: each answer is byte for byte the in-process signature,
    and concurrent requests each get their own."""
    digests = [hashlib.sha256(b"message %d" % i).digest() for i in range(200)]
    answers = await asyncio.gather(*(process.sign(rsa_key.private_pem, d) for d in digests))
    assert answers == [reference(rsa_key, d) for d in digests]
    assert process.pid is not None and process.pid != os.getpid()


async def test_two_keys_each_sign_with_their_own(process: SigningProcess, rsa_key: KeyPair) -> None:
    other = generate_key("rsa", bits=1024)
    digest = hashlib.sha256(b"x").digest()
    first, second = await asyncio.gather(
        process.sign(rsa_key.private_pem, digest), process.sign(other.private_pem, digest)
    )
    assert first == reference(rsa_key, digest)
    assert second == reference(other, digest)


async def test_a_key_the_child_cannot_use_fails_that_request_only(
    process: SigningProcess, rsa_key: KeyPair
) -> None:
    digest = hashlib.sha256(b"x").digest()
    with pytest.raises(SigningUnavailable):
        await process.sign(b"-----BEGIN PRIVATE KEY-----\nnot a key\n", digest)
    assert await process.sign(rsa_key.private_pem, digest) == reference(rsa_key, digest)


async def test_a_killed_child_fails_what_it_owed_and_is_replaced(
    process: SigningProcess, rsa_key: KeyPair, monkeypatch: pytest.MonkeyPatch
) -> None:
    digest = hashlib.sha256(b"x").digest()
    await process.sign(rsa_key.private_pem, digest)
    first = process.pid
    assert first is not None
    owed = [asyncio.ensure_future(process.sign(rsa_key.private_pem, digest)) for _ in range(50)]
    await asyncio.sleep(0)
    os.kill(first, signal.SIGKILL)
    results = await asyncio.gather(*owed, return_exceptions=True)
    assert all(
        r == reference(rsa_key, digest) or isinstance(r, SigningUnavailable) for r in results
    )
    with pytest.raises(SigningUnavailable):  # not restarted at once (no fork loop)
        await process.sign(rsa_key.private_pem, digest)
    monkeypatch.setattr(signing_process, "RESTART_AFTER", 0.0)
    assert await process.sign(rsa_key.private_pem, digest) == reference(rsa_key, digest)
    assert process.pid not in (None, first)


async def test_a_child_that_stops_answering_is_replaced(
    process: SigningProcess, rsa_key: KeyPair, monkeypatch: pytest.MonkeyPatch
) -> None:
    digest = hashlib.sha256(b"x").digest()
    await process.sign(rsa_key.private_pem, digest)  # started at the usual timeout: a loaded
    monkeypatch.setattr(signing_process, "ANSWER_TIMEOUT", 0.3)  # machine starts it slowly
    stuck = process.pid
    assert stuck is not None
    os.kill(stuck, signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(SigningUnavailable):
            await asyncio.wait_for(process.sign(rsa_key.private_pem, digest), 5)
        assert time.monotonic() - started < 2
        # killed (SIGKILL ends a stopped process too)
        await wait_until(lambda: not alive(stuck), timeout=2, interval=0.02)
        assert not alive(stuck)
    finally:
        if alive(stuck):
            os.kill(stuck, signal.SIGKILL)


async def test_close_stops_the_child_and_later_requests_fail(
    process: SigningProcess, rsa_key: KeyPair
) -> None:
    digest = hashlib.sha256(b"x").digest()
    await process.sign(rsa_key.private_pem, digest)
    pid = process.pid
    assert pid is not None
    await process.close()
    assert not alive(pid)
    with pytest.raises(SigningUnavailable):
        await process.sign(rsa_key.private_pem, digest)


async def test_a_late_child_leaves_the_signing_to_the_caller(rsa_key: KeyPair) -> None:
    """A request not answered within `lag` fails (its caller signs in-process), and so does
    every new one while the child is behind, at once; the late answers are dropped."""
    offload = SigningProcess(lag=0.05)
    digest = hashlib.sha256(b"x").digest()
    try:
        await offload.start()
        pid = offload.pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        started = time.monotonic()
        with pytest.raises(SigningUnavailable, match="late"):
            await offload.sign(rsa_key.private_pem, digest)
        assert time.monotonic() - started < 1
        started = time.monotonic()
        with pytest.raises(SigningUnavailable, match="behind"):
            await offload.sign(rsa_key.private_pem, digest)
        assert time.monotonic() - started < 0.01
        os.kill(pid, signal.SIGCONT)  # it answers the late request (dropped) and catches up
        for _ in range(200):
            try:
                assert await offload.sign(rsa_key.private_pem, digest) == reference(rsa_key, digest)
                break
            except SigningUnavailable:
                await asyncio.sleep(0.02)
        else:
            pytest.fail("the child never caught up")
        assert offload.pid == pid
    finally:
        await offload.close()


async def test_signer_falls_back_to_signing_in_process(rsa_key: KeyPair) -> None:
    """Whatever happens to the child, a message is signed, and identically."""
    offload = SigningProcess(lag=60)
    signer = Signer("example.com", "s1", rsa_key.private_pem, offload)
    message = b"From: a@example.com\r\nSubject: x\r\n\r\nbody\r\n"
    expected = signer.sign(message, now=1)
    assert await signer.sign_async(message, now=1) == expected  # through the child
    assert offload.pid is not None
    await offload.close()
    assert await signer.sign_async(message, now=1) == expected  # in-process


def test_the_child_exits_when_its_parent_dies(tmp_path: object) -> None:
    """kill -9 of Postern leaves no signing process behind: it reads end-of-file."""
    script = textwrap.dedent(
        """
        import asyncio, os, sys
        from gateway.dkim.signing_process import SigningProcess

        async def main():
            offload = SigningProcess()
            await offload.start()
            print(offload.pid, flush=True)
            sys.stdin.readline()

        asyncio.run(main())
        """
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert alive(child)
        parent.kill()
        parent.wait(5)
        deadline = time.monotonic() + 5
        while alive(child) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not alive(child)
    finally:
        parent.kill()
        parent.wait(5)


async def test_the_child_gets_no_secret_from_the_environment(
    rsa_key: KeyPair, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POSTERN_SECRET_KEY", "c2VjcmV0")
    monkeypatch.setenv("SES_PASSWORD", "hunter2")
    offload = SigningProcess(lag=60)
    try:
        await offload.start()
        assert offload.pid is not None
        with open(f"/proc/{offload.pid}/environ", "rb") as environ:
            names = {item.split(b"=", 1)[0] for item in environ.read().split(b"\0") if item}
        assert b"POSTERN_SECRET_KEY" not in names and b"SES_PASSWORD" not in names
        digest = hashlib.sha256(b"x").digest()  # and it still imports and signs
        assert await offload.sign(rsa_key.private_pem, digest) == reference(rsa_key, digest)
    finally:
        await offload.close()


async def test_close_while_the_child_starts_leaves_no_child() -> None:
    offload = SigningProcess(lag=60)
    starting = asyncio.ensure_future(offload.start())
    await asyncio.sleep(0)
    await offload.close()
    await starting
    assert offload.pid is None


async def test_a_malformed_answer_ends_the_child(process: SigningProcess, rsa_key: KeyPair) -> None:
    digest = hashlib.sha256(b"x").digest()
    await process.sign(rsa_key.private_pem, digest)
    child = process._child
    assert child is not None
    owed = asyncio.ensure_future(process.sign(rsa_key.private_pem, digest))
    await asyncio.sleep(0)
    child.pipe_data_received(1, b"\0\0\0\0\xff\xff")  # a length no signature has
    with pytest.raises(SigningUnavailable):
        await owed
    assert process.pid is None


async def test_a_child_killed_for_its_priority_call_is_restarted_at_normal_priority(
    process: SigningProcess, rsa_key: KeyPair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An old systemd unit's seccomp filter kills the child with SIGSYS when it asks for
    SCHED_IDLE: the next child does not ask."""
    await process.start()
    first = process.pid
    assert first is not None
    # it lowers itself as the first thing it does
    await wait_until(lambda: os.sched_getscheduler(first) == os.SCHED_IDLE, 2, 0.02)
    assert os.sched_getscheduler(first) == os.SCHED_IDLE
    os.kill(first, signal.SIGSYS)  # what seccomp's kill action does
    # its exit status is seen (the restart comes 10 s later anyway)
    await wait_until(lambda: process.pid is None and process._idle_refused, 2, 0.02)
    monkeypatch.setattr(signing_process, "RESTART_AFTER", 0.0)
    digest = hashlib.sha256(b"x").digest()
    assert await process.sign(rsa_key.private_pem, digest) == reference(rsa_key, digest)
    assert process.pid not in (None, first)
    assert os.sched_getscheduler(process.pid) == os.SCHED_OTHER


async def test_a_child_that_cannot_start_leaves_the_signing_to_the_caller(
    rsa_key: KeyPair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An interpreter that exits at once (here /bin/false): no request waits for it."""
    monkeypatch.setattr(signing_process.sys, "executable", "/bin/false")
    offload = SigningProcess(lag=60)
    try:
        started = time.monotonic()
        with pytest.raises(SigningUnavailable):
            await asyncio.wait_for(offload.sign(rsa_key.private_pem, b"\0" * 32), 5)
        assert time.monotonic() - started < 2
        assert offload.pid is None
    finally:
        await offload.close()
