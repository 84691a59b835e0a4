"""Reply framing: how a reply's body is delimited on the wire, for both front ends (pure).

Theory of operation. ``Proxy`` returns a ``Reply`` (status, headers, a body that
is bytes, an iterator or None, and the ``length`` the backend announced, if any).
Before writing, a front end asks ``plan(...)`` how to frame it and gets one of a
few constant ``Plan`` values: whether a body is written, whether Content-Length
is announced, whether HTTP/1 uses chunked coding or closes the connection to end
the body, whether trailers can follow, and whether the connection stays open.
``on_error_after_head`` says what to do when the body fails once the head went
out. No I/O: tested from tables in tests/unit/test_framing.py.

Rules (RFC 9110 §6.4.1, RFC 9112 §6.3, RFC 9113 §8.1):
- 1xx, 204 and 304 never have content; neither does a reply to HEAD. HEAD and 304
  keep the Content-Length the backend sent (it describes the GET/selected
  representation: RFC 9110 §8.6); 1xx and 204 never carry one.
- A known length is announced as Content-Length on both protocols.
- An unknown length: HTTP/1.1 uses chunked coding (which also carries trailers);
  an HTTP/1.0 client cannot decode chunked, so the end of the body is the end of the
  connection; HTTP/2 needs neither (DATA frames and END_STREAM; trailers in HEADERS).
- Keep-alive (HTTP/1): the client's wish, the proxy's ``close_connection``, the
  worker still alive, and a close-delimited body all have a say.
- Once the head is out, the only honest signal of a failure is to cut the
  connection (HTTP/1) or reset the stream (HTTP/2): the client then sees a truncated
  reply, never a padded or silently short one.
"""

from __future__ import annotations

from edge.errors import BodyLengthMismatch


class Plan:
    """How to frame one reply (constant instances: nothing is allocated per request)."""

    __slots__ = ("body", "announce_length", "chunked", "close_delimited", "trailers", "keep_alive")

    def __init__(self, body: bool, announce_length: bool, chunked: bool, close_delimited: bool, trailers: bool,
                 keep_alive: bool) -> None:
        self.body = body                          # write body bytes at all
        self.announce_length = announce_length    # send Content-Length: reply.length
        self.chunked = chunked                    # HTTP/1.1 chunked coding
        self.close_delimited = close_delimited    # HTTP/1.0: the body ends with the connection
        self.trailers = trailers                  # trailers can be sent after the body
        self.keep_alive = keep_alive              # HTTP/1: the connection may carry another request

    def __setattr__(self, name, value):
        if hasattr(self, "keep_alive"):
            raise AttributeError("Plan is frozen")
        object.__setattr__(self, name, value)

    def __repr__(self) -> str:
        return "Plan(" + ", ".join(f"{k}={getattr(self, k)}" for k in self.__slots__) + ")"


# Every plan a reply can get, built once: (body, announce_length, chunked, close_delimited, trailers, keep_alive).
_PLANS = {
    (b, a, c, d, t, k): Plan(b, a, c, d, t, k)
    for b in (False, True) for a in (False, True) for c in (False, True)
    for d in (False, True) for t in (False, True) for k in (False, True)
}
_LENGTH_KEEP = _PLANS[(True, True, False, False, False, True)]
_LENGTH_CLOSE = _PLANS[(True, True, False, False, False, False)]
_CHUNKED_KEEP = _PLANS[(True, False, True, False, True, True)]
_CHUNKED_CLOSE = _PLANS[(True, False, True, False, True, False)]
_CLOSE_DELIMITED = _PLANS[(True, False, False, True, False, False)]
_H2_STREAM = _PLANS[(True, False, False, False, True, True)]


class ErrorAfterHead:
    """What a front end does when the body fails after the head was sent."""

    ABORT_CONNECTION = "abort connection"   # HTTP/1: RST, so the client sees a truncated reply
    RESET_STREAM = "reset stream"           # HTTP/2: RST_STREAM INTERNAL_ERROR on this stream only


def has_content(method: str, status: int) -> bool:
    """RFC 9110 §6.4.1: no content in replies to HEAD, nor in 1xx, 204 or 304."""
    return method != "HEAD" and status >= 200 and status != 204 and status != 304


def plan(method: str, status: int, length: int | None, has_body: bool, *, http2: bool = False,
         http11: bool = True, keep_alive: bool = True) -> Plan:
    """The framing of one reply.

    ``length``: the body's Content-Length, None when unknown; ``has_body``: the reply
    carries a body object at all; ``keep_alive``: everything but framing agrees the
    HTTP/1 connection may persist (client wish, worker alive, request body drained).
    """
    if http2:
        keep_alive = True  # connection lifetime is not a per-reply matter on HTTP/2
    if has_body and method != "HEAD" and status >= 200 and status != 204 and status != 304:  # has_content, inlined
        if length is not None:
            return _LENGTH_KEEP if keep_alive else _LENGTH_CLOSE
        if http2:
            return _H2_STREAM
        if http11:
            return _CHUNKED_KEEP if keep_alive else _CHUNKED_CLOSE
        return _CLOSE_DELIMITED
    announce = length is not None and status >= 200 and status != 204
    return _PLANS[(False, announce, False, False, False, keep_alive)]


def on_error_after_head(http2: bool) -> str:
    return ErrorAfterHead.RESET_STREAM if http2 else ErrorAfterHead.ABORT_CONNECTION


def check_complete(announced: int | None, sent: int) -> None:
    """Raise ``BodyLengthMismatch`` when ``sent`` bytes do not make the announced length."""
    if announced is not None and sent != announced:
        raise BodyLengthMismatch(f"backend body was {sent} bytes, Content-Length said {announced}")
