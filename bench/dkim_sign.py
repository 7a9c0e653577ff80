#!/usr/bin/env python3
"""DKIM signing cost per message (never collected by pytest).

    python bench/dkim_sign.py [--seconds 0.5] [--json]

For messages of 1 KB, 10 KB and 100 KB (76-character lines, the header set Postern signs),
and 100 KB of indented HTML-like lines ("100KB ws": whitespace runs and tabs on every line),
times one `Signer.sign` call (CPU time of this thread, median of several rounds):

    rsa-dkimpy     dkimpy's own `dkim.sign`: pure-Python RSA-2048, PEM parsed per call
    rsa            gateway.dkim.signer.Signer: dkimpy canonicalisation, RSA-2048 in OpenSSL
    ed25519        gateway.dkim.signer.Signer with an Ed25519 key (RFC 8463)

and, once, the bare private-key operation of each path (what the figures above add to
hashing and canonicalisation, which grow with the size). Postern runs all of it on the
event loop of the worker that accepted the message (a message over 1 MiB is hashed in a
thread). Every signature made is checked once with `dkim.verify` first, so the figures are
for signatures that verify.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import dkim as dkimpy
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.dkim.canonical import signed_header_names
from gateway.dkim.keys import generate_key, load_private_key
from gateway.dkim.signer import Signer

DOMAIN = "example.com"
SIZES = (1024, 10 * 1024, 100 * 1024)
INDENTED = "indented"  # 100 KB of HTML-like lines indented with spaces and tabs


def message(size: int, indented: bool = False) -> bytes:
    head = (
        b"From: Example App <app@example.com>\r\n"
        b"To: alice@example.net\r\n"
        b"Subject: Your receipt\r\n"
        b"Date: Mon, 02 Jun 2025 10:00:00 +0000\r\n"
        b"Message-ID: <bench@example.com>\r\n"
        b"MIME-Version: 1.0\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"\r\n"
    )
    line = b"The quick brown fox jumps over the lazy dog, again and again and again.\r\n"
    if indented:  # whitespace runs: the slow path of relaxed canonicalisation
        line = b"        <td>\t<span>  quick  brown  fox</span>  </td>    \r\n"
    body = line * ((size - len(head)) // len(line) + 1)
    return head + body[: size - len(head) - 2] + b"\r\n"


def per_call(work: Callable[[], object], seconds: float) -> float:
    """Median CPU seconds per call over 5 rounds of about `seconds`/5 each."""
    work()
    start = time.thread_time()
    calls = 0
    while time.thread_time() - start < seconds / 20:
        work()
        calls += 1
    batch = max(1, calls * 4)
    rounds = []
    for _ in range(5):
        start = time.thread_time()
        for _ in range(batch):
            work()
        rounds.append((time.thread_time() - start) / batch)
    return statistics.median(rounds)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=0.5, help="time per case (0.5)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    rsa_key = generate_key("rsa")
    ed_key = generate_key("ed25519")
    rsa_signer = Signer(DOMAIN, "rsa", rsa_key.private_pem)
    ed_signer = Signer(DOMAIN, "ed", ed_key.private_pem)
    private = load_private_key(rsa_key.private_pem)
    assert isinstance(private, rsa.RSAPrivateKey)
    pkcs1 = private.private_bytes(  # dkimpy's own parser reads PKCS#1 only
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    records = {
        b"rsa._domainkey.example.com.": rsa_signer.record().value.encode(),
        b"ed._domainkey.example.com.": ed_signer.record().value.encode(),
    }

    def dnsfunc(name: bytes, timeout: float = 5) -> bytes | None:
        return records.get(name)

    results: list[dict[str, object]] = []
    for size in (*SIZES, INDENTED):
        content = message(100 * 1024, indented=True) if size == INDENTED else message(int(size))
        include = [
            n.decode() for n in signed_header_names(h for h, _ in dkimpy.DKIM(content).headers)
        ]

        def pure(content: bytes = content, include: list[str] = include) -> bytes:
            return dkimpy.sign(
                content, b"rsa", DOMAIN.encode(), pkcs1,
                canonicalize=(b"relaxed", b"relaxed"), include_headers=include,
            )  # fmt: skip

        cases: dict[str, Callable[[], bytes]] = {
            "rsa-dkimpy": pure,
            "rsa": functools.partial(rsa_signer.sign, content),
            "ed25519": functools.partial(ed_signer.sign, content),
        }
        for name, work in cases.items():
            if not dkimpy.verify(work() + content, dnsfunc=dnsfunc):
                print(f"{name} at {size} bytes: signature does not verify", file=sys.stderr)
                return 1
            cost = per_call(work, args.seconds)
            results.append({"case": name, "size": size, "ms": round(cost * 1000, 3)})

    digest = b"\0" * 32
    parsed = dkimpy.crypto.parse_pem_private_key(pkcs1)
    hasher = dkimpy.crypto.HASH_ALGORITHMS[b"rsa-sha256"]()
    raw: dict[str, Callable[[], object]] = {
        "rsa-dkimpy (parse PEM + sign)": lambda: dkimpy.crypto.RSASSA_PKCS1_v1_5_sign(
            hasher, dkimpy.crypto.parse_pem_private_key(pkcs1)
        ),
        "rsa-dkimpy (sign only)": lambda: dkimpy.crypto.RSASSA_PKCS1_v1_5_sign(hasher, parsed),
        "rsa (cryptography)": lambda: private.sign(b"x", padding.PKCS1v15(), hashes.SHA256()),
        "ed25519 (cryptography)": lambda: ed_signer._sign_digest(digest),
    }
    operations = {name: round(per_call(work, args.seconds) * 1000, 3) for name, work in raw.items()}

    if args.json:
        report = {"sign": results, "key_operation_ms": operations}
        print(json.dumps(report, indent=2))
        return 0
    print("DKIM signing cost per message (CPU ms, median; relaxed/relaxed, SHA-256)")
    print(f"{'size':>8}  " + "  ".join(f"{name:>11}" for name in ("rsa-dkimpy", "rsa", "ed25519")))
    for size in (*SIZES, INDENTED):
        row = {r["case"]: r["ms"] for r in results if r["size"] == size}
        cells = "  ".join(f"{row[name]:>11.3f}" for name in ("rsa-dkimpy", "rsa", "ed25519"))
        label = "100KB ws" if size == INDENTED else f"{int(size) // 1024}KB"
        print(f"{label:>8}  {cells}")
    print("\nprivate-key operation alone (ms):")
    for name, cost in operations.items():
        print(f"  {name:<32} {cost:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
