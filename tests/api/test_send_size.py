"""The built message obeys [smtp] max_message_size, whichever door it comes through, and a
large body is parsed off the event loop."""

from __future__ import annotations

from tests.support.api import ApiFactory, payload


async def test_a_built_message_over_max_message_size_is_413(api_client: ApiFactory) -> None:
    api = await api_client(smtp={"max_message_size": 10_000})
    key = await api.key()
    # Non-ASCII text is quoted-printable: 4 000 characters become more than 10 000 bytes.
    response = await api.send(payload(text="é" * 4000, html=None), key=key)
    assert response.status_code == 413, response.text
    assert response.json()["code"] == "payload_too_large"


async def test_a_built_header_over_max_header_size_is_413(api_client: ApiFactory) -> None:
    """The HTTP door keeps the SMTP door's header cap: 100 recipients with long non-ASCII
    names make a header block of about 50 KB."""
    api = await api_client(smtp={"max_header_size": 20_000})
    key = await api.key()
    to = [{"email": f"rcpt{i}@example.com", "name": "Zoë " * 20} for i in range(100)]
    response = await api.send(payload(to=to), key=key)
    assert response.status_code == 413, response.text
    assert response.json()["code"] == "payload_too_large"
    assert "max_header_size" in response.json()["error"]
    assert (await api.send(payload(), key=key)).status_code == 200


async def test_a_large_body_is_still_sent(api_client: ApiFactory) -> None:
    api = await api_client()
    key = await api.key()
    response = await api.send(payload(text="x" * 200_000, html=None), key=key)
    assert response.status_code == 200, response.text
