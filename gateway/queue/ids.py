"""Message ids: time-ordered, unique, cheap to make."""

from __future__ import annotations

import random
import secrets
import time

_ids = random.Random(secrets.randbits(128))  # seeded once: os.urandom per id costs a syscall


def new_message_id() -> str:
    """Time-ordered and unique: 'msg_' + milliseconds in hex + 64 random bits.

    Not a secret: looking a message up needs the API key that sent it.
    """
    return f"msg_{int(time.time() * 1000):011x}{_ids.getrandbits(64):016x}"


def new_id_for(sandbox: bool) -> str:
    """A new message's id: sandbox ids say so (`sandbox_msg_...`)."""
    return ("sandbox_" if sandbox else "") + new_message_id()
