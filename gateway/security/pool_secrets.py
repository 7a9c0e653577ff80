"""Pool passwords at rest: sealed (gateway.security.secrets) and bound to the pool's id.

The associated data names the pool, so a ciphertext copied into another pool's row does
not decrypt there. Config-file pools keep no password in storage: theirs comes from the
environment variable the file names.
"""

from __future__ import annotations

import logging
from typing import Any

from gateway.security.secrets import SecretError
from storage.dkim_keys import Cipher

log = logging.getLogger("postern.pools")


def seal(box: Cipher, pool_id: str, password: str) -> str:
    """The ciphertext to store ("" for no password)."""
    return box.seal(password, "smtp_pool", pool_id, "password") if password else ""


def unseal(box: Cipher, row: Any) -> str:
    """The password of a stored API pool row; "" (and an error logged) when it cannot be
    decrypted, so the pool fails AUTH and mail waits instead of the service failing."""
    if not row.password_enc:
        return ""
    try:
        return box.unseal(row.password_enc, "smtp_pool", row.id, "password").decode("utf-8")
    except (SecretError, UnicodeDecodeError) as error:
        log.error("the password of pool %r cannot be decrypted: %s", row.name, error)
        return ""
