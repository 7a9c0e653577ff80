"""Request and response bodies of invitations and shares (seed 004, field for field).
Requests are strict as in api.schemas: a wrong type or an unknown field is a 400."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field

from api.schemas import EMAIL, HEADER_TEXT, Strict

InvitationId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[\x21-\x7e]+$")]
Role = Literal["admin", "member"]
Status = Literal["pending", "expired", "accepted", "declined", "revoked"]


class InvitationCreate(Strict):
    email: str = Field(min_length=3, max_length=254, json_schema_extra=EMAIL)
    role: Role = "member"


class InvitationAnswer(Strict):
    invitation_id: InvitationId


class TokenAccept(Strict):
    """The emailed link's form, as JSON: a new user's password (and name), or the existing
    user's password when not signed in as them."""

    token: str = Field(min_length=1, max_length=128, pattern=r"^[\x21-\x7e]+$")
    password: str | None = Field(default=None, max_length=1024)
    name: str | None = Field(default=None, max_length=128, json_schema_extra=HEADER_TEXT)


class Invitation(BaseModel):
    id: str
    invitee_email: str
    role: Role
    status: Status
    created_at: str
    expires_at: str


class InvitationResponse(BaseModel):
    success: Literal[True]
    invitation: Invitation


class SentInvitation(InvitationResponse):
    email_sent: bool = Field(description="false: the email was refused (the invitation stands)")


class InvitationList(BaseModel):
    success: Literal[True]
    invitations: list[Invitation]


class AccountShare(BaseModel):
    user_id: str
    email: str
    role: Role
    shared_at: str


class ShareList(BaseModel):
    success: Literal[True]
    shares: list[AccountShare]


class ReceivedInvitation(BaseModel):
    id: str
    account_email: str = Field(description="the alias's address, or the domain's name")
    inviter_name: str
    role: Role
    created_at: str


class ReceivedList(BaseModel):
    success: Literal[True]
    invitations: list[ReceivedInvitation]


class AcceptedUser(BaseModel):
    id: str
    email: str
    name: str
    role: str


class TokenAccepted(BaseModel):
    success: Literal[True]
    user: AcceptedUser
    account_email: str
