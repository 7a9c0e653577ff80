"""Dataclasses that hold a secret keep it out of repr(): a log line or a traceback that
prints the object must not print the password."""

from __future__ import annotations

from gateway.config import StorageConfig
from gateway.delivery.probe import ProbeTarget
from gateway.delivery.upstream import PoolSettings

SECRET = "pw-Zq81-never-shown"


def test_pool_settings_repr_hides_the_password() -> None:
    settings = PoolSettings("p1", "main", "smtp.example.test", 587, "user", SECRET)
    assert settings.password == SECRET
    assert SECRET not in repr(settings) and SECRET not in str(settings)
    assert "smtp.example.test" in repr(settings)  # the rest still shows


def test_probe_target_repr_hides_the_password() -> None:
    assert SECRET not in repr(ProbeTarget("smtp.example.test", 587, "tls", "user", SECRET))


def test_storage_url_with_a_password_is_not_in_repr() -> None:
    url = f"postgresql+asyncpg://postern:{SECRET}@db.example.test/postern"
    assert SECRET not in repr(StorageConfig(url=url))
