"""Fuzzing the parsers a hostile message reaches, against plain reference implementations:
the header splitter, the DKIM header parse and body canonicalisation (against dkimpy's own),
the line-length check, and the SMTP DATA reader fed in random chunks (against aiosmtpd's
line-at-a-time reading). Hypothesis drives them with bounded example counts, so the whole
file runs in a few seconds in the normal suite; the inputs are drawn from the bytes that
matter to these parsers (CR, LF, dots, spaces, tabs, colons, NUL) so that the odd cases come
up often.
"""

from __future__ import annotations

import asyncio

import dkim as dkimpy
import pytest
from dkim.canonicalization import Relaxed
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway import headers
from gateway.delivery import pipelining
from gateway.dkim.canonical import parse_message, relaxed_body
from gateway.dkim.errors import MessageFormatError
from gateway.headers import MAX_LINE, canonical_problem, has_long_line, header_fields
from gateway.smtpd.data import DataBudget, Transfer, TransferRefusal

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Pieces that hit the parsers' edges: line ends whole and bare, folds, dots, colons, NUL.
PIECES = [b"a", b"From", b"From ", b"x:", b":", b" ", b"\t", b"\r\n", b"\r", b"\n", b".",
          b"\r\n.", b"\r\n ", b"\r\n\t", b"\0", b"\xc3\xa9", b"To: b@example.com"]  # fmt: skip
raw_bytes = st.lists(st.sampled_from(PIECES), max_size=40).map(b"".join)
# Canonical content: lines of those pieces (no CR or LF inside), ended by CRLF.
LINE_PIECES = [b"a", b"From", b"From ", b"x", b":", b" ", b"\t", b".", b"\xc3\xa9", b"  "]
line = st.lists(st.sampled_from(LINE_PIECES), max_size=8).map(b"".join)
canonical = st.lists(line, max_size=20).map(lambda lines: b"".join(x + b"\r\n" for x in lines))


# --- the header splitter ----------------------------------------------------------------------


def reference_fields(block: bytes) -> list[bytes]:
    """The splitter as it was: a continuation line joined to its field one at a time."""
    fields: list[bytes] = []
    lines = block.split(b"\r\n")
    for part in lines[:-1] if block.endswith(b"\r\n") else lines:
        if part[:1] in (b" ", b"\t") and fields:
            fields[-1] += b"\r\n" + part
        else:
            fields.append(part)
    return fields


@given(raw_bytes)
@FUZZ
def test_header_fields_is_the_line_by_line_split(block: bytes) -> None:
    assert header_fields(block) == reference_fields(block)


# --- DKIM: the header parse and the relaxed body, against dkimpy -----------------------------


NAMES = [b"From", b"from", b"To", b"Subject", b"X-Fold", b"DKIM-Signature", b"a.b", b"x"]
field = st.tuples(st.sampled_from(NAMES), st.sampled_from([b":", b" :"]), line).map(b"".join)
fold = st.tuples(st.sampled_from([b" ", b"\t"]), line).map(b"".join)
mbox = line.map(lambda text: b"From " + text)
header_block = st.tuples(
    field, st.lists(st.one_of(field, field, fold, fold, mbox, line), max_size=12)
).map(lambda parts: b"".join(x + b"\r\n" for x in [parts[0], *parts[1]]))


@given(header_block, canonical)
@FUZZ
def test_dkim_header_parse_is_dkimpys(block: bytes, body: bytes) -> None:
    message = block + b"\r\n" + body
    try:
        theirs, their_body = dkimpy.rfc822_parse(message)
    except (dkimpy.MessageFormatError, IndexError):  # IndexError: a leading fold, in dkimpy
        with pytest.raises(MessageFormatError):
            parse_message(message)
        return
    if any(not name.rstrip(b":") or b":" in name for name, _ in theirs):
        return  # a name dkimpy takes and we refuse (a line starting with a colon)
    ours, our_body = parse_message(message)
    assert ours == [(bytes(name), bytes(value)) for name, value in theirs]
    assert our_body == their_body


@given(canonical, st.integers(min_value=0, max_value=50))
@FUZZ
def test_relaxed_body_is_dkimpys_with_any_run_of_empty_lines_at_the_end(
    body: bytes, empty_lines: int
) -> None:
    body += b"\r\n" * empty_lines
    assert relaxed_body(body) == Relaxed.canonicalize_body(body)


@given(raw_bytes, st.integers(1, 16))
@FUZZ
def test_the_canonical_check_a_piece_at_a_time_is_the_check_at_once(
    data: bytes, piece: int
) -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(headers, "_PIECE", piece)
        pieces = canonical_problem(data)
    whole = headers._canonical_problem(data, 0, len(data))
    assert (pieces is None) == (whole is None)  # the first piece's problem may be another


# --- the line-length check ----------------------------------------------------------------------


@given(st.lists(st.tuples(st.integers(0, 1200), st.sampled_from([b"\r\n", b"\r", b"\n", b""]))))
@FUZZ
def test_has_long_line_is_the_longest_split_line(parts: list[tuple[int, bytes]]) -> None:
    data = b"".join(b"x" * length + end for length, end in parts)
    assert has_long_line(data) == (max(map(len, data.split(b"\r\n"))) > MAX_LINE)


# --- the DATA reader, fed in random chunks -------------------------------------------------------


def reference_data(
    stream: bytes, max_size: int
) -> tuple[set[TransferRefusal], bytes, bytes] | None:
    """aiosmtpd 1.4.6's reading of DATA, a line at a time, but for the doubled dot, which
    RFC 5321 §4.5.3.1.6 leaves out of a line's length: the refusals that apply (either may
    be answered when both do), the content (unstuffed), and what follows the final dot;
    None when there is no final dot."""
    lines, at = [], 0
    while True:
        end = stream.find(b"\r\n", at)
        if end < 0:
            return None
        text, at = stream[at : end + 2], end + 2
        if text == b".\r\n":
            break
        lines.append(text)
    refusals = set()
    if sum(map(len, lines)) > max_size:
        refusals.add(TransferRefusal.TOO_BIG)
    if any(len(text) - 2 - text.startswith(b".") > MAX_LINE for text in lines):
        refusals.add(TransferRefusal.LINE_TOO_LONG)
    content = b"".join(text[1:] if text.startswith(b".") else text for text in lines)
    return refusals, content, stream[at:]


async def read_data(chunks: list[bytes], max_size: int) -> tuple[Transfer, bool, bytes]:
    """A Transfer over a real StreamReader fed `chunks` one loop turn apart; what is left
    in the stream after it."""
    reader = asyncio.StreamReader(limit=1000)  # aiosmtpd's: line_length_limit

    async def feed() -> None:
        for chunk in chunks:
            reader.feed_data(chunk)
            await asyncio.sleep(0)
        reader.feed_eof()

    feeding = asyncio.create_task(feed())
    transfer = Transfer(reader, max_size, DataBudget(1 << 30))
    complete = await transfer.receive()
    await feeding
    return transfer, complete, await reader.read()


DATA_PIECES = [*PIECES, b".\r\n", b"\r\n.\r\n", b"..", b"x" * 700, b"MAIL FROM:<a@b>\r\n"]


data_pieces = st.lists(st.sampled_from(DATA_PIECES), max_size=30).map(b"".join)


@given(
    st.one_of(  # mostly a transfer with its final dot (and perhaps commands after it)
        st.tuples(data_pieces, st.just(b"\r\n.\r\n"), data_pieces).map(b"".join),
        st.tuples(st.just(b".\r\n"), data_pieces).map(b"".join),
        data_pieces,
    ),
    st.lists(st.integers(min_value=1, max_value=64), min_size=1, max_size=12),
    st.sampled_from([200, 1000, 1 << 20]),
)
@FUZZ
def test_the_data_reader_is_aiosmtpds_line_by_line_reading(
    stream: bytes, cuts: list[int], max_size: int
) -> None:
    chunks, at = [], 0
    for size in cuts * (len(stream) // sum(cuts) + 1):
        if at < len(stream):
            chunks.append(stream[at : at + size])
            at += size

    transfer, complete, left = asyncio.run(read_data(chunks, max_size))

    expected = reference_data(stream, max_size)
    if expected is None:
        assert not complete
        return
    refusals, content, rest = expected
    assert complete
    assert left == rest  # what followed the final dot is still there, for the commands
    if refusals:
        assert transfer.refusal in refusals
        return
    assert transfer.refusal is None
    # Refused exactly when the content is not canonical; with both a bare CR/LF and a NUL
    # in different pieces, the piecewise check may name either one first.
    assert (transfer.problem is None) == (canonical_problem(content) is None)
    assert transfer.content == (content if transfer.problem is None else b"")


# --- the DATA writer, a slice at a time --------------------------------------------------------


@given(st.lists(st.sampled_from(DATA_PIECES), max_size=40).map(b"".join), st.integers(1, 64))
@FUZZ
def test_dot_stuffing_a_slice_at_a_time_is_dot_stuffing_at_once(
    content: bytes, slice_size: int
) -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pipelining, "_SLICE", slice_size)
        sliced = b"".join(pipelining.stuffed_slices(content))
    assert sliced == pipelining.dot_stuff(content)
