"""The mail log's small pieces: the Message-ID looked up in the header only, client
addresses, envelopes."""

from __future__ import annotations

import pytest

from gateway.maillog import client, envelope, message_id_header


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"From: a@x.test\r\nMessage-ID: <1@x.test>\r\n\r\nbody\r\n", "<1@x.test>"),
        (b"Message-Id:   <first@x.test>  \r\nFrom: a@x.test\r\n\r\nbody\r\n", "<first@x.test>"),
        (b"From: a@x.test\r\nmessage-id:<lower@x.test>\r\n\r\n", "<lower@x.test>"),
        (b"From: a@x.test\r\nResent-Message-ID: <r@x.test>\r\n\r\n", "none"),
        (b"From: a@x.test\r\n\r\nMessage-ID: <in-body@x.test>\r\n", "none"),
        (b"From: a@x.test\r\nMessage-ID:\r\n\r\n", "none"),
    ],
)
def test_message_id_header(content: bytes, expected: str) -> None:
    assert message_id_header(content) == expected


def test_client_and_envelope() -> None:
    assert client(("192.0.2.7", 50312)) == "[192.0.2.7]:50312"
    assert client(["::1", 25, 0, 0]) == "[::1]:25"
    assert client(None) == "unknown"
    assert envelope(None) == ""
    assert envelope("") == "from=<>"
    assert (
        envelope("a@x.test", ("b@y.test", "c@y.test")) == "from=<a@x.test> to=<b@y.test>,<c@y.test>"
    )
