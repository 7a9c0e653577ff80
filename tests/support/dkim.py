"""DKIM from a test's side: keys made as `postern dkim` makes them, the records it prints
served to dkimpy's verifier, and the header fields a signature covers."""

from __future__ import annotations

import argparse
import email
import email.policy
import re
from collections.abc import Callable
from typing import Any

from gateway.config import Config
from gateway.process.commands.admin import with_database
from gateway.process.commands.dkim import _act
from gateway.security.secrets import SecretBox


def published(*keys: dict[str, Any]) -> Callable[..., bytes | None]:
    """A dkimpy `dnsfunc` serving the records `postern dkim generate --json` printed."""
    records = {key["name"].lower() + ".": key["value"].encode() for key in keys}

    def dnsfunc(name: bytes | str, timeout: float = 5) -> bytes | None:
        text = name.decode() if isinstance(name, bytes) else name
        return records.get(text.lower())

    return dnsfunc


async def dkim_cli(config: Config, action: str, **options: Any) -> Any:
    """What `postern dkim ACTION --json` does, against the test's data_dir."""
    args = argparse.Namespace(action=action, json=True, **{"selector": None, **options})
    box = SecretBox.from_environment(config.server.data_dir)
    return await with_database(config, lambda db: _act(db, box, args))


def signed_names(data: bytes) -> set[str]:
    """The h= tag of the message's DKIM-Signature, lower-cased."""
    parsed = email.message_from_bytes(data, policy=email.policy.SMTP)
    tags = dict(
        part.strip().split("=", 1)
        for part in str(parsed["DKIM-Signature"]).split(";")
        if "=" in part
    )
    return {name.strip().lower() for name in re.sub(r"\s", "", tags["h"]).split(":")}
