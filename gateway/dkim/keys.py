"""DKIM signing keys and the DNS record that publishes one.

Keys are RSA (2048 bits by default) or Ed25519 (RFC 8463), kept as PKCS#8 PEM (encrypted at
rest by storage.dkim_keys). The DNS record is ``v=DKIM1; k=rsa|ed25519; p=<base64>`` at
``<selector>._domainkey.<domain>``, shown whole and as zone-file text split into quoted
strings of at most 255 bytes (one TXT string's limit; DKIM verifiers concatenate them).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from gateway.dkim.errors import KeyFormatError

ALGORITHMS = ("rsa", "ed25519")
DEFAULT_RSA_BITS = 2048
# Signing runs on the event loop: an RSA signature cost 0.5 ms at 2048 bits, 1.6 at 4096 and
# tens of ms at 8192 here (per message). RFC 8301 has verifiers accept up to 4096.
MAX_RSA_BITS = 4096
TXT_STRING_MAX = 255


@dataclass(frozen=True)
class KeyPair:
    """A new signing key: the private half is PKCS#8 PEM, unencrypted — encrypt it to store."""

    algorithm: str  # "rsa" | "ed25519"
    private_pem: bytes
    public_key: str  # the base64 p= value

    def __repr__(self) -> str:  # never print the private key by accident
        return f"KeyPair(algorithm={self.algorithm!r}, public_key={self.public_key[:16]!r}...)"


def generate_key(algorithm: str = "rsa", bits: int = DEFAULT_RSA_BITS) -> KeyPair:
    """A fresh key pair. RSA below 1024 bits is refused (verifiers reject it), and above
    MAX_RSA_BITS (each signature would hold the event loop for tens of ms)."""
    private: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    if algorithm == "rsa":
        if bits < 1024:
            raise KeyFormatError("RSA DKIM keys need at least 1024 bits (2048 recommended)")
        if bits > MAX_RSA_BITS:
            raise KeyFormatError(
                f"RSA DKIM keys of more than {MAX_RSA_BITS} bits are refused: each signature "
                "would cost tens of ms (2048 recommended)"
            )
        private = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    elif algorithm == "ed25519":
        private = ed25519.Ed25519PrivateKey.generate()
    else:
        raise KeyFormatError(f"unknown algorithm {algorithm!r}; use one of {', '.join(ALGORITHMS)}")
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return KeyPair(algorithm, pem, public_key_value(private))


def load_private_key(pem: bytes) -> rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as error:
        raise KeyFormatError(f"not a usable private key: {error}") from None
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < 1024:
            raise KeyFormatError(f"RSA key of {key.key_size} bits is too small")
        return key
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key
    raise KeyFormatError(f"unsupported key type {type(key).__name__}; DKIM uses RSA or Ed25519")


def public_key_value(private: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey) -> str:
    """The p= value: RSA SubjectPublicKeyInfo DER, or the raw 32 Ed25519 bytes (RFC 8463)."""
    public = private.public_key()
    if isinstance(public, ed25519.Ed25519PublicKey):
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    else:
        raw = public.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    return base64.b64encode(raw).decode("ascii")


# --- the DNS record ----------------------------------------------------------------------


def record_name(selector: str, domain: str) -> str:
    """``<selector>._domainkey.<domain>`` (no trailing dot)."""
    return f"{selector}._domainkey.{domain}"


def txt_value(algorithm: str, public_key: str) -> str:
    """The whole TXT record value."""
    if algorithm not in ALGORITHMS:
        raise KeyFormatError(f"unknown algorithm {algorithm!r}")
    return f"v=DKIM1; k={algorithm}; p={public_key}"


def txt_strings(value: str) -> list[str]:
    """`value` cut into character-strings of at most 255 bytes (RFC 1035 §3.3.14)."""
    raw = value.encode("ascii")
    return [
        raw[i : i + TXT_STRING_MAX].decode("ascii") for i in range(0, len(raw), TXT_STRING_MAX)
    ] or [""]


@dataclass(frozen=True)
class DnsRecord:
    """What an operator publishes for one selector."""

    name: str  # selector._domainkey.domain
    value: str  # the whole TXT value

    @property
    def strings(self) -> list[str]:
        return txt_strings(self.value)

    def zone(self, ttl: int | None = None) -> str:
        """One zone-file line: ``name. [ttl] IN TXT "part" "part"``."""
        quoted = " ".join(f'"{part}"' for part in self.strings)
        return f"{self.name}. {'' if ttl is None else f'{ttl} '}IN TXT {quoted}"


def dns_record(selector: str, domain: str, algorithm: str, public_key: str) -> DnsRecord:
    return DnsRecord(record_name(selector, domain), txt_value(algorithm, public_key))
