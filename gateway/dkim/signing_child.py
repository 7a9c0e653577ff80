"""The DKIM signing child process (started by gateway.dkim.signing_process): RSA operations only.

It imports as little as it can and lowers itself to SCHED_IDLE before anything else, so
that even its start takes only idle CPU (not with --normal-priority: the parent passes it
after a seccomp filter killed a child for asking). It reads frames on its standard input until
end-of-file and answers on the descriptor that was its standard output (standard output
itself is pointed at standard error, so that nothing else printed can corrupt the answers).

Frames, all integers big-endian:
    parent -> child   kind (1 byte) | number (u32) | length (u32) | payload
        b"K": load the PEM key in payload as key `number`
        b"S": sign; number is the request id, payload = key number (u32) + SHA-256 digest
    child -> parent   request id (u32) | length (u16) | PKCS#1 v1.5 signature (empty: failed)
"""

from __future__ import annotations

import contextlib
import os
import signal
import struct
import sys

REQUEST = struct.Struct(">cII")
KEY_NUMBER = struct.Struct(">I")
ANSWER = struct.Struct(">IH")
SIGNATURE_MAX = 2048  # bytes: an RSA-16384 signature; anything longer is a broken stream
ANSWERS_PER_WRITE = 32  # RSA-2048: ~7 ms of signing, the most an answer waits for others


def serve(fd_in: int, fd_out: int) -> None:
    """Answer frames from `fd_in` on `fd_out` until end-of-file."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding, rsa
    from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

    keys: dict[int, rsa.RSAPrivateKey | None] = {}
    pkcs1, prehashed = padding.PKCS1v15(), Prehashed(hashes.SHA256())
    buffer = bytearray()
    while chunk := os.read(fd_in, 1 << 16):
        buffer += chunk
        at = 0
        out: list[bytes] = []  # answers go back together: one read for the parent, not each
        while len(buffer) - at >= REQUEST.size:
            kind, number, length = REQUEST.unpack_from(buffer, at)
            start, end = at + REQUEST.size, at + REQUEST.size + length
            if end > len(buffer):
                break
            payload = bytes(buffer[start:end])
            at = end
            if kind == b"K":
                try:
                    key = serialization.load_pem_private_key(payload, password=None)
                except (ValueError, TypeError):
                    key = None
                keys[number] = key if isinstance(key, rsa.RSAPrivateKey) else None
                continue
            (key_number,) = KEY_NUMBER.unpack_from(payload)
            signer = keys.get(key_number)
            try:
                signature = signer.sign(payload[4:], pkcs1, prehashed) if signer else b""
            except (ValueError, TypeError):
                signature = b""
            out.append(ANSWER.pack(number, len(signature)) + signature)
            if len(out) == ANSWERS_PER_WRITE:
                _write_all(fd_out, b"".join(out))
                out.clear()
        del buffer[:at]
        _write_all(fd_out, b"".join(out))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


if __name__ == "__main__":
    if "--normal-priority" not in sys.argv[1:]:
        with contextlib.suppress(AttributeError, OSError):  # not Linux, or not allowed: as is
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    # Ctrl-C and systemd's SIGTERM (sent to the whole cgroup) are for the parent, which
    # signs what is in flight during its drain; its exit closes our input, and we follow.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    answers = os.dup(1)
    os.dup2(2, 1)
    serve(0, answers)
