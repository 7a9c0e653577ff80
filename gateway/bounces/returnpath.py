"""The return path Postern gives each message: `bounces+<token>@<bounce domain>`, and the
same token in an `X-Postern-Ref` header.

The token names the message and cannot be forged: `<message id>-<mac>`, where the mac is
HMAC-SHA256 over the id under a key derived from the installation's secret key, cut to 80
bits and written in lower-case base32 (some mail systems lower-case a whole address; the
token is read back lower-cased, and message ids are lower-case already). One HMAC per
message: delivery sends all of a message's recipients in one transaction (per upstream or
MX domain), and a transaction has one envelope sender, so the token is per message and a
report's own entries name the recipient. Every recipient of the message has seen the token;
gateway.bounces.ingest.matched therefore lets a report touch only recipients the message
had, each by its own entry (README "Return path" says what risk remains).

Pure: the key is handed in (gateway.process derives it from SecretBox); no I/O here.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass

from gateway.bounces.verp import Verp

REF_HEADER = "X-Postern-Ref"
VERP_KEY = "verp"  # the purpose its key is derived for (SecretBox.derive)
_MAC_BYTES = 10  # 80 bits: 16 base32 characters
_ID = re.compile(r"[a-z0-9_]{1,40}")  # the form of gateway.queue.ids (and short enough)
_TOKEN = re.compile(r"([a-z0-9_]{1,40})-([a-z2-7]{16})")
# A Message-ID Postern wrote itself (the SMTP door adds `<id@hostname>` when there was none).
_OWN_MESSAGE_ID = re.compile(r"<((?:sandbox_)?msg_[0-9a-f]{27})@[^<>@\s]+>")


@dataclass(frozen=True)
class ReturnPath:
    """Makes and checks the tokens of one installation. `domain` "" is off: the envelope
    sender stays the client's, and no header is added."""

    domain: str
    key: bytes
    prefix: str = "bounces"

    @property
    def enabled(self) -> bool:
        return bool(self.domain)

    @property
    def verp(self) -> Verp:
        return Verp(prefix=self.prefix, separator="+", domain=self.domain)

    def token(self, message_id: str) -> str | None:
        """The token of `message_id`, or None for an id that could not be read back safely."""
        if not _ID.fullmatch(message_id):
            return None
        return f"{message_id}-{self._mac(message_id)}"

    def address(self, message_id: str, fallback: str) -> str:
        """The envelope sender of `message_id`: its VERP address, or `fallback` (the client's
        sender) when off or when the id has no token."""
        found = self.token(message_id) if self.enabled else None
        return f"{self.prefix}+{found}@{self.domain}" if found else fallback

    def header(self, message_id: str) -> bytes:
        """The reference header field to put in the message (b"" when there is none)."""
        found = self.token(message_id) if self.enabled else None
        return f"{REF_HEADER}: {found}\r\n".encode("ascii") if found else b""

    def message_of(self, token: str) -> str | None:
        """The message id a token names, if its mac is right (any case); else None."""
        match = _TOKEN.fullmatch(token.strip().lower())
        if match is None:
            return None
        message_id, mac = match.groups()
        return message_id if hmac.compare_digest(mac, self._mac(message_id)) else None

    def _mac(self, message_id: str) -> str:
        digest = hmac.new(self.key, message_id.encode("ascii"), hashlib.sha256).digest()
        return base64.b32encode(digest[:_MAC_BYTES]).decode("ascii").lower()


def own_message_id(value: str) -> str | None:
    """The message id in a Message-ID Postern wrote (`<msg_…@host>`), else None. It names a
    message but proves nothing: a match by it is the weakest tier."""
    match = _OWN_MESSAGE_ID.fullmatch(value.strip().lower())
    return match.group(1) if match else None
