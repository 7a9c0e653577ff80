"""A database remembers which secret key seals its secrets and refuses any other."""

from __future__ import annotations

import base64

import pytest

from gateway.security.secrets import SecretBox, SecretKeyError, bind_to_database, generate_key
from storage.db import Database


def box() -> SecretBox:
    return SecretBox(base64.urlsafe_b64decode(generate_key()))


async def test_the_first_key_is_recorded_and_accepted_again(backend: Database) -> None:
    first = box()
    await bind_to_database(backend, first)
    await bind_to_database(backend, first)


async def test_another_key_is_refused_with_a_clear_line(backend: Database) -> None:
    await bind_to_database(backend, box())
    with pytest.raises(SecretKeyError, match="POSTERN_SECRET_KEY"):
        await bind_to_database(backend, box())
