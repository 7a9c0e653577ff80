"""gateway.people on SQLite and PostgreSQL: argon2id parameters read back from a stored hash,
rehash at login, one verification per login whatever the refusal, the role and last-owner
rules, sessions sliding to an absolute cap on a clock the test moves, tokens never stored."""

from __future__ import annotations

import pytest
from argon2 import PasswordHasher, Type, extract_parameters
from sqlalchemy import select

from gateway.people import passwords, roles
from gateway.people.sessions import Lifetimes, Sessions
from gateway.people.users import LoginRefused, Users
from storage.db import Database
from storage.models import User, UserSession
from storage.users import LastOwner

CHEAP = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)  # tests' own speed
SECRET = "correct horse battery"


class Counting(passwords.Passwords):
    verified = 0

    def _verify(self, stored: str | None, password: str) -> bool:
        self.verified += 1
        return super()._verify(stored, password)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


async def _stored_hash(db: Database, user_id: str) -> str:
    table = User
    query = select(table.c.password_hash).where(table.c.id == user_id)
    return str(await db.read(lambda conn: conn.execute(query).scalar_one()))


async def test_stored_hash_is_argon2id_at_least_owasps_parameters(
    backend: Database,
) -> None:
    user = await Users(backend, passwords.Passwords()).create("a@example.com", "owner", SECRET)
    found = extract_parameters(await _stored_hash(backend, user.id))
    assert found.type is Type.ID  # OWASP's floor: 19 MiB, 2 passes
    assert found.memory_cost >= 19_456 and found.time_cost >= 2
    assert found.parallelism >= 1 and found.salt_len >= 16 and found.hash_len >= 32


async def test_login_rehashes_a_hash_with_other_parameters(backend: Database) -> None:
    old = await Users(backend, passwords.Passwords(CHEAP)).create("a@example.com", "owner", SECRET)
    current = passwords.Passwords(PasswordHasher(time_cost=2, memory_cost=2048, parallelism=1))
    assert current.needs_rehash(await _stored_hash(backend, old.id))
    assert (await Users(backend, current).login("A@example.com", SECRET)).id == old.id
    renewed = await _stored_hash(backend, old.id)
    assert extract_parameters(renewed).time_cost == 2 and not current.needs_rehash(renewed)


async def test_every_refused_login_costs_one_verification(backend: Database) -> None:
    counting = Counting(CHEAP)
    people = Users(backend, counting)
    await people.create("a@example.com", "owner", SECRET)
    gone = await people.create("b@example.com", "member", SECRET)
    await people.disable(gone.id)
    for email, password in [
        ("nobody@example.com", SECRET),
        ("a@example.com", "wrong password!"),
        ("b@example.com", SECRET),
        ("a@example.com", "x" * 5000),
        ("a@\udcffexample.com", SECRET),  # no address to look up: the dummy hash all the same
        ("a\r\n@example.com", SECRET),
        ("a" * 400 + "@example.com", SECRET),
    ]:
        counting.verified = 0
        with pytest.raises(LoginRefused) as refused:
            await people.login(email, password)
        assert counting.verified == 1 and str(refused.value) == "wrong email or password"


async def test_roles_and_the_last_owner(backend: Database) -> None:
    people = Users(backend, passwords.Passwords(CHEAP))
    owner = await people.create("o@example.com", "owner", SECRET)
    admin = await people.create("a@example.com", "admin", SECRET, actor="owner")
    with pytest.raises(roles.RoleRefused) as refused:
        await people.create("m@example.com", "member", SECRET, actor="admin")
    assert refused.value.code == "owner_required"
    with pytest.raises(roles.RoleRefused):
        await people.disable(owner.id, actor="admin")
    with pytest.raises(roles.UnknownRole):
        await people.change_role(admin.id, "root", actor="owner")
    with pytest.raises(LastOwner):
        await people.change_role(owner.id, "admin", actor="owner")
    with pytest.raises(LastOwner):
        await people.disable(owner.id)
    with pytest.raises(passwords.WeakPassword):
        await people.reset_password(admin.id, "short")
    await people.change_role(admin.id, "owner", actor="owner")
    assert (await people.disable(owner.id)).disabled_at is not None


def test_nobody_grants_above_their_own_role() -> None:
    with pytest.raises(roles.RoleRefused):
        roles.require_may_grant("admin", "owner")
    with pytest.raises(roles.RoleRefused):
        roles.require_may_grant("member", "admin")
    roles.require_may_grant("admin", "member")
    roles.require_may_grant(None, "owner")  # the operator at the console


async def test_sessions_slide_stop_at_the_cap_rotate_and_keep_no_token(
    backend: Database,
) -> None:
    clock = Clock()
    sessions = Sessions(backend, Lifetimes(idle=3600, absolute=4 * 3600), clock)
    people = Users(backend, passwords.Passwords(CHEAP), clock, [sessions.forget_user])
    user = await people.create("a@example.com", "owner", SECRET)
    token, _ = await sessions.start(user, user_agent="test", ip="192.0.2.1")

    for _ in range(3):  # used every 50 minutes: it slides
        clock.now += 3000
        assert await sessions.resolve(token) is not None
    clock.now += 3000  # 200 minutes in: still inside the idle window, but 4 h is the cap
    assert await sessions.resolve(token) is not None
    clock.now += 3000  # 250 minutes: past the absolute cap
    assert await sessions.resolve(token) is None

    token, _ = await sessions.start(user)
    clock.now += 3601  # idle too long
    assert await sessions.resolve(token) is None

    token, _ = await sessions.start(user)
    logged_in = await sessions.resolve(token)
    assert logged_in is not None
    rotated, renewed = await sessions.rotate(logged_in)
    assert renewed.session.absolute_expires_at == logged_in.session.absolute_expires_at
    assert await sessions.resolve(token) is None and await sessions.resolve(rotated) is not None
    table = UserSession
    rows = await backend.read(lambda conn: [tuple(r) for r in conn.execute(select(table))])
    assert rows and not any(rotated in str(value) for row in rows for value in row)

    member = await people.create("m@example.com", "member", SECRET)
    member_token, _ = await sessions.start(member)
    await people.disable(member.id)
    assert await sessions.resolve(member_token) is None
    await people.reset_password(user.id, "another long password")  # logged out everywhere
    assert await sessions.resolve(rotated) is None
    assert await sessions.resolve("x" * 500) is None and await sessions.resolve("") is None
