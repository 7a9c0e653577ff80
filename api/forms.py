"""Url-encoded forms (a page's form posted without JavaScript), read from the bounded body."""

from __future__ import annotations

from urllib.parse import parse_qsl

from api.errors import InvalidRequest

MAX_FIELDS = 50


def is_form(content_type: str) -> bool:
    return content_type.split(";")[0].strip().lower() == "application/x-www-form-urlencoded"


def form_fields(body: bytes) -> dict[str, str]:
    """The form's fields (the first of a repeated name counts); 400 on what is no form."""
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=MAX_FIELDS)
    except (UnicodeDecodeError, ValueError):
        raise InvalidRequest(f"not a UTF-8 form of at most {MAX_FIELDS} fields") from None
    fields: dict[str, str] = {}
    for name, value in pairs:
        fields.setdefault(name, value)
    return fields
