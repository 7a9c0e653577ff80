"""Settings → Accounts: the connected mail accounts the caller may see (their sync state,
last error, last sync, default); connect one (both logins proved first: a failed one shown
beside the form with its side and stage), change one (its own page: as PATCH
/mail/accounts/{id}, a password left empty is kept), disconnect one (confirmed on a page of
its own).

The work is the API's own (api.account_ops, as POST /mail/accounts): AccountConnect and the
same checks, gateway.accounts' verification and refusals, and an account the caller may not
see (api.ownership) answered as absent. The password is write-only: never shown back.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from api import account_ops, errors
from api.account_schemas import AccountConnect, AccountUpdate
from api.auth import Caller
from api.context import ApiContext
from api.forms import form_fields
from gateway.errors import PosternError
from storage.mail_accounts import MailAccountRecord
from web.guard import signed_in
from web.pages.pool_form import answer_of
from web.pages.resource_form import Confirm, Form, back, checked, confirm, refused_confirm
from web.render import page

PATH = "/accounts"
TEXTS = ("email", "name", "imap_host", "smtp_host", "username")
PORTS = ("imap_port", "smtp_port")
SECURITIES = ("imap_security", "smtp_security")
SECURITY_CHOICES = (("", "default"), ("ssl", "ssl"), ("starttls", "starttls"), ("none", "none"))
DEFAULTS: dict[str, Any] = {
    **dict.fromkeys(TEXTS, ""), "imap_port": 993, "smtp_port": 465,
    **dict.fromkeys(SECURITIES, ""), "tls_verify": True, "password": "",
}  # fmt: skip
DONE = {
    "connected": "Account connected: its inbox sync starts shortly.",
    "changed": "Account saved.",
    "disconnected": "Account disconnected: its inbox is no longer synced.",
}


async def _list_page(
    request: Request, ctx: ApiContext, caller: Caller, form: Form,
    status: int = 200, failure: dict[str, Any] | None = None,
) -> Response:  # fmt: skip
    shown: dict[str, Any] = {
        "accounts": await account_ops.records(ctx, caller), "form": form,
        "failure": failure, "securities": SECURITY_CHOICES,
        "notice": DONE.get(request.query_params.get("done", ""), ""),
    }  # fmt: skip
    return page(request, "accounts/list.html", caller, status, **shown)


async def list_accounts(request: Request) -> Response:
    ctx, caller = await signed_in(request)
    return await _list_page(request, ctx, caller, Form(dict(DEFAULTS)))


def _port(text: str) -> int | str:
    """A port's value; what is no number stays text, for the schema to name."""
    text = text.strip()
    return int(text) if text.isdigit() and len(text) <= 6 else text


def _values(fields: dict[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {name: fields.get(name, "").strip() for name in TEXTS}
    values["name"] = fields.get("name", "")
    values.update({name: _port(fields.get(name, "")) for name in PORTS})
    values.update({name: fields.get(name, "") for name in SECURITIES})
    values["tls_verify"] = "tls_verify" in fields
    return values


def _body(values: dict[str, Any], password: str) -> AccountConnect:
    """The form as POST /mail/accounts' JSON body (an empty security: the side's default)."""
    securities = {name: values[name] or None for name in SECURITIES}
    return checked(AccountConnect, {**values, **securities, "password": password})


async def connect(request: Request) -> Response:
    ctx, caller = await signed_in(request)
    fields = form_fields(await request.body())
    form = Form({**_values(fields), "password": ""})  # write-only: never shown back
    try:
        await account_ops.connect(ctx, caller, _body(form.values, fields.get("password", "")))
    except PosternError as error:
        failure = error.extra if isinstance(error, errors.CredentialsRefused) else None
        refused = form.refused(error)
        return await _list_page(request, ctx, caller, refused, answer_of(error).status, failure)
    return back(PATH, "connected")


def _edit_values(record: MailAccountRecord) -> dict[str, Any]:
    values = {name: getattr(record, name) for name in (*TEXTS, *PORTS, *SECURITIES)}
    shown = {"tls_verify": record.tls_verify, "is_default": record.is_default, "password": ""}
    return values | shown


def _edit_page(
    request: Request, caller: Caller, record: MailAccountRecord, form: Form, status: int = 200,
    failure: dict[str, Any] | None = None,
) -> Response:  # fmt: skip
    shown: dict[str, Any] = {
        "account": record, "form": form, "failure": failure, "securities": SECURITY_CHOICES,
    }  # fmt: skip
    return page(request, "accounts/edit.html", caller, status, **shown)


async def edit(request: Request) -> Response:
    ctx, caller = await signed_in(request)
    record = await _visible(ctx, caller, request)
    return _edit_page(request, caller, record, Form(_edit_values(record)))


def _update(values: dict[str, Any], password: str) -> AccountUpdate:
    """The form as PATCH /mail/accounts/{id}'s body: every field (what did not change
    changes nothing), the password only when given, is_default only when ticked (a default
    account stops being one when another becomes it)."""
    given = {name: values[name] for name in (*TEXTS, *PORTS, "tls_verify")}
    given |= {name: values[name] or None for name in SECURITIES}
    given["is_default"] = True if values["is_default"] else None
    return checked(AccountUpdate, given | {"password": password or None})


async def change(request: Request) -> Response:
    ctx, caller = await signed_in(request)
    record = await _visible(ctx, caller, request)
    fields = form_fields(await request.body())
    values = _values(fields) | {"is_default": "is_default" in fields}
    form = Form(values | {"password": ""})  # write-only: never shown back
    try:
        body = _update(values, fields.get("password", ""))
        await account_ops.update(ctx, caller, record, body)
    except PosternError as error:
        failure = error.extra if isinstance(error, errors.CredentialsRefused) else None
        status = answer_of(error).status
        return _edit_page(request, caller, record, form.refused(error), status, failure)
    return back(PATH, "changed")


def _asked(record: MailAccountRecord) -> Confirm:
    return Confirm(
        title=f"Disconnect the account {record.email}?",
        text="Its inbox is no longer synced and mail can no longer be sent through its "
        "server. Nothing already synced is deleted.",
        action=f"{PATH}/{record.id}/disconnect",
        button=f"Disconnect {record.email}",
        cancel=PATH,
    )


async def _visible(ctx: ApiContext, caller: Caller, request: Request) -> MailAccountRecord:
    return await account_ops.get(ctx, caller, request.path_params["account_id"])


async def confirm_disconnect(request: Request) -> Response:
    ctx, caller = await signed_in(request)
    return confirm(request, caller, _asked(await _visible(ctx, caller, request)))


async def disconnect(request: Request) -> Response:
    ctx, caller = await signed_in(request)
    record = await _visible(ctx, caller, request)
    try:
        await account_ops.disconnect(ctx, caller, record)
    except PosternError as error:
        return refused_confirm(request, caller, _asked(record), error)
    return back(PATH, "disconnected")


routes = [
    Route(PATH, list_accounts, methods=["GET"]),
    Route(PATH, connect, methods=["POST"]),
    Route(PATH + "/{account_id}", edit, methods=["GET"]),
    Route(PATH + "/{account_id}", change, methods=["POST"]),
    Route(PATH + "/{account_id}/disconnect", confirm_disconnect, methods=["GET"]),
    Route(PATH + "/{account_id}/disconnect", disconnect, methods=["POST"]),
]
