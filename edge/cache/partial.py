"""Partial content in the shared cache: storing 206 responses, answering ranges from them,
and completing them (RFC 9111 §3.3, §3.4; RFC 9110 §14, §15.3.7). Pure: no I/O, no clock.

Theory of operation
-------------------
A 206 (Partial Content) with one ``Content-Range: bytes first-last/complete`` is stored like
any response, under the same URL (or variant) record, with status 206: the status is what
keeps it from ever answering as a complete response (RFC 9111 §3.3 "A cache MUST NOT use an
incomplete response to answer requests unless the response has been made complete, or the
request is partial and specifies a range wholly within the incomplete response"). The stored
``Content-Range`` is the only record of which bytes it holds: ``span_of`` reads it back, so
records keep their format. ``refusal`` says which 206s are not stored (multipart, unknown
unit or complete length, larger than the object cap, a body that is not the range).

A request that finds a stored partial goes through ``plan`` (the cache calls it only for a
fresh partial, after ``policy.lookup``): the client's Range is evaluated against the complete
length with ``policy.ranges`` (the one RFC 9110 §14 range evaluator, the one complete stored
responses use), and then

- ``Serve``: the stored bytes cover the range: a 206 from the store;
- ``Unsatisfiable``: the stored complete length proves the range unsatisfiable: 416;
- ``Whole``: the stored part is the whole representation: a complete 200 from the store;
- ``Complete``: anything else (no Range, a range past the stored bytes, several ranges, an
  If-Range that does not match) when only the tail or only the head of the representation
  is missing and the partial has a strong validator: ask the origin for the missing bytes,
  with If-Range, and combine (``combinable``, ``combined_headers``);
- ``Forward``: the request goes to the origin as the client sent it; its answer replaces
  the stored partial.

``window`` cuts a client's range out of a combined stream while still reading the rest, so
the complete response can be stored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Iterator, Union

from edge.cache import policy
from edge.cache.policy import Headers, header_first, header_values, parse_http_date, strong_match

# RFC 9110 §14.4: Content-Range = range-unit SP ( range-resp / unsatisfied-range );
# range-resp = incl-range "/" ( complete-length / "*" ); incl-range = first-pos "-" last-pos
_CONTENT_RANGE_RE = re.compile(r"([!#$%&'*+\-.^_`|~0-9A-Za-z]+) (\d+)-(\d+)/(\d+|\*)")


@dataclass(frozen=True, slots=True)
class Span:
    """Bytes ``first``..``last`` (inclusive) of a representation of ``complete`` bytes."""

    first: int
    last: int
    complete: int

    def __post_init__(self) -> None:
        if not 0 <= self.first <= self.last < self.complete:
            raise ValueError(f"span: need 0 <= first <= last < complete (got {self.first}-{self.last}/{self.complete})")

    @property
    def length(self) -> int:
        return self.last - self.first + 1


def parse_content_range(value: str | None) -> Span | None:
    """A ``bytes first-last/complete`` Content-Range, or None.

    None for another range unit (RFC 9111 §3.3: a cache "MUST NOT store incomplete or
    partial-content responses if it ... does not understand the range units used in those
    fields"), an unknown complete length (``*``: the cache could never know what completes
    it), an unsatisfied-range (``*/n``) and an invalid one (RFC 9110 §14.4: "A Content-Range
    field value is invalid if it contains a range-resp that has a last-pos value less than
    its first-pos value, or a complete-length value less than or equal to its last-pos
    value").
    """
    if value is None:
        return None
    m = _CONTENT_RANGE_RE.fullmatch(value.strip(" \t"))
    # RFC 9110 §14.1: range units are compared case-insensitively
    if m is None or m.group(1).lower() != "bytes" or m.group(4) == "*":
        return None
    first, last, complete = int(m.group(2)), int(m.group(3)), int(m.group(4))
    if last < first or complete <= last:
        return None
    return Span(first, last, complete)


def span_of(headers: Headers) -> Span | None:
    """The one byte range a single-part 206 carries (None: none, several, or not understood)."""
    values = header_values(headers, "content-range")
    return parse_content_range(values[0]) if len(values) == 1 else None


def refusal(headers: Headers, length: int | None, max_object_size: int) -> str | None:
    """Why a storable-looking 206 is not stored (None: store it).

    - RFC 9110 §15.3.7.2: several ranges come as ``multipart/byteranges`` without a
      Content-Range field; edge stores single parts only ("multipart");
    - RFC 9111 §3.3: only ranges edge understands: ``bytes`` with a known complete length
      ("range-unit");
    - the object cap applies to the complete length, so that any stored partial can be made
      complete within it ("too-large");
    - RFC 9110 §14.4: the content is exactly the range ("length").
    """
    values = header_values(headers, "content-range")
    if not values:
        ctype = header_first(headers, "content-type") or ""
        return "multipart" if ctype.strip(" \t").lower().startswith("multipart/byteranges") else "range-unit"
    span = span_of(headers)
    if span is None:
        return "range-unit"
    if span.complete > max_object_size:
        return "too-large"
    if length is not None and length != span.length:
        return "length"
    return None


def strong_validator(headers: Headers) -> str | None:
    """The stored strong validator, as an If-Range value (None: none).

    RFC 9111 §3.4: ranges may be combined only "if they all share the same strong
    validator". RFC 9110 §8.8.3: an ETag is strong unless it starts with ``W/``; a weak one
    rules the representation out of combining (and of If-Range, §13.1.5 "A client MUST NOT
    generate an If-Range header field containing an entity tag that is marked as weak").
    Without an ETag, §13.1.5: "A client MUST NOT generate an If-Range header field
    containing an HTTP-date unless the client has no entity tag for the corresponding
    representation and the date is a strong validator in the sense defined by Section
    8.8.2.2": the stored Date at least one second after Last-Modified.
    """
    etag = header_first(headers, "etag")
    if etag is not None:
        etag = etag.strip(" \t")
        return etag if etag.startswith('"') else None
    return _strong_last_modified(headers)


def _strong_last_modified(headers: Headers) -> str | None:
    lm_raw = header_first(headers, "last-modified")
    date_raw = header_first(headers, "date")
    if lm_raw is None or date_raw is None:
        return None
    lm, date = parse_http_date(lm_raw), parse_http_date(date_raw)
    if lm is None or date is None or date - lm < 1:
        return None
    return lm_raw.strip(" \t")


# Decisions -------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Serve:
    """Answer 206 with bytes ``first``..``last`` of the representation, all stored."""

    first: int
    last: int
    content_range: str


@dataclass(frozen=True, slots=True)
class Unsatisfiable:
    """Answer 416 (RFC 9110 §15.5.17) with ``content_range`` (``bytes */complete``)."""

    content_range: str


@dataclass(frozen=True, slots=True)
class Whole:
    """The stored part is the entire representation: answer it as a complete 200."""


WHOLE = Whole()


@dataclass(frozen=True, slots=True)
class Complete:
    """Ask the origin for bytes ``first``..``last`` (the missing head or tail) with these
    request fields, combine, and answer the client ``want`` (None: the complete 200; else
    the (first, last) it asked for, as a 206)."""

    first: int
    last: int
    fields: tuple[tuple[str, str], ...]
    want: tuple[int, int] | None


@dataclass(frozen=True, slots=True)
class Forward:
    """The stored partial cannot serve this request: forward it as the client sent it."""

    reason: str


Plan = Union[Serve, Unsatisfiable, Whole, Complete, Forward]


def plan(method: str, range_header: str | None, if_range: str | None, span: Span, stored_headers: Headers) -> Plan:
    """What to do with a request when a fresh stored partial holds ``span``."""
    if method == "GET":
        rd = policy.ranges(range_header, if_range, span.complete, stored_headers, method)
        if rd.status == 206 and span.first <= rd.start and rd.end <= span.last:
            # RFC 9111 §3.3: "the request is partial and specifies a range wholly within the
            # incomplete response"
            return Serve(rd.start, rd.end, rd.content_range)
        if rd.status == 416:
            # RFC 9110 §14.1.1: "An int-range is satisfiable if the first-pos is less than the
            # current length": the stored Content-Range gives the complete length
            return Unsatisfiable(rd.content_range)
    if span.first == 0 and span.last == span.complete - 1 and method in ("GET", "HEAD"):
        # RFC 9110 §15.3.7.3: "If the union consists of the entire range of the representation,
        # then the client MUST process the combined response as if it were a complete 200 (OK)
        # response" (a 206 to "bytes=0-", say)
        return WHOLE
    if method != "GET":
        # RFC 9111 §3.3: only "the request is partial" may be answered from an incomplete
        # response; a HEAD asks for the complete representation's head (RFC 9110 §9.3.2)
        return Forward("method")
    validator = strong_validator(stored_headers)
    if validator is None:
        return Forward("no-strong-validator")   # RFC 9111 §3.4: nothing to combine with
    if span.first == 0:
        first, last, spec = span.last + 1, span.complete - 1, f"bytes={span.last + 1}-"
    elif span.last == span.complete - 1:
        first, last, spec = 0, span.first - 1, f"bytes=0-{span.first - 1}"
    else:
        return Forward("gaps")  # head and tail missing: one single-range request cannot fill both
    # RFC 9111 §3.3: "A cache MAY complete a stored incomplete response by making a
    # subsequent range request ... and combining the successful response with the stored
    # response"; RFC 9110 §13.1.5: If-Range makes a changed representation come back whole
    # ("if the validator does not match, the server MUST ignore the Range header field")
    want = (rd.start, rd.end) if rd.status == 206 else None
    return Complete(first, last, (("Range", spec), ("If-Range", validator)), want)


def combinable(c: Complete, span: Span, stored_headers: Headers, status: int, headers: Headers,
               length: int | None) -> bool:
    """May the origin's answer to ``c``'s request be combined with the stored partial?

    RFC 9110 §15.3.7.3: "These ranges can only be safely combined if they all have in common
    the same strong validator"; RFC 9111 §3.4 likewise. The answer must be a single-part 206
    of exactly the missing bytes of a representation of the same complete length.
    """
    if status != 206:
        return False
    got = span_of(headers)
    if got is None or (got.first, got.last, got.complete) != (c.first, c.last, span.complete):
        return False
    if length is not None and length != got.length:
        return False
    stored_etag = header_first(stored_headers, "etag")
    if stored_etag is not None:
        etag = header_first(headers, "etag")
        return etag is not None and strong_match(etag.strip(" \t"), stored_etag.strip(" \t"))
    # a strong Last-Modified on both sides (RFC 9110 §8.8.2.2), and no entity tag appearing
    # on one side only (then the validators are not the same)
    lm = _strong_last_modified(headers)
    return header_first(headers, "etag") is None and lm is not None and lm == _strong_last_modified(stored_headers)


def combined_headers(stored_headers: Headers, new_headers: Headers, response_time: float) -> list[tuple[str, str]]:
    """The header section of a combined complete response.

    RFC 9111 §3.4: "When combining the new response with one or more stored responses, a
    cache MUST update the stored response header fields using the header fields provided in
    the new response, as per Section 3.2" (``policy.merge_304``, which keeps the stored
    Content-Range and Content-Length); RFC 9110 §15.3.7.3: "If the union consists of the
    entire range of the representation, then the client MUST process the combined response
    as if it were a complete 200 (OK) response", so no Content-Range remains (the length is
    framing, set by the writer).
    """
    return without_range_fields(policy.merge_304(stored_headers, new_headers, response_time))


def without_range_fields(headers: Headers) -> list[tuple[str, str]]:
    """A stored partial's fields for an answer of a different range (its own Content-Range goes)."""
    return [(n, v) for n, v in headers if n.lower() != "content-range"]


def window(chunks: Iterable[bytes], first: int, last: int) -> Iterator[bytes]:
    """Bytes ``first``..``last`` of the stream ``chunks``, which is read to its end all the
    same (the cache's tee stores the complete response while the client gets its range).
    Closing the window closes ``chunks``."""
    pos = 0
    try:
        for chunk in chunks:
            end = pos + len(chunk)
            if end > first and pos <= last:
                lo = max(first - pos, 0)
                hi = min(last + 1 - pos, len(chunk))
                yield chunk if (lo == 0 and hi == len(chunk)) else chunk[lo:hi]
            pos = end
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
