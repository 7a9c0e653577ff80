"""Request and response bodies of people: login, the logged-in user, their sessions, and the
users owners manage. Requests are strict as in api.schemas: a wrong type or an unknown field
is a 400.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from api.schemas import Strict
from gateway.people.passwords import MAX_LENGTH as PASSWORD_MAX
from gateway.people.users import NAME_MAX

Role = Literal["owner", "admin", "member"]


class LoginRequest(Strict):
    email: str = Field(min_length=1, max_length=320)
    password: str = Field(min_length=1, max_length=PASSWORD_MAX)


class UserJson(BaseModel):
    id: str
    email: str
    name: str
    role: Role
    disabled_at: str | None
    created_at: str


class LoginResponse(BaseModel):
    success: Literal[True]
    user: UserJson
    csrf_token: str


class Me(BaseModel):
    success: Literal[True]
    id: str
    email: str
    name: str
    role: Role
    csrf_token: str = Field(description="send it as X-CSRF-Token (or a form's csrf_token)")
    via: Literal["session", "api_key"]


class SessionJson(BaseModel):
    id: str
    created_at: str
    last_seen_at: str
    expires_at: str
    user_agent: str
    ip: str
    current: bool


class SessionList(BaseModel):
    success: Literal[True]
    sessions: list[SessionJson]


class Ended(BaseModel):
    success: Literal[True]
    ended: int


class UserCreate(Strict):
    email: str = Field(min_length=3, max_length=320)
    role: Role = "member"
    name: str = Field(default="", max_length=NAME_MAX)
    password: str | None = Field(
        default=None, max_length=PASSWORD_MAX, description="left out: one is generated"
    )


class UserPatch(Strict):
    role: Role | None = None
    disabled: bool | None = None


class UserResponse(BaseModel):
    success: Literal[True]
    user: UserJson


class CreatedUserResponse(UserResponse):
    password: str | None = Field(description="the generated password, shown this once")


class UserList(BaseModel):
    success: Literal[True]
    users: list[UserJson]
