"""Attachments of an HTTP send: what one is, how its fields are checked, and the limits the
configuration puts on them (`[http] max_attachments_size`, `refuse_attachment_types`).

The message builder (message_builder.py) turns them into MIME parts; this module decides
whether they may be sent at all. Every check here is pure: no I/O, no email package.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.errors import InvalidInput
from gateway.intake.fields import text_problem

MAX_ATTACHMENTS = 100
MAX_FILENAME = 255
MAX_CONTENT_ID = 250
DEFAULT_TYPE = "application/octet-stream"
DEFAULT_MAX_TOTAL = 26_214_400  # 25 MiB of decoded bytes, Gmail's and SES's figure
# RFC 6838 restricted-name, type "/" subtype; the JSON Schema and the check share it.
CONTENT_TYPE = r"^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}$"
# The inside of a Content-ID (RFC 2392, without its angle brackets): atext, dots and one @.
CONTENT_ID = r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.@-]{1,250}$"
BASE64 = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"
# Containers and messages cannot be sent as opaque base64 bytes (RFC 2046 forbids base64
# for message/* and multipart/*; a client's bytes would become our MIME structure).
_OPAQUE_ONLY = ("multipart", "message")
_CONTENT_TYPE = re.compile(CONTENT_TYPE)
_CONTENT_ID = re.compile(CONTENT_ID)


@dataclass(frozen=True)
class Attachment:
    filename: str
    content: bytes  # decoded
    content_type: str = DEFAULT_TYPE
    content_id: str | None = None  # set: an inline part (an image the HTML shows by cid:)


@dataclass(frozen=True)
class AttachmentRules:
    max_total: int = DEFAULT_MAX_TOTAL  # decoded bytes of one message's attachments
    refuse: tuple[str, ...] = ()  # ".exe" (extension) or "application/x-msdownload" (type)


class AttachmentsTooLarge(InvalidInput):
    """The decoded attachments of one message add up to more than `max_total`."""


class AttachmentRefused(InvalidInput):
    """An attachment's extension or type is in `refuse_attachment_types`."""

    def __init__(self, index: int, filename: str, matched: str) -> None:
        super().__init__(
            f"attachment {filename!r} is refused by this server "
            f"([http] refuse_attachment_types has {matched!r})"
        )
        self.index = index
        self.filename = filename


def decode(content: str) -> bytes:
    """Strict base64 (RFC 4648 alphabet, padded, no whitespace); ValueError if it is not."""
    try:
        return base64.b64decode(content.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error):
        raise ValueError("not valid base64 (RFC 4648, padded, no line breaks)") from None


def filename_problem(filename: str) -> str | None:
    """Why `filename` may not be a Content-Disposition filename, or None."""
    if not filename.strip() or len(filename) > MAX_FILENAME:  # blank: no name a client keeps
        return f"must be 1 to {MAX_FILENAME} characters"
    if filename != filename.strip():  # a reader strips them: the name would not come back
        return "must not begin or end with white space"
    return text_problem(filename, header=True)


def type_problem(content_type: str) -> str | None:
    if not _CONTENT_TYPE.match(content_type):
        return "must be a MIME type, type/subtype"
    if content_type.partition("/")[0].lower() in _OPAQUE_ONLY:
        return "multipart/* and message/* cannot be attachments; use application/octet-stream"
    return None


def content_id_problem(content_id: str) -> str | None:
    if not _CONTENT_ID.match(content_id):
        return "must be 1 to 250 characters of letters, digits, . @ and RFC 5322 atext"
    return None


def check(attachments: Sequence[Attachment], rules: AttachmentRules) -> None:
    """The configured limits: AttachmentsTooLarge, else AttachmentRefused for the first
    refused one."""
    total = sum(len(attachment.content) for attachment in attachments)
    if total > rules.max_total:
        raise AttachmentsTooLarge(
            f"the attachments are {total} bytes once decoded; the limit is "
            f"{rules.max_total} ([http] max_attachments_size)"
        )
    for index, attachment in enumerate(attachments):
        matched = refused_by(attachment, rules.refuse)
        if matched is not None:
            raise AttachmentRefused(index, attachment.filename, matched)


def refused_by(attachment: Attachment, refuse: Sequence[str]) -> str | None:
    """The entry of `refuse` the attachment matches, or None. Extensions are compared the
    way Windows opens files: case aside, trailing dots and spaces dropped ("a.EXE. ")."""
    name = attachment.filename.lower().rstrip(". ")
    kind = attachment.content_type.lower()
    for entry in refuse:
        if entry.startswith(".") and name.endswith(entry):
            return entry
        if entry == kind or (entry.endswith("/*") and kind.startswith(entry[:-1])):
            return entry
    return None
