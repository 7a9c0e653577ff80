"""GET /v1/messages by subject words and by the client's address, through the real doors:
mail submitted over SMTP from two loopback addresses and over HTTP from a third (each
client's address recorded at intake), found by any case and order of the Subject's words
(RFC 2047 decoded), by one address or by a CIDR block; bad values are 400s naming the
field; the bulk operations take the same filters; /openapi.json states them."""

from __future__ import annotations

import re

import httpx
import pytest

from api.schemas import MessageList, MessageStatus
from tests.support.api import RCPT, Api, auth, payload
from tests.support.smtp import smtp_send

pytestmark = pytest.mark.timeout(30)

FACTURE = "=?utf-8?q?Facture_n=C2=B0_4711?= ACME"  # "Facture n° 4711 ACME"


async def _smtp(api: Api, subject: str, source: str) -> str:
    data = f"From: app@sender.test\r\nTo: {RCPT}\r\nSubject: {subject}\r\n\r\nHi\r\n"
    code, text = await smtp_send(
        api.svc.smtp_port, "app@sender.test", [RCPT], data.encode(), source=source
    )
    assert code == 250, text
    found = re.search(r"msg_\w+", text)
    assert found is not None
    return found.group(0)


async def _http_from(api: Api, key: str, subject: str, source: str) -> str:
    transport = httpx.AsyncHTTPTransport(local_address=source)
    async with httpx.AsyncClient(base_url=api.http.base_url, transport=transport) as client:
        sent = await client.post("/v1/send", json=payload(subject=subject), headers=auth(key))
    assert sent.status_code in (200, 202), sent.text
    return str(sent.json()["message_id"])


async def _found(api: Api, key: str, **query: str) -> list[str]:
    response = await api.get("/v1/messages", key=key, **query)
    assert response.status_code == 200, response.text
    MessageList.model_validate(response.json())
    return [m["message_id"] for m in response.json()["data"]]


async def test_search_by_subject_words_and_client_address(api: Api) -> None:
    facture = await _smtp(api, FACTURE, "127.0.0.2")
    report = await _smtp(api, "Weekly report", "127.0.0.1")
    sender = await api.key()
    invoice = await _http_from(api, sender, "Your invoice 4711 is ready", "127.0.0.3")
    admin = await api.key("admin")

    assert await _found(api, admin, subject="4711") == [invoice, facture]
    assert await _found(api, admin, subject="acme FACTURE") == [facture]
    assert await _found(api, admin, subject="n° 4711") == [facture]
    assert await _found(api, admin, subject="4711 invoice") == [invoice]
    assert await _found(api, admin, subject="report weekly") == [report]
    assert await _found(api, admin, subject="4711 weekly") == []
    assert await _found(api, admin, subject="invoic") == []  # whole words only

    assert await _found(api, admin, client="127.0.0.2") == [facture]
    assert await _found(api, admin, client="::ffff:127.0.0.3") == [invoice]
    assert await _found(api, admin, client="127.0.0.0/30") == [invoice, report, facture]
    assert await _found(api, admin, client="127.0.0.2/31") == [invoice, facture]
    assert await _found(api, admin, client="10.0.0.0/8") == []
    assert await _found(api, admin, client="127.0.0.0/30", subject="4711") == [invoice, facture]
    listed = (await api.get("/v1/messages", key=admin, subject="4711")).json()["data"]
    assert [m["client_address"] for m in listed] == ["127.0.0.3", "127.0.0.2"]
    status = (await api.get(f"/v1/messages/{facture}", key=admin)).json()
    assert MessageStatus.model_validate(status).client_address == "127.0.0.2"

    # A key sees its own mail only, whatever it searches for.
    assert await _found(api, sender, subject="4711") == [invoice]
    assert await _found(api, sender, client="127.0.0.2") == []

    for field, bad in (
        ("subject", "— !"),
        ("subject", " ".join(f"w{i}" for i in range(9))),
        ("client", "not-an-address"),
        ("client", "127.0.0.1/33"),
    ):
        refused = await api.get("/v1/messages", key=admin, **{field: bad})
        assert refused.status_code == 400, (field, bad)
        assert refused.json()["details"][0]["field"] == field

    body = {"filter": {"subject": "4711", "client": "127.0.0.2"}, "dry_run": True}
    counted = await api.http.post("/v1/messages/cancel", json=body, headers=auth(admin))
    assert counted.status_code == 200, counted.text
    assert counted.json()["dry_run"] is True and counted.json()["matched"] <= 1

    spec = (await api.http.get("/openapi.json")).json()
    names = [p["name"] for p in spec["paths"]["/v1/messages"]["get"]["parameters"]]
    assert "subject" in names and "client" in names
