"""gateway.intake.message_builder: JSON fields -> RFC 5322 bytes with the stdlib email package.

The shape of what is built (headers, multipart, envelope), RFC 2047 and IDN handling, and
the refusals that stand in for CPython 3.11.7's missing header-injection fixes; a property
test: whatever the names and subject, either a BuildError or exactly the headers we set,
decoding back to what was given.
"""

from __future__ import annotations

import email
import email.policy

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.headers import content_problem, header_fields, split_header
from gateway.intake.attachments import Attachment, refused_by
from gateway.intake.message_builder import BuildError, Draft, Mailbox, build

HOST = "postern.test"
DATE = "Tue, 17 Feb 2026 12:00:00 +0000"


def draft(**fields: object) -> Draft:
    base: dict[str, object] = {
        "sender": Mailbox("app@sender.test", "App"),
        "to": [Mailbox("rcpt@example.test", "Someone")],
        "subject": "Hello",
        "text": "Hi.",
    }
    base.update(fields)
    return Draft(**base)  # type: ignore[arg-type]


def header_names(content: bytes) -> list[str]:
    head, _ = split_header(content)
    return [field.partition(b":")[0].decode() for field in header_fields(head)]


def parse(content: bytes) -> email.message.EmailMessage:
    message = email.message_from_bytes(content, policy=email.policy.default)
    assert isinstance(message, email.message.EmailMessage)
    return message


def problems(error: pytest.ExceptionInfo[BuildError]) -> dict[str, str]:
    return {p.field: p.message for p in error.value.problems}


# --- what is built ------------------------------------------------------------------------


def test_text_only_message_has_the_expected_headers_and_envelope() -> None:
    built = build(draft(), HOST, date=DATE)
    assert built.mail_from == "app@sender.test"
    assert built.recipients == ("rcpt@example.test",)
    assert content_problem(built.content) is None
    assert sorted(header_names(built.content)) == sorted(
        ["From", "To", "Subject", "Date", "Message-ID", "MIME-Version", "Content-Type",
         "Content-Transfer-Encoding"]
    )  # fmt: skip
    message = parse(built.content)
    assert message["Date"] == DATE
    assert message["Message-ID"] == built.message_id and built.message_id.endswith("@postern.test>")
    assert message.get_content_type() == "text/plain"


def test_both_bodies_make_multipart_alternative_text_first() -> None:
    message = parse(build(draft(html="<p>Hi.</p>"), HOST).content)
    assert message.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in message.iter_parts()] == ["text/plain", "text/html"]
    assert all(p["MIME-Version"] is None for p in message.iter_parts())


def test_html_only_is_a_single_html_part() -> None:
    message = parse(build(draft(text=None, html="<p>x</p>"), HOST).content)
    assert message.get_content_type() == "text/html"


def test_cc_and_reply_to_are_headers_bcc_only_envelope() -> None:
    built = build(
        draft(
            cc=[Mailbox("cc@example.test")],
            bcc=[Mailbox("secret@example.test", "Secret")],
            reply_to=Mailbox("r@sender.test", "Replies"),
        ),
        HOST,
    )
    message = parse(built.content)
    assert message["Cc"] == "cc@example.test"
    assert message["Reply-To"] == "Replies <r@sender.test>"
    assert "Bcc" not in header_names(built.content) and b"secret@" not in built.content
    assert built.recipients == ("rcpt@example.test", "cc@example.test", "secret@example.test")


def test_the_same_mailbox_is_one_envelope_recipient() -> None:
    built = build(draft(to=[Mailbox("a@Example.test")], cc=[Mailbox("a@example.TEST")]), HOST)
    assert built.recipients == ("a@Example.test",)


def test_non_ascii_names_subject_and_body_are_7bit_encoded() -> None:
    built = build(
        draft(sender=Mailbox("app@sender.test", "Zoë"), subject="Grüße ☕", text="Ünï"), HOST
    )
    assert built.content.isascii() and not built.smtputf8
    message = parse(built.content)
    assert message["From"].addresses[0].display_name == "Zoë"
    assert message["Subject"] == "Grüße ☕"
    assert message["Content-Transfer-Encoding"] == "quoted-printable"


def test_idn_domain_becomes_a_labels_everywhere() -> None:
    built = build(draft(to=[Mailbox("u@Bücher.example")]), HOST)
    assert built.recipients == ("u@xn--bcher-kva.example",)
    assert b"u@xn--bcher-kva.example" in built.content


def test_utf8_local_part_uses_smtputf8_and_raw_utf8_headers() -> None:
    built = build(draft(to=[Mailbox("josé@example.test", "José")]), HOST)
    assert built.smtputf8 and built.recipients == ("josé@example.test",)
    assert "josé@example.test".encode() in built.content


def test_specials_in_a_name_are_quoted_inside_one_header() -> None:
    name = 'Eve "Boss" <evil@x.test>, Bcc: y@x.test; (c) \\'
    built = build(draft(sender=Mailbox("app@sender.test", name)), HOST)
    assert header_names(built.content).count("From") == 1
    assert "Bcc" not in header_names(built.content)
    assert parse(built.content)["From"].addresses[0].display_name == name


def test_a_998_character_subject_is_folded() -> None:
    built = build(draft(subject="x" * 998), HOST)
    assert content_problem(built.content) is None
    assert parse(built.content)["Subject"] == "x" * 998


# --- refusals --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "a\r\nBcc: e@x.test",
        "a\nb",
        "a\rb",
        "a\x00b",
        "a\x0bb",
        "a\x1fb",
        "a\x7fb",
        "a\x85b",
        "a\u2028b",
        "a\u2029b",
        "=?utf-8?q?a=0D=0ABcc:_e@x.test?=",
        "x =?UTF-8?B?YQ0KQmNjOiBlQHgudGVzdA==?= y",
    ],
)
def test_header_bound_fields_refuse_line_breaks_controls_and_encoded_words(value: str) -> None:
    for fields, where in [
        ({"subject": value}, "subject"),
        ({"sender": Mailbox("a@x.test", value)}, "from.name"),
        ({"to": [Mailbox("a@x.test", value)]}, "to[0].name"),
        ({"cc": [Mailbox("a@x.test", value)]}, "cc[0].name"),
        ({"reply_to": Mailbox("a@x.test", value)}, "reply_to.name"),
    ]:
        with pytest.raises(BuildError) as error:
            build(draft(**fields), HOST)
        assert where in problems(error), (where, value)


def test_a_tab_in_a_subject_is_fine() -> None:
    assert parse(build(draft(subject="a\tb"), HOST).content)["Subject"] == "a\tb"


@pytest.mark.parametrize(
    "address",
    ["", "x", "@x.test", "a@", "a@b", "a b@x.test", "a@x..test", "a@x.test\r\n", "<a@x.test>"],
)
def test_bad_addresses_are_refused_with_their_field(address: str) -> None:
    with pytest.raises(BuildError) as error:
        build(draft(to=[Mailbox("ok@x.test"), Mailbox(address)]), HOST)
    assert "to[1].email" in problems(error)


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(BuildError) as error:
        build(draft(sender=Mailbox("bad"), to=[], subject="a\nb", text=None), HOST)
    assert {"from.email", "to", "subject", "text"} <= set(problems(error))


def test_nul_in_a_body_is_refused() -> None:
    with pytest.raises(BuildError):
        build(draft(text="a\x00b"), HOST)


# --- property: no input becomes a header we did not set -------------------------------------

header_text = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=80
) | st.sampled_from(["=?utf-8?q?x?=", '"', "\\", "(", ")", ",", ";", ":", "<>", "\r\n", " "])


@settings(max_examples=300, deadline=None)
@given(name=header_text, subject=header_text, other=header_text)
def test_any_names_and_subject_give_an_error_or_exactly_our_headers(
    name: str, subject: str, other: str
) -> None:
    try:
        built = build(
            draft(
                sender=Mailbox("app@sender.test", name),
                to=[Mailbox("rcpt@example.test", other)],
                subject=subject,
            ),
            HOST,
        )
    except BuildError:
        return
    assert content_problem(built.content) is None
    names = header_names(built.content)
    assert sorted(names) == sorted(
        ["From", "To", "Subject", "Date", "Message-ID", "MIME-Version", "Content-Type",
         "Content-Transfer-Encoding"]
    )  # fmt: skip
    message = parse(built.content)
    # A parser drops the whitespace that starts a field's value, and may keep what ends it.
    assert message["Subject"] in (subject, subject.strip(), subject.lstrip())
    assert message["From"].addresses[0].username == "app"
    assert message["To"].addresses[0].addr_spec == "rcpt@example.test"


# --- attachments --------------------------------------------------------------------------


def test_an_inline_image_with_html_only_is_multipart_related_with_its_type() -> None:
    image = Attachment("logo.png", b"\x89PNG", "image/png", "logo@app")
    built = build(draft(text=None, html='<img src="cid:logo@app">', attachments=[image]), HOST)
    message = parse(built.content)
    assert message.get_content_type() == "multipart/related"
    assert message.get_param("type") == "text/html"
    assert header_names(built.content).count("MIME-Version") == 1
    [html, inline] = message.iter_parts()
    assert html.get_content_type() == "text/html" and inline["Content-ID"] == "<logo@app>"


def test_an_inline_part_without_html_is_a_plain_part_of_multipart_mixed() -> None:
    image = Attachment("logo.png", b"\x89PNG", "image/png", "logo@app")
    message = parse(build(draft(attachments=[image]), HOST).content)
    assert message.get_content_type() == "multipart/mixed"
    [text, inline] = message.iter_parts()
    assert text.get_content_type() == "text/plain"
    assert inline.get_content_disposition() == "inline" and inline.get_content() == b"\x89PNG"


@pytest.mark.parametrize(
    ("attachment", "field"),
    [
        (Attachment("a\r\nBcc: x@evil.test", b""), "attachments[0].filename"),
        (Attachment("=?utf-8?q?a?=", b""), "attachments[0].filename"),
        (Attachment("a" * 256, b""), "attachments[0].filename"),
        (Attachment("a", b"", "text/plain\r\nX: y"), "attachments[0].content_type"),
        (Attachment("a", b"", "message/rfc822"), "attachments[0].content_type"),
        (Attachment("a", b"", "image/png", "<x>\r\n"), "attachments[0].content_id"),
    ],
)
def test_header_bound_attachment_fields_are_refused_by_the_builder(
    attachment: Attachment, field: str
) -> None:
    with pytest.raises(BuildError) as error:
        build(draft(attachments=[attachment]), HOST)
    assert field in problems(error)


@settings(max_examples=60, deadline=None)
@given(st.text(min_size=1, max_size=80))
def test_any_filename_is_refused_or_decodes_back(filename: str) -> None:
    data = filename.encode("utf-8", "surrogatepass")
    try:
        built = build(draft(attachments=[Attachment(filename, data)]), HOST)
    except BuildError:
        return
    assert content_problem(built.content) is None
    [_, part] = parse(built.content).iter_parts()
    assert part.get_filename() == filename and part.get_content() == data


def test_refused_by_matches_extensions_and_types_case_and_trailing_dots_aside() -> None:
    refuse = (".exe", "application/x-msdownload", "image/*")
    assert refused_by(Attachment("A.ExE. ", b""), refuse) == ".exe"
    assert refused_by(Attachment("a.bin", b"", "Application/X-MSDownload"), refuse)
    assert refused_by(Attachment("a.bin", b"", "image/svg+xml"), refuse) == "image/*"
    assert refused_by(Attachment("a.exe.pdf", b"", "application/pdf"), refuse) is None
    assert refused_by(Attachment("a.exe", b""), ()) is None
