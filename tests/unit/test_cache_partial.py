"""edge.cache.partial from the RFC text (RFC 9111 §3.3, §3.4; RFC 9110 §14, §15.3.7): one table
per rule, each row citing its section. Times are injected: T0 is an arbitrary instant."""

from __future__ import annotations

import pytest

from edge.cache import partial as PT
from edge.cache.partial import Complete, Forward, Serve, Span, Unsatisfiable
from edge.cache.policy import format_http_date

T0 = 1_800_000_000.0
DATE = format_http_date(T0)
LM_STRONG = format_http_date(T0 - 3600)       # Date one hour later: strong (RFC 9110 §8.8.2.2)
LM_WEAK = DATE                                # Date == Last-Modified: weak


@pytest.mark.parametrize("value,expected,section", [
    ("bytes 0-4/10", Span(0, 4, 10), "RFC 9110 §14.4 range-resp"),
    ("bytes 4-9/10", Span(4, 9, 10), "RFC 9110 §14.4 the last byte"),
    ("BYTES 0-0/1", Span(0, 0, 1), "RFC 9110 §14.1 units are case-insensitive"),
    (" bytes 2-3/4 ", Span(2, 3, 4), "surrounding whitespace"),
    ("bytes 0-4/*", None, "RFC 9111 §3.3 unknown complete length: nothing completes it"),
    ("bytes */10", None, "RFC 9110 §14.4 unsatisfied-range is no content"),
    ("bytes 5-4/10", None, "RFC 9110 §14.4 last-pos < first-pos: invalid"),
    ("bytes 0-10/10", None, "RFC 9110 §14.4 complete-length <= last-pos: invalid"),
    ("items 0-4/10", None, "RFC 9111 §3.3 a range unit edge does not understand"),
    ("bytes 0-4", None, "no complete length"),
    ("bytes=0-4/10", None, "request syntax is not response syntax"),
    ("bytes -1-4/10", None, "negative first-pos"),
    (None, None, "absent"),
])
def test_parse_content_range(value, expected, section):
    assert PT.parse_content_range(value) == expected, section


def test_span_needs_ordered_positions():
    with pytest.raises(ValueError, match="first <= last < complete"):
        Span(5, 4, 10)


@pytest.mark.parametrize("headers,length,cap,expected,section", [
    ([("Content-Range", "bytes 0-4/10")], 5, 100, None, "RFC 9111 §3.3 a single byte range MAY be stored"),
    ([("Content-Range", "bytes 0-4/10")], None, 100, None, "chunked: the tee checks the length"),
    ([("Content-Type", "multipart/byteranges; boundary=x")], 50, 100, "multipart", "RFC 9110 §15.3.7.2 several parts"),
    ([], 5, 100, "range-unit", "a 206 without Content-Range"),
    ([("Content-Range", "bytes 0-4/10"), ("Content-Range", "bytes 5-9/10")], 10, 100, "range-unit", "two fields"),
    ([("Content-Range", "items 0-4/10")], 5, 100, "range-unit", "RFC 9111 §3.3 unknown unit MUST NOT be stored"),
    ([("Content-Range", "bytes 0-4/*")], 5, 100, "range-unit", "unknown complete length"),
    ([("Content-Range", "bytes 0-4/1000")], 5, 100, "too-large", "the cap applies to the complete length"),
    ([("Content-Range", "bytes 4-9/10")], 5, 100, "length", "RFC 9110 §14.4 the content is not the range"),
])
def test_refusal(headers, length, cap, expected, section):
    assert PT.refusal(headers, length, cap) == expected, section


@pytest.mark.parametrize("headers,expected,section", [
    ([("ETag", '"a"')], '"a"', "RFC 9110 §8.8.3 strong entity tag"),
    ([("ETag", 'W/"a"'), ("Last-Modified", LM_STRONG), ("Date", DATE)], None,
     "RFC 9110 §13.1.5 no weak tag in If-Range, and no date when there is a tag"),
    ([("Last-Modified", LM_STRONG), ("Date", DATE)], LM_STRONG, "RFC 9110 §8.8.2.2 Date a second after Last-Modified"),
    ([("Last-Modified", LM_WEAK), ("Date", DATE)], None, "RFC 9110 §8.8.2.2 Date == Last-Modified is weak"),
    ([("Last-Modified", LM_STRONG)], None, "no Date: the Last-Modified cannot be shown strong"),
    ([("Date", DATE)], None, "no validator"),
])
def test_strong_validator(headers, expected, section):
    assert PT.strong_validator(headers) == expected, section


TAGGED = [("ETag", '"v1"'), ("Content-Range", "bytes 0-4/10")]
TAIL_TAGGED = [("ETag", '"v1"'), ("Content-Range", "bytes 4-9/10")]
DATED = [("Last-Modified", LM_STRONG), ("Date", DATE), ("Content-Range", "bytes 0-4/10")]


@pytest.mark.parametrize("method,rng,if_range,span,stored,expected,section", [
    ("GET", "bytes=0-4", None, Span(0, 4, 10), TAGGED, Serve(0, 4, "bytes 0-4/10"),
     "RFC 9111 §3.3 a range wholly within the stored one"),
    ("GET", "bytes=1-2", None, Span(0, 4, 10), TAGGED, Serve(1, 2, "bytes 1-2/10"), "a smaller range"),
    ("GET", "bytes=6-8", None, Span(4, 9, 10), TAIL_TAGGED, Serve(6, 8, "bytes 6-8/10"), "an int-range in a tail"),
    ("GET", "bytes=6-", None, Span(4, 9, 10), TAIL_TAGGED, Serve(6, 9, "bytes 6-9/10"), "RFC 9110 §14.1.2 open-ended"),
    ("GET", "bytes=-1", None, Span(4, 9, 10), TAIL_TAGGED, Serve(9, 9, "bytes 9-9/10"), "RFC 9110 §14.1.1 suffix"),
    ("GET", "bytes=-6", None, Span(4, 9, 10), TAIL_TAGGED, Serve(4, 9, "bytes 4-9/10"), "the whole stored suffix"),
    ("GET", "bytes=0-4", '"v1"', Span(0, 4, 10), TAGGED, Serve(0, 4, "bytes 0-4/10"), "RFC 9110 §13.1.5 If-Range matches"),
    ("GET", "bytes=10-20", None, Span(0, 4, 10), TAGGED, Unsatisfiable("bytes */10"),
     "RFC 9110 §14.1.1 first-pos past the complete length: 416 from the stored length"),
    ("GET", None, None, Span(0, 4, 10), TAGGED, Complete(5, 9, (("Range", "bytes=5-"), ("If-Range", '"v1"')), None),
     "RFC 9111 §3.3 no Range: complete the stored head"),
    ("GET", "bytes=3-7", None, Span(0, 4, 10), TAGGED,
     Complete(5, 9, (("Range", "bytes=5-"), ("If-Range", '"v1"')), (3, 7)), "a range past the stored bytes"),
    ("GET", None, None, Span(4, 9, 10), TAIL_TAGGED,
     Complete(0, 3, (("Range", "bytes=0-3"), ("If-Range", '"v1"')), None), "the head missing"),
    ("GET", "bytes=0-4", '"v0"', Span(0, 4, 10), TAGGED,
     Complete(5, 9, (("Range", "bytes=5-"), ("If-Range", '"v1"')), None),
     "RFC 9110 §13.1.5 If-Range does not match: the whole representation"),
    ("GET", "bytes=0-1,3-4", None, Span(0, 4, 10), TAGGED,
     Complete(5, 9, (("Range", "bytes=5-"), ("If-Range", '"v1"')), None), "several ranges: the full 200 (§14.2 MAY ignore)"),
    ("GET", None, None, Span(0, 4, 10), DATED,
     Complete(5, 9, (("Range", "bytes=5-"), ("If-Range", LM_STRONG)), None), "RFC 9110 §13.1.5 a strong date"),
    ("GET", None, None, Span(0, 4, 10), [("ETag", 'W/"v1"'), ("Content-Range", "bytes 0-4/10")],
     Forward("no-strong-validator"), "RFC 9111 §3.4 a weak validator is not combined"),
    ("GET", None, None, Span(0, 4, 10), [("Content-Range", "bytes 0-4/10")], Forward("no-strong-validator"),
     "RFC 9111 §3.4 no validator: nothing to combine with"),
    ("GET", None, None, Span(3, 5, 10), TAGGED, Forward("gaps"), "head and tail missing"),
    ("HEAD", None, None, Span(0, 4, 10), TAGGED, Forward("method"), "RFC 9111 §3.3 HEAD is not partial"),
    ("GET", None, None, Span(0, 9, 10), [], PT.WHOLE,
     "RFC 9110 §15.3.7.3 the entire representation is a complete 200 (no validator needed)"),
    ("HEAD", None, None, Span(0, 9, 10), [], PT.WHOLE, "the whole representation answers HEAD too"),
    ("GET", "bytes=2-3", None, Span(0, 9, 10), [], Serve(2, 3, "bytes 2-3/10"), "a range of the whole"),
    ("GET", "bytes=0-1,5-6", None, Span(0, 9, 10), [], PT.WHOLE, "several ranges of the whole: the 200"),
    ("HEAD", "bytes=0-1", None, Span(0, 4, 10), TAGGED, Forward("method"), "RFC 9110 §14.2 ranges are for GET"),
])
def test_plan(method, rng, if_range, span, stored, expected, section):
    assert PT.plan(method, rng, if_range, span, stored) == expected, section


HEAD_MISSING = Complete(5, 9, (("Range", "bytes=5-"), ("If-Range", '"v1"')), None)
DATED_C = Complete(5, 9, (("Range", "bytes=5-"), ("If-Range", LM_STRONG)), None)
S = Span(0, 4, 10)


@pytest.mark.parametrize("c,stored,status,headers,length,expected,section", [
    (HEAD_MISSING, TAGGED, 206, [("ETag", '"v1"'), ("Content-Range", "bytes 5-9/10")], 5, True,
     "RFC 9111 §3.4 the same strong validator"),
    (HEAD_MISSING, TAGGED, 206, [("ETag", '"v1"'), ("Content-Range", "bytes 5-9/10")], None, True, "chunked tail"),
    (HEAD_MISSING, TAGGED, 206, [("ETag", '"v2"'), ("Content-Range", "bytes 5-9/10")], 5, False,
     "RFC 9110 §15.3.7.3 another validator: another representation"),
    (HEAD_MISSING, TAGGED, 206, [("ETag", 'W/"v1"'), ("Content-Range", "bytes 5-9/10")], 5, False,
     "RFC 9110 §8.8.3.2 a weak tag never matches strongly"),
    (HEAD_MISSING, TAGGED, 206, [("Content-Range", "bytes 5-9/10")], 5, False, "no validator in the tail"),
    (HEAD_MISSING, TAGGED, 206, [("ETag", '"v1"'), ("Content-Range", "bytes 5-9/11")], 5, False,
     "another complete length"),
    (HEAD_MISSING, TAGGED, 206, [("ETag", '"v1"'), ("Content-Range", "bytes 4-9/10")], 6, False, "not the bytes asked"),
    (HEAD_MISSING, TAGGED, 206, [("ETag", '"v1"'), ("Content-Range", "bytes 5-9/10")], 4, False,
     "content shorter than its range"),
    (HEAD_MISSING, TAGGED, 206, [("ETag", '"v1"'), ("Content-Type", "multipart/byteranges; boundary=b")], 90, False,
     "multipart"),
    (HEAD_MISSING, TAGGED, 200, [("ETag", '"v1"')], 10, False, "a 200 is relayed, not combined"),
    (DATED_C, DATED, 206, [("Last-Modified", LM_STRONG), ("Date", DATE), ("Content-Range", "bytes 5-9/10")], 5, True,
     "RFC 9110 §8.8.2.2 the same strong Last-Modified"),
    (DATED_C, DATED, 206, [("Last-Modified", LM_STRONG), ("Date", LM_STRONG), ("Content-Range", "bytes 5-9/10")], 5,
     False, "the tail's Last-Modified is weak"),
    (DATED_C, DATED, 206, [("Last-Modified", LM_STRONG), ("Date", DATE), ("ETag", '"x"'),
                           ("Content-Range", "bytes 5-9/10")], 5, False, "an entity tag on one side only"),
])
def test_combinable(c, stored, status, headers, length, expected, section):
    assert PT.combinable(c, S, stored, status, headers, length) is expected, section


def test_combined_headers_take_the_new_fields_but_not_the_range():
    # RFC 9111 §3.4 (update as §3.2) and RFC 9110 §15.3.7.3 ("aside from Content-Range"; the
    # union "as if it were a complete 200")
    stored = [("Content-Type", "text/plain"), ("ETag", '"v1"'), ("A", "1"), ("B", "1"), ("Age", "30"),
              ("Content-Range", "bytes 0-4/10"), ("Date", DATE)]
    new = [("A", "2"), ("ETag", '"v1"'), ("Content-Range", "bytes 5-9/10"), ("Content-Length", "5"),
           ("Date", format_http_date(T0 + 5))]
    out = PT.combined_headers(stored, new, T0 + 5)
    assert ("A", "2") in out and ("B", "1") in out and ("Content-Type", "text/plain") in out
    assert not any(n.lower() in ("content-range", "content-length", "age") for n, _ in out)
    assert [v for n, v in out if n == "Date"] == [format_http_date(T0 + 5)]


@pytest.mark.parametrize("chunks,first,last,expected", [
    ([b"0123456789"], 2, 4, b"234"),
    ([b"01", b"23", b"45", b"67", b"89"], 3, 6, b"3456"),
    ([b"01", b"23", b"45"], 0, 5, b"012345"),
    ([b"0", b"1", b"2"], 2, 2, b"2"),
    ([b"", b"0123", b""], 1, 1, b"1"),
])
def test_window_cuts_a_range_and_reads_the_rest(chunks, first, last, expected):
    seen = []

    def source():
        for c in chunks:
            seen.append(c)
            yield c

    assert b"".join(PT.window(source(), first, last)) == expected
    assert seen == chunks   # read to the end: the tee behind it stores the complete response


def test_window_closed_early_closes_its_source():
    closed = []

    def source():
        try:
            yield b"01"
            yield b"23"
        finally:
            closed.append(True)

    w = PT.window(source(), 0, 3)
    assert next(w) == b"01"
    w.close()
    assert closed == [True]
