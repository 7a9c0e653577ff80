"""DKIM keys in storage (SQLite and PostgreSQL): encrypted at rest, one active per domain,
rotation without a gap, and the in-memory signer table intake uses."""

from __future__ import annotations

import asyncio
from typing import Any

import dkim as dkimpy
import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import create_async_engine

from gateway.dkim.cache import Signers
from gateway.dkim.keys import DnsRecord, KeyPair, dns_record, generate_key
from gateway.security import secrets
from gateway.security.secrets import DecryptError, SecretBox, WrongKeyError
from storage import dkim_keys
from storage.db import Database
from storage.dkim_keys import DkimKeyExists, DkimKeyNotFound

MESSAGE = b"From: app@example.com\r\nTo: a@example.net\r\nSubject: hi\r\n\r\nbody\r\n"


@pytest.fixture(scope="module")
def keys() -> list[KeyPair]:
    return [generate_key("ed25519") for _ in range(3)]


@pytest.fixture
def box() -> SecretBox:
    return SecretBox.from_environment("/nonexistent", {secrets.ENV_VAR: secrets.generate_key()})


async def add(
    db: Database,
    box: SecretBox,
    key: KeyPair,
    selector: str,
    domain: str = "example.com",
    **kw: Any,
) -> dkim_keys.DkimKeyRecord:
    return await dkim_keys.add_key(
        db,
        box,
        domain=domain,
        selector=selector,
        algorithm=key.algorithm,
        private_pem=key.private_pem,
        public_key=key.public_key,
        **kw,
    )


async def statuses(db: Database, domain: str = "example.com") -> dict[str, str]:
    return {k.selector: k.status for k in await dkim_keys.list_keys(db, domain)}


async def test_first_key_is_active_later_ones_pending(
    backend: Database, box: SecretBox, keys: list[KeyPair]
) -> None:
    first = await add(backend, box, keys[0], "s1")
    second = await add(backend, box, keys[1], "s2")
    assert (first.status, second.status) == ("active", "pending")
    assert await statuses(backend) == {"s1": "active", "s2": "pending"}
    active = await dkim_keys.active_key(backend, box, "example.com")
    assert active is not None and active.record.selector == "s1"
    assert active.private_pem() == keys[0].private_pem
    assert "PRIVATE" not in repr(active)


async def test_activate_retires_the_previous_key_in_one_step(
    backend: Database, box: SecretBox, keys: list[KeyPair]
) -> None:
    await add(backend, box, keys[0], "s1")
    await add(backend, box, keys[1], "s2")
    record = await dkim_keys.activate_key(backend, "example.com", "s2")
    assert record.status == "active"
    assert await statuses(backend) == {"s1": "retired", "s2": "active"}
    # activating the active key changes nothing; a retired key may come back (roll-back)
    await dkim_keys.activate_key(backend, "example.com", "s2")
    await dkim_keys.activate_key(backend, "example.com", "s1")
    assert await statuses(backend) == {"s1": "active", "s2": "retired"}


async def test_add_with_activate_true_rotates_at_once(
    backend: Database, box: SecretBox, keys: list[KeyPair]
) -> None:
    await add(backend, box, keys[0], "s1")
    await add(backend, box, keys[1], "s2", activate=True)
    await add(backend, box, keys[2], "s3", activate=False)
    assert await statuses(backend) == {"s1": "retired", "s2": "active", "s3": "pending"}


async def test_retire_leaves_the_domain_unsigned(
    backend: Database, box: SecretBox, keys: list[KeyPair]
) -> None:
    await add(backend, box, keys[0], "s1")
    record = await dkim_keys.retire_key(backend, "example.com", "s1")
    assert record.status == "retired"
    assert await dkim_keys.active_key(backend, box, "example.com") is None


async def test_domains_are_independent(
    backend: Database, box: SecretBox, keys: list[KeyPair]
) -> None:
    await add(backend, box, keys[0], "s1", domain="a.test")
    await add(backend, box, keys[1], "s1", domain="b.test")
    active = await dkim_keys.active_keys(backend, box)
    assert [(k.record.domain, k.record.status) for k in active] == [
        ("a.test", "active"),
        ("b.test", "active"),
    ]
    assert [k.domain for k in await dkim_keys.list_keys(backend)] == ["a.test", "b.test"]


async def test_duplicate_selector_and_unknown_key_are_errors(
    backend: Database, box: SecretBox, keys: list[KeyPair]
) -> None:
    await add(backend, box, keys[0], "s1")
    with pytest.raises(DkimKeyExists):
        await add(backend, box, keys[1], "s1")
    with pytest.raises(DkimKeyNotFound):
        await dkim_keys.activate_key(backend, "example.com", "nope")
    with pytest.raises(DkimKeyNotFound):
        await dkim_keys.retire_key(backend, "other.test", "s1")
    with pytest.raises(DkimKeyNotFound):
        await dkim_keys.get_key(backend, "example.com", "nope")


async def test_private_key_is_stored_only_encrypted(
    backend: Database, box: SecretBox, keys: list[KeyPair]
) -> None:
    await add(backend, box, keys[0], "s1")
    rows = await backend.read(
        lambda conn: list(conn.execute(text("SELECT private_key_enc, public_key FROM dkim_key")))
    )
    stored = rows[0].private_key_enc
    assert "PRIVATE KEY" not in stored and stored.startswith("pst1.")
    assert rows[0].public_key == keys[0].public_key


async def test_a_ciphertext_moved_to_another_row_does_not_decrypt(
    backend: Database, box: SecretBox, keys: list[KeyPair]
) -> None:
    await add(backend, box, keys[0], "s1", domain="a.test")
    await add(backend, box, keys[1], "s1", domain="b.test")
    await backend.transaction(
        lambda conn: conn.execute(
            text(
                "UPDATE dkim_key SET private_key_enc = "
                "(SELECT private_key_enc FROM dkim_key WHERE domain = 'a.test') "
                "WHERE domain = 'b.test'"
            )
        )
    )
    active = await dkim_keys.active_key(backend, box, "b.test")
    assert active is not None
    with pytest.raises(DecryptError):
        active.private_pem()


async def test_the_database_refuses_two_active_keys(
    backend: Database, box: SecretBox, keys: list[KeyPair]
) -> None:
    await add(backend, box, keys[0], "s1")
    with pytest.raises(IntegrityError):
        await backend.transaction(
            lambda conn: conn.execute(
                text(
                    "INSERT INTO dkim_key (id, domain, selector, algorithm, private_key_enc, "
                    "public_key, status, created_at) VALUES ('x', 'example.com', 's9', "
                    "'ed25519', '', '', 'active', 0)"
                )
            )
        )


async def test_racing_activations_on_two_nodes_leave_one_active(
    backend: Database, other_db: Database, box: SecretBox, keys: list[KeyPair]
) -> None:
    for i, key in enumerate(keys):
        await add(backend, box, key, f"s{i}")
    for _ in range(5):
        await asyncio.gather(
            dkim_keys.activate_key(backend, "example.com", "s1"),
            dkim_keys.activate_key(other_db, "example.com", "s2"),
        )
        found = await statuses(backend)
        assert sorted(found.values()).count("active") == 1, found


async def test_an_activation_waits_for_one_in_flight_on_another_node(
    backend: Database, box: SecretBox, keys: list[KeyPair]
) -> None:
    """Node A is mid-rotation (s1 made active, not committed) when node B activates s2: B
    must wait and then retire s1, not fail on the one-active index or leave two active."""
    if backend.dialect != "postgresql":
        pytest.skip("SQLite has a single writer: the race cannot happen")
    for i, key in enumerate(keys):
        await add(backend, box, key, f"s{i}")
    engine = create_async_engine(backend.url)
    try:
        async with engine.connect() as node_a:
            await node_a.begin()
            await node_a.execute(
                text("UPDATE dkim_key SET status = 'retired' WHERE status = 'active'")
            )
            await node_a.execute(
                text("UPDATE dkim_key SET status = 'active' WHERE selector = 's1'")
            )
            node_b = asyncio.ensure_future(dkim_keys.activate_key(backend, "example.com", "s2"))
            await asyncio.sleep(0.3)
            assert not node_b.done()
            await node_a.commit()
        record = await asyncio.wait_for(node_b, 10)
    finally:
        await engine.dispose()
    assert record.status == "active"
    assert await statuses(backend) == {"s0": "retired", "s1": "retired", "s2": "active"}


# --- the signer table --------------------------------------------------------------------


def published(*records: DnsRecord) -> Any:
    table = {f"{r.name}.".encode(): r.value.encode() for r in records}
    return lambda name, timeout=5: table.get(name)


async def test_signers_sign_with_the_active_key_and_follow_rotation(
    backend: Database, box: SecretBox, keys: list[KeyPair]
) -> None:
    old = await add(backend, box, keys[0], "old")
    signers = Signers(backend, box, ttl=3600)
    signer = await signers.for_message(MESSAGE)
    assert signer is not None and signer.selector == "old"
    assert await signers.for_message(MESSAGE.replace(b"example.com", b"other.test")) is None
    signed_before = signer.signed(MESSAGE)

    new = await add(backend, box, keys[1], "new", activate=True)
    assert (await signers.for_message(MESSAGE)) is signer  # cached until reloaded
    await signers.reload()
    rotated = await signers.for_message(MESSAGE)
    assert rotated is not None and rotated.selector == "new"
    signed_after = rotated.signed(MESSAGE)

    records = [dns_record(k.selector, k.domain, k.algorithm, k.public_key) for k in (old, new)]
    assert dkimpy.verify(signed_before, dnsfunc=published(*records))
    assert dkimpy.verify(signed_after, dnsfunc=published(*records))
    assert not dkimpy.verify(signed_before, dnsfunc=published(records[1]))


async def test_signers_skip_keys_the_box_cannot_open(
    backend: Database, box: SecretBox, keys: list[KeyPair]
) -> None:
    await add(backend, box, keys[0], "s1")
    other = SecretBox.from_environment("/nonexistent", {secrets.ENV_VAR: secrets.generate_key()})
    active = await dkim_keys.active_key(backend, other, "example.com")
    assert active is not None
    with pytest.raises(WrongKeyError):
        active.private_pem()
    signers = Signers(backend, other, ttl=0)
    assert await signers.for_message(MESSAGE) is None
