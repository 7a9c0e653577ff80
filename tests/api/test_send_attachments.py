"""Attachments on POST /v1/send: the MIME tree the sink receives (mixed, related for inline
images, alternative), filenames RFC 2231-encoded, bytes identical; bad base64, CR/LF in a
filename, too much and refused types answered with the API's error shape; DKIM still
verifies; the idempotency digest covers the attachments."""

from __future__ import annotations

import base64
import email
import email.policy
from email.message import EmailMessage
from typing import Any

import dkim as dkimpy
import pytest

from api.routes.send import request_digest
from api.schemas import SendRequest
from tests.support.api import Api, ApiFactory, payload
from tests.support.dkim import published
from tests.support.resources import call
from tests.support.sink import Sink

pytestmark = pytest.mark.timeout(30)

PDF = b"%PDF-1.4\n" + bytes(range(256)) * 8 + b"\n%%EOF\r\n"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x01\xff" * 50
NON_ASCII = "Résumé été.pdf"


def attachment(data: bytes, filename: str = "report.pdf", **fields: Any) -> dict[str, Any]:
    return {"filename": filename, "content": base64.b64encode(data).decode(), **fields}


def with_files(**fields: Any) -> dict[str, Any]:
    files = [
        attachment(PDF, NON_ASCII, content_type="application/pdf"),
        attachment(PNG, "logo.png", content_type="image/png", content_id="logo@app"),
    ]
    return payload(html='<p>Hi <img src="cid:logo@app"></p>', attachments=files, **fields)


def tree(part: EmailMessage) -> Any:
    if part.is_multipart():
        return (part.get_content_type(), [tree(sub) for sub in part.iter_parts()])
    return part.get_content_type()


async def test_files_and_an_inline_image_arrive_with_their_tree_names_and_bytes(
    api: Api, sink: Sink
) -> None:
    response = await api.send(with_files(), key=await api.key())
    assert response.status_code == 200, response.text
    [got] = sink.messages
    parsed = email.message_from_bytes(got.data, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    alternative = ("multipart/alternative", ["text/plain", "text/html"])
    related = ("multipart/related", [alternative, "image/png"])
    assert tree(parsed) == ("multipart/mixed", [related, "application/pdf"])
    inline, pdf = parsed.get_payload()[0].get_payload()[1], parsed.get_payload()[1]
    assert pdf.get_filename() == NON_ASCII and pdf.get_content() == PDF
    assert pdf.get_content_disposition() == "attachment"
    assert b"filename*=utf-8''R%C3%A9sum%C3%A9%20%C3%A9t%C3%A9.pdf" in got.data
    assert b"name*=utf-8''R%C3%A9sum%C3%A9" in got.data  # Content-Type's name, too
    assert inline["Content-ID"] == "<logo@app>" and inline.get_content() == PNG
    assert inline.get_content_disposition() == "inline"


async def test_without_html_an_attachment_goes_beside_the_text(api: Api, sink: Sink) -> None:
    body = payload(attachments=[attachment(b"a,b\r\n1,2\r\n", "data.csv", content_type="text/csv")])
    response = await api.send(body, key=await api.key())
    assert response.status_code == 200, response.text
    [got] = sink.messages
    parsed = email.message_from_bytes(got.data, policy=email.policy.default)
    assert tree(parsed) == ("multipart/mixed", ["text/plain", "text/csv"])  # type: ignore[arg-type]
    [_, csv] = parsed.get_payload()  # type: ignore[misc]
    assert csv.get_payload(decode=True) == b"a,b\r\n1,2\r\n"


@pytest.mark.parametrize(
    ("item", "field"),
    [
        ({"filename": "a.pdf", "content": "not base64!"}, "attachments[0].content"),
        ({"filename": "a.pdf", "content": "QUJD\nREVG"}, "attachments[0].content"),
        ({"filename": "a.pdf", "content": "QUJ"}, "attachments[0].content"),
        ({"filename": "a\r\nBcc: x@evil.test", "content": "QUJD"}, "attachments[0].filename"),
        ({"filename": "a\n.pdf", "content": "QUJD"}, "attachments[0].filename"),
        ({"filename": "", "content": "QUJD"}, "attachments[0].filename"),
        (
            {"filename": "a", "content": "QUJD", "content_type": "pdf"},
            "attachments[0].content_type",
        ),
        (
            {"filename": "a", "content": "QUJD", "content_type": "multipart/mixed"},
            "attachments[0].content_type",
        ),
        ({"filename": "a", "content": "QUJD", "content_id": "<x>"}, "attachments[0].content_id"),
        ({"filename": "a", "content": "QUJD", "size": 3}, "attachments[0].size"),
    ],
)
async def test_a_bad_attachment_is_a_400_naming_its_field(
    api: Api, sink: Sink, item: dict[str, Any], field: str
) -> None:
    response = await api.send(payload(attachments=[item]), key=await api.key())
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["code"] == "invalid_request"
    assert any(d["field"] == field for d in body["details"]), body
    assert sink.messages == []


async def test_too_many_attachments_is_a_400(api: Api) -> None:
    files = [attachment(b"x", f"{i}.txt") for i in range(101)]
    response = await api.send(payload(attachments=files), key=await api.key())
    assert response.status_code == 400, response.text


async def test_over_max_attachments_size_is_413(api_client: ApiFactory) -> None:
    api = await api_client(http={"max_attachments_size": 1000})
    key = await api.key()
    over = payload(attachments=[attachment(b"x" * 600, "a"), attachment(b"y" * 401, "b")])
    response = await api.send(over, key=key)
    assert response.status_code == 413, response.text
    assert response.json()["code"] == "attachments_too_large"
    assert "max_attachments_size" in response.json()["error"]
    within = payload(attachments=[attachment(b"x" * 1000, "a")])
    assert (await api.send(within, key=key)).status_code == 200


async def test_a_message_over_max_message_size_is_still_413(api_client: ApiFactory) -> None:
    api = await api_client(smtp={"max_message_size": 10_000})
    response = await api.send(payload(attachments=[attachment(b"z" * 9000)]), key=await api.key())
    assert response.status_code == 413, response.text
    assert response.json()["code"] == "payload_too_large"


@pytest.mark.parametrize(
    "item",
    [
        attachment(b"MZ", "setup.EXE"),
        attachment(b"MZ", "setup.exe. "),
        attachment(b"MZ", "tool.bin", content_type="application/x-msdownload"),
        attachment(b"x", "a.bin", content_type="application/x-sh"),
    ],
)
async def test_a_refused_type_is_a_422_naming_the_file(
    api_client: ApiFactory, item: dict[str, Any]
) -> None:
    refuse = [".exe", "Application/X-MSDownload", "application/x-sh"]
    api = await api_client(http={"refuse_attachment_types": refuse})
    files = [attachment(PDF, "ok.pdf"), item]
    response = await api.send(payload(attachments=files), key=await api.key())
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["code"] == "attachment_refused"
    assert body["filename"] == item["filename"]
    assert body["details"][0]["field"] == "attachments[1]"


async def test_dkim_verifies_over_attachments(api: Api, sink: Sink) -> None:
    admin = await api.key("admin")
    body = {"domain": "sender.test", "verified": True, "algorithm": "ed25519"}
    added = await call(api, "POST", "/api/v1/domains", admin, body)
    assert added.status_code == 201, added.text
    [record] = [r for r in added.json()["domain"]["records"] if r["purpose"] == "dkim"]
    await api.svc.signers.reload()
    assert (await api.send(with_files(), key=await api.key())).status_code == 200
    [got] = sink.messages
    assert b"DKIM-Signature" in got.data
    assert dkimpy.verify(got.data, dnsfunc=published(record))


async def test_the_same_idempotency_key_with_other_attachments_is_a_409(
    api: Api, sink: Sink
) -> None:
    key = await api.key()
    first = with_files(idempotency_key="files-1")
    assert (await api.send(first, key=key)).status_code == 200
    other = with_files(idempotency_key="files-1")
    other["attachments"][0] = attachment(PDF + b"!", NON_ASCII, content_type="application/pdf")
    response = await api.send(other, key=key)
    assert response.status_code == 409, response.text
    assert response.json()["code"] == "idempotency_key_reused"
    again = await api.send(first, key=key)
    assert again.status_code == 200 and again.json()["idempotent"] is True


def test_the_request_digest_covers_every_attachment_field() -> None:
    base = with_files()
    digests = {request_digest(SendRequest.model_validate(base), False)}
    for name, value in [
        ("filename", "other.pdf"),
        ("content", base64.b64encode(PDF[:-1]).decode()),
        ("content_type", "application/x-pdf"),
        ("content_id", "other@app"),
    ]:
        changed = with_files()
        changed["attachments"][0][name] = value
        digests.add(request_digest(SendRequest.model_validate(changed), False))
    assert len(digests) == 5


async def test_openapi_describes_attachments(api: Api) -> None:
    schema = (await api.http.get("/openapi.json")).json()
    found = str(schema)
    assert "attachments" in found and "content_id" in found
    assert "attachments_too_large" in found and "attachment_refused" in found
