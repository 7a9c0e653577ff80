"""Secrets at rest: pool passwords and DKIM private keys are stored only encrypted.

One 32-byte key per installation, taken from `POSTERN_SECRET_KEY` (URL-safe base64), else
from `secret.key` in data_dir, created on first use. Every node sharing one PostgreSQL
database must use the same key, so multi-node installations set the variable (or copy the
file). The file is created with mode 0600 under a temporary name and linked into place, so
it is never readable by others, not even for a moment, and two processes starting together
agree on one key (the second link fails and it reads the winner's).

Ciphertexts are AES-256-GCM (`cryptography`), as text: ``pst1.<key id>.<nonce+ciphertext>``.
The key id (a hash of the key, not the key) lets `decrypt` say "made with another key"
instead of a bare authentication failure. `associated` data binds a ciphertext to its
context (e.g. the row it belongs to): a value copied into another row does not decrypt.
Every stored secret is sealed that way through `seal`/`unseal`, which spell the context as
its parts joined by ":" (`smtp_pool:<id>:password`, `webhook:<id>:secret`,
`dkim_key:<domain>:<selector>`): the bytes stored ciphertexts were made with.

    SecretError
     ├── SecretKeyError        the key cannot be loaded or created (one line for the operator)
     └── DecryptError          a ciphertext does not decrypt
          └── WrongKeyError    ... because it was made with another key
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.errors import SecretError
from storage.paths import prepare_data_dir, write_whole

if TYPE_CHECKING:
    from sqlalchemy import Connection

    from storage.db import Database

ENV_VAR = "POSTERN_SECRET_KEY"
KEY_FILE = "secret.key"
KEY_BYTES = 32
_PREFIX = "pst1"
_NONCE = 12

META_KEY_ID = "secret_key_id"  # the postern_meta row naming the key secrets are sealed with


class SecretKeyError(SecretError):
    """The secret key is missing, malformed, unreadable or readable by others."""


class DecryptError(SecretError):
    """A ciphertext is malformed, corrupted, or bound to another context."""


class WrongKeyError(DecryptError):
    """The ciphertext was made with a different secret key than the one loaded."""


def generate_key() -> str:
    """A fresh key in the form POSTERN_SECRET_KEY takes (for operators and tests)."""
    return base64.urlsafe_b64encode(secrets.token_bytes(KEY_BYTES)).decode("ascii")


def _decode_key(text: str, where: str) -> bytes:
    stripped = text.strip()
    try:
        raw = base64.urlsafe_b64decode(stripped + "=" * (-len(stripped) % 4))
    except (binascii.Error, ValueError):
        raise SecretKeyError(f"{where}: not URL-safe base64") from None
    if len(raw) != KEY_BYTES:
        raise SecretKeyError(f"{where}: expected {KEY_BYTES} bytes of key, got {len(raw)}")
    return raw


def _key_id(key: bytes) -> str:
    return hashlib.sha256(b"postern secret key id\0" + key).hexdigest()[:8]


class SecretBox:
    """Encrypts and decrypts with one loaded key; safe to share between tasks and threads."""

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise SecretKeyError(f"a secret key has {KEY_BYTES} bytes, got {len(key)}")
        self._aead = AESGCM(key)
        self.key_id = _key_id(key)
        # The root of derived keys (`derive`): not the key itself, so a derived key's
        # holder learns nothing of what seals the secrets.
        self._derive_root = hashlib.sha256(b"postern derived keys\0" + key).digest()

    def derive(self, purpose: str) -> bytes:
        """A 32-byte key for `purpose` (e.g. "verp"), the same on every node sharing the
        secret key, and independent of the sealing key and of other purposes."""
        return hmac.new(self._derive_root, purpose.encode("utf-8"), hashlib.sha256).digest()

    @classmethod
    def from_environment(
        cls, data_dir: str | os.PathLike[str], environ: Mapping[str, str] | None = None
    ) -> SecretBox:
        """The key from $POSTERN_SECRET_KEY, else data_dir/secret.key (created if missing)."""
        env = os.environ if environ is None else environ
        value = env.get(ENV_VAR, "")
        if value.strip():
            return cls(_decode_key(value, ENV_VAR))
        return cls(load_or_create_key_file(Path(data_dir) / KEY_FILE))

    def encrypt(self, data: bytes | str, associated: bytes = b"") -> str:
        """Ciphertext text for `data` (str is encoded as UTF-8)."""
        plain = data.encode("utf-8") if isinstance(data, str) else bytes(data)
        nonce = secrets.token_bytes(_NONCE)
        sealed = self._aead.encrypt(nonce, plain, associated or None)
        body = base64.urlsafe_b64encode(nonce + sealed).decode("ascii").rstrip("=")
        return f"{_PREFIX}.{self.key_id}.{body}"

    def decrypt(self, token: str, associated: bytes = b"") -> bytes:
        """The plaintext of `token`; DecryptError/WrongKeyError when it cannot be opened."""
        prefix, _, rest = token.partition(".")
        key_id, _, body = rest.partition(".")
        if prefix != _PREFIX or not key_id or not body:
            raise DecryptError("not a Postern ciphertext")
        if key_id != self.key_id:
            raise WrongKeyError(
                f"this value was encrypted with another secret key (key id {key_id}; the "
                f"loaded key is {self.key_id}): set {ENV_VAR} or {KEY_FILE} to the key it "
                "was made with"
            )
        try:
            raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        except (binascii.Error, ValueError):
            raise DecryptError("ciphertext is not valid base64") from None
        if len(raw) < _NONCE + 16:
            raise DecryptError("ciphertext is truncated")
        try:
            return self._aead.decrypt(raw[:_NONCE], raw[_NONCE:], associated or None)
        except InvalidTag:
            raise DecryptError(
                "ciphertext does not authenticate (corrupted, or stored for another record)"
            ) from None

    def decrypt_text(self, token: str, associated: bytes = b"") -> str:
        return self.decrypt(token, associated).decode("utf-8")

    def seal(self, data: bytes | str, *context: str) -> str:
        """A secret to store, bound to its `context` (what it is and the row it belongs to)."""
        return self.encrypt(data, bound_to(*context))

    def unseal(self, token: str, *context: str) -> bytes:
        """The secret `seal` stored with the same `context`; DecryptError otherwise."""
        return self.decrypt(token, bound_to(*context))


def bound_to(*context: str) -> bytes:
    """The associated data of a secret stored in `context`."""
    return ":".join(context).encode()


def installed_key_id(data_dir: Path, environ: Mapping[str, str] | None = None) -> str | None:
    """The id of the key a server on data_dir loads ($POSTERN_SECRET_KEY, else secret.key),
    or None when it has none yet. Never creates one."""
    env = os.environ if environ is None else environ
    if env.get(ENV_VAR, "").strip():
        return SecretBox.from_environment(data_dir, env).key_id
    try:
        return _key_id(_read_key_file(data_dir / KEY_FILE))
    except FileNotFoundError:
        return None


def load_or_create_key_file(path: Path) -> bytes:
    """Read the key file, creating it (0600, atomically, no clobber) when it is missing."""
    try:
        return _read_key_file(path)
    except FileNotFoundError:
        pass
    try:
        prepare_data_dir(path.parent)
        _create_key_file(path)
    except OSError as error:
        raise SecretKeyError(f"cannot create {path}: {error.strerror or error}") from None
    try:
        return _read_key_file(path)
    except FileNotFoundError:
        raise SecretKeyError(f"{path} vanished right after it was created") from None


def _read_key_file(path: Path) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        raise
    except OSError as error:
        raise SecretKeyError(f"cannot read {path}: {error.strerror or error}") from None
    with os.fdopen(fd, "rb") as handle:
        mode = os.fstat(handle.fileno()).st_mode
        if not stat.S_ISREG(mode):
            raise SecretKeyError(f"{path} is not a regular file")
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise SecretKeyError(
                f"{path} is accessible by other users (mode {stat.S_IMODE(mode):04o}); "
                f"run: chmod 600 {path}"
            )
        raw = handle.read(4096)
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise SecretKeyError(f"{path}: not URL-safe base64") from None
    return _decode_key(text, str(path))


def _create_key_file(path: Path) -> None:
    """A new key, written whole and linked in unless one exists (another process won: its
    key is the one read). Mode 0600 from creation: the file never exists with wider
    permissions."""
    write_whole(path, generate_key().encode("ascii") + b"\n", 0o600, replace=False)


async def bind_to_database(db: Database, box: SecretBox) -> None:
    """Refuse a secret key other than the one this database's secrets are sealed with.

    The first process to use a database records its key's id there; a later one with
    another key (say, `postern dkim generate` run in a shell without the server's
    POSTERN_SECRET_KEY) is stopped at once, instead of sealing secrets nobody can open.
    """
    # Imported here: the supervisor reads the key but opens no database (no SQLAlchemy).
    from sqlalchemy import select
    from sqlalchemy.exc import IntegrityError

    from storage.models import Meta

    def read(conn: Connection) -> str | None:
        return conn.execute(select(Meta.c.value).where(Meta.c.key == META_KEY_ID)).scalar()

    def record(conn: Connection) -> str | None:
        found = read(conn)
        if found is None:
            conn.execute(Meta.insert().values(key=META_KEY_ID, value=box.key_id))
        return found

    try:
        found = await db.transaction(record)
    except IntegrityError:  # another node recorded its key at the same moment
        found = await db.read(read)
    if found is not None and found != box.key_id:
        raise SecretKeyError(
            f"this database's secrets are sealed with key {found}, but this process has key "
            f"{box.key_id}: use the same POSTERN_SECRET_KEY (or data_dir/secret.key) as the "
            "server"
        )
