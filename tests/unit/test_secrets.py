"""Secrets at rest: round trips, the wrong-key error, and the key file's creation."""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.security import secrets
from gateway.security.secrets import DecryptError, SecretBox, SecretKeyError, WrongKeyError

NO_ENV: dict[str, str] = {}


@pytest.fixture
def open_umask() -> Iterator[None]:
    """umask 000: a file created without an explicit mode would be world-readable."""
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


def box() -> SecretBox:
    return SecretBox.from_environment("/nonexistent", {secrets.ENV_VAR: secrets.generate_key()})


def test_round_trip_of_bytes_and_text() -> None:
    sealed = box()
    data = bytes(range(256)) * 3
    assert sealed.decrypt(sealed.encrypt(data)) == data
    assert sealed.decrypt_text(sealed.encrypt("pässwörd ✓")) == "pässwörd ✓"
    assert sealed.decrypt(sealed.encrypt(b"")) == b""


def test_ciphertext_is_text_and_never_repeats() -> None:
    sealed = box()
    first, second = sealed.encrypt("hunter2"), sealed.encrypt("hunter2")
    assert first != second
    assert first.isascii() and "hunter2" not in first
    assert first.startswith("pst1.")


def test_another_key_gives_a_clear_error() -> None:
    token = box().encrypt("secret")
    with pytest.raises(WrongKeyError, match="encrypted with another secret key") as caught:
        box().decrypt(token)
    assert isinstance(caught.value, DecryptError)
    assert "POSTERN_SECRET_KEY" in str(caught.value)


def test_a_forged_key_id_still_fails_authentication() -> None:
    sealed, other = box(), box()
    token = other.encrypt("secret")
    forged = token.replace(other.key_id, sealed.key_id)
    with pytest.raises(DecryptError) as caught:
        sealed.decrypt(forged)
    assert not isinstance(caught.value, WrongKeyError)


def test_tampered_or_malformed_ciphertexts_are_refused() -> None:
    sealed = box()
    token = sealed.encrypt("secret")
    flipped = token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1]
    for bad in (flipped, token[:20], "plain text", "", "pst1..", token + "!!"):
        with pytest.raises(DecryptError):
            sealed.decrypt(bad)


def test_associated_data_binds_a_ciphertext_to_its_record() -> None:
    sealed = box()
    token = sealed.encrypt("pem", associated=b"dkim_key:a.test:s1")
    assert sealed.decrypt(token, associated=b"dkim_key:a.test:s1") == b"pem"
    with pytest.raises(DecryptError):
        sealed.decrypt(token, associated=b"dkim_key:b.test:s1")
    with pytest.raises(DecryptError):
        sealed.decrypt(token)


def test_seal_binds_the_context_stored_secrets_were_made_with() -> None:
    """Pool passwords, webhook secrets and DKIM keys stored before `seal` existed still open."""
    sealed = box()
    for context in (("smtp_pool", "p1", "password"), ("webhook", "wh_1", "secret")):
        old = sealed.encrypt("s3cret", associated=":".join(context).encode())
        assert sealed.unseal(old, *context) == b"s3cret"
        assert sealed.decrypt(sealed.seal("x", *context), ":".join(context).encode()) == b"x"
    assert sealed.unseal(sealed.encrypt("pem", b"dkim_key:a.test:s1"), "dkim_key", "a.test", "s1")
    with pytest.raises(DecryptError):
        sealed.unseal(sealed.seal("pem", "dkim_key", "a.test", "s1"), "dkim_key", "b.test", "s1")


def test_key_from_the_environment_writes_no_file(tmp_path: Path) -> None:
    key = secrets.generate_key()
    first = SecretBox.from_environment(tmp_path, {secrets.ENV_VAR: key})
    second = SecretBox.from_environment(tmp_path / "elsewhere", {secrets.ENV_VAR: key.rstrip("=")})
    assert second.decrypt(first.encrypt("x")) == b"x"
    assert not (tmp_path / secrets.KEY_FILE).exists()


@pytest.mark.parametrize("value", ["not base64 at all!", "c2hvcnQ=", "QUJD" * 20])
def test_a_bad_environment_key_is_one_clear_error(tmp_path: Path, value: str) -> None:
    with pytest.raises(SecretKeyError, match="POSTERN_SECRET_KEY") as caught:
        SecretBox.from_environment(tmp_path, {secrets.ENV_VAR: value})
    assert value not in str(caught.value)


def test_key_file_is_created_0600_even_under_umask_000(tmp_path: Path, open_umask: None) -> None:
    data_dir = tmp_path / "var" / "new"
    sealed = SecretBox.from_environment(data_dir, NO_ENV)
    path = data_dir / secrets.KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in data_dir.iterdir()) == [secrets.KEY_FILE]  # no temp left
    again = SecretBox.from_environment(data_dir, NO_ENV)
    assert again.decrypt(sealed.encrypt("x")) == b"x"
    assert again.key_id == sealed.key_id


def test_processes_starting_together_agree_on_one_key(tmp_path: Path) -> None:
    ids: list[str] = []
    barrier = threading.Barrier(8)

    def start() -> None:
        barrier.wait()
        ids.append(SecretBox.from_environment(tmp_path, NO_ENV).key_id)

    threads = [threading.Thread(target=start) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert len(ids) == 8 and len(set(ids)) == 1
    assert [p.name for p in tmp_path.iterdir()] == [secrets.KEY_FILE]


def test_a_key_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = tmp_path / secrets.KEY_FILE
    path.write_text(secrets.generate_key())
    path.chmod(0o644)
    with pytest.raises(SecretKeyError, match="chmod 600"):
        SecretBox.from_environment(tmp_path, NO_ENV)


def test_a_corrupt_key_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / secrets.KEY_FILE
    path.write_bytes(b"\xff\xfe garbage")
    path.chmod(0o600)
    with pytest.raises(SecretKeyError, match=str(path)):
        SecretBox.from_environment(tmp_path, NO_ENV)


def test_a_symlinked_key_file_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.key"
    target.write_text(secrets.generate_key())
    target.chmod(0o600)
    (tmp_path / secrets.KEY_FILE).symlink_to(target)
    with pytest.raises(SecretKeyError):
        SecretBox.from_environment(tmp_path, NO_ENV)
