"""Admission: the one check every request passes, whatever front end read it (pure).

Theory of operation. A front end (``edge.h1`` for HTTP/1, ``edge.h2`` for HTTP/2
streams) turns what the client sent into a method, a request target, a list of
``(name, value)`` fields (str, latin-1 for HTTP/1) and, for HTTP/2, the
``:authority`` and whether DATA frames may follow. ``admit`` applies every
protocol rule that does not depend on the route and returns one ``Admission``
value that the front end turns into a ``RequestContext`` for ``Proxy``, or raises
a ``ClientError`` that carries its status. No I/O, no clock: tested from tables
in tests/unit/test_admission.py.

The same rules hold on both protocols, so a request refused over HTTP/1 is
refused over HTTP/2 too (issue 7, defect 1: an HTTP/2 ``:path`` used to reach the
backend with spaces, a fragment or raw UTF-8 bytes):

- method: a token (RFC 9110 §9.1); CONNECT is refused, edge is not a forward proxy.
- target (RFC 9112 §3.2): origin-form ``/path?query``; absolute-form
  ``http(s)://authority/path?query``, whose authority replaces Host (§3.2.2);
  ``*`` only with OPTIONS (§3.2.4). Path and query contain only RFC 3986
  characters (pchar, "/", "?", valid pct-encoded triplets): no space, CTL, "#",
  or byte above 0x7E. Non-ASCII is refused, not percent-encoded for the client:
  HTTP/1 has always refused it, a conforming client encodes it itself, and
  encoding on the client's behalf would make edge match rules against a path the
  client never sent.
- fields: names are tokens, values have no CTL but HTAB (RFC 9110 §5.5: CR, LF and
  NUL are "invalid and dangerous").
- Host (RFC 9112 §3.2): required on HTTP/1.1, at most one; on HTTP/2
  ``:authority`` wins and a Host that names another authority is refused
  (RFC 9113 §8.3.1).
- body: HTTP/1 by Transfer-Encoding/Content-Length (RFC 9112 §6.1-6.3: only
  ``chunked`` is decoded, a Content-Length must be ASCII digits); HTTP/2 by whether
  the stream ended with its HEADERS, whatever the method (a DELETE with DATA
  frames has a body), with Content-Length as the announced length if given.
- ``Expect``: only ``100-continue`` (RFC 9110 §10.1.1), else 417.
"""

from __future__ import annotations

import re

from edge import http as rules
from edge.errors import BadRequest, ClientError, ExpectationFailed, MethodNotAllowed, NotImplementedCoding  # noqa: F401  (re-exported)
from edge.fields import TCHARS, fields_valid


# Body framing of an admitted request.
NO_BODY = 0      # no body at all
LENGTH = 1       # ``length`` bytes (Content-Length)
CHUNKED = 2      # HTTP/1 chunked coding, decoded by the front end
STREAM = 3       # HTTP/2 DATA frames until END_STREAM, length unknown

# RFC 3986 §3.3/§3.4: pchar = unreserved / pct-encoded / sub-delims / ":" / "@";
# path segments are joined by "/", the query adds "/" and "?". Everything after the
# first "?" is query, so one character set covers the whole origin-form target:
# deleting its bytes must leave nothing (``bytes.translate``, one C pass). The
# pct-encoded triplets are checked only when a "%" is there.
_TARGET_BYTES = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,;=:@/?%"
_BAD_PCT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_HOSTS_OK: set[str] = set()   # Host values already found valid: a site sends the same few
_HOSTS_OK_MAX = 4096
_ABSOLUTE_FORM = re.compile(r"([hH][tT][tT][pP][sS]?)://([^/?#]*)(.*)", re.DOTALL)
_KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE"})
_DIGITS = frozenset(b"0123456789")


class Admission:
    """An admitted request: what ``Proxy`` needs, already checked.

    ``fields`` is the client's field list as received (the same list object, not a
    copy); ``host`` is Host, or the authority of an absolute-form target or of
    ``:authority``; ``body`` is one of NO_BODY, LENGTH, CHUNKED, STREAM.
    """

    __slots__ = ("method", "path", "query", "host", "fields", "body", "length", "expect_continue")

    def __init__(self, method: str, path: str, query: str, host: str, fields: list, body: int,
                 length: int | None, expect_continue: bool) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.host = host
        self.fields = fields
        self.body = body
        self.length = length
        self.expect_continue = expect_continue

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Admission) and all(getattr(self, k) == getattr(other, k) for k in self.__slots__)

    def __repr__(self) -> str:
        return (f"Admission({self.method} {self.path!r}?{self.query!r} host={self.host!r} "
                f"body={self.body} length={self.length} expect={self.expect_continue})")


def check_method(method: str) -> None:
    if method in _KNOWN_METHODS:
        return
    if not method or any(c not in TCHARS for c in method):
        raise BadRequest(f"invalid method {method[:40]!r}")
    if method == "CONNECT":
        raise MethodNotAllowed("CONNECT is not served: edge is a reverse proxy")


def split_target(method: str, target: str) -> tuple[str, str, str | None]:
    """``(path, query, authority)`` of a request target, or BadRequest (RFC 9112 §3.2)."""
    authority = None
    if target[:1] != "/":
        if target == "*":
            if method != "OPTIONS":
                raise BadRequest("asterisk-form target with a method other than OPTIONS")
            return "*", "", None
        m = _ABSOLUTE_FORM.fullmatch(target)
        if m is None:
            raise BadRequest(f"invalid request target {target[:80]!r}")
        authority = m.group(2)
        target = m.group(3) or "/"
        if target[:1] == "?":
            target = "/" + target
        if not authority or not host_valid(authority):
            raise BadRequest(f"invalid authority in request target {authority[:80]!r}")
    if target[:1] != "/" or not target.isascii() or target.encode("ascii").translate(None, _TARGET_BYTES):
        if "#" in target:
            raise BadRequest("fragment in request target")
        raise BadRequest(f"invalid character in request target {target[:80]!r}")
    if "%" in target and _BAD_PCT.search(target) is not None:
        raise BadRequest(f"invalid percent-encoding in request target {target[:80]!r}")
    path, _, query = target.partition("?")
    return path, query, authority


def host_valid(host: str) -> bool:
    """``edge.http.valid_host``, remembered for the few values a site actually receives."""
    if host in _HOSTS_OK:
        return True
    if not rules.valid_host(host):
        return False
    if len(_HOSTS_OK) >= _HOSTS_OK_MAX:
        _HOSTS_OK.clear()  # many distinct hosts: start over rather than grow without bound
    _HOSTS_OK.add(host)
    return True


def content_length(value: str) -> int:
    """RFC 9110 §8.6: ``Content-Length = 1*DIGIT``. ``str.isdigit`` would accept "²"."""
    b = value.encode("latin-1", "replace")
    if not b or len(b) > 18 or any(c not in _DIGITS for c in b):
        raise BadRequest(f"invalid Content-Length {value[:40]!r}")
    return int(b)


def admit(method: str, target: str, fields: list, *, http11: bool = True, authority: str | None = None,
          http2: bool = False, stream_ended: bool = True, fields_checked: bool = False) -> Admission:
    """Admit one request or raise a ``ClientError`` (see the module docstring).

    ``fields_checked``: the front end's parser already refused invalid names and
    values with these exact rules (gunicorn's C parser does for HTTP/1; the unit
    tests hold it to that), so the check is not paid twice on the hot path.
    ``stream_ended`` (HTTP/2): END_STREAM came with the HEADERS, so no DATA follows.
    """
    check_method(method)
    path, query, target_authority = split_target(method, target)
    if not fields_checked and not fields_valid(fields):
        raise BadRequest("invalid header field name or value")
    host = None
    te = None
    cl = None
    expect = False
    for name, value in fields:
        n = len(name)
        if n == 4:
            if name.lower() == "host":
                if host is not None:
                    raise BadRequest("more than one Host")
                host = value
        elif n == 14:
            if name.lower() == "content-length":
                length = content_length(value)
                if cl is not None and cl != length:
                    raise BadRequest("conflicting Content-Length values")
                cl = length
        elif n == 17:
            if name.lower() == "transfer-encoding":
                te = value if te is None else f"{te}, {value}"
        elif n == 6:
            if name.lower() == "expect":
                if value.strip().lower() != "100-continue":
                    raise ExpectationFailed(f"unsupported expectation {value[:40]!r}")
                expect = True
    if http2:
        if authority:
            if host is not None and host != authority:
                raise BadRequest("Host differs from :authority")
            host = authority
        if te is not None:
            raise BadRequest("Transfer-Encoding in an HTTP/2 request")  # RFC 9113 §8.2.2
    elif target_authority is not None:
        host = target_authority  # RFC 9112 §3.2.2: the target's authority wins over Host
    if host is None:
        if http11 and not http2:
            raise BadRequest("HTTP/1.1 request without Host")
        host = ""
    elif host and not host_valid(host):
        raise BadRequest(f"invalid Host {host[:80]!r}")
    if http2:
        if stream_ended:
            if cl:
                raise BadRequest("Content-Length without DATA frames")
            return Admission(method, path, query, host, fields, NO_BODY, None, False)
        return Admission(method, path, query, host, fields, STREAM if cl is None else LENGTH, cl, expect)
    if te is not None:
        codings = [c.strip().lower() for c in te.split(",") if c.strip()]
        if cl is not None:
            raise BadRequest("Content-Length with Transfer-Encoding")  # RFC 9112 §6.3 rule 3
        if codings != ["chunked"]:
            if codings and codings[-1] == "chunked":
                raise NotImplementedCoding(f"unsupported transfer coding {te[:60]!r}")
            raise BadRequest(f"Transfer-Encoding without chunked last: {te[:60]!r}")
        if not http11:
            raise BadRequest("chunked request from an HTTP/1.0 client")
        return Admission(method, path, query, host, fields, CHUNKED, None, expect)
    if cl:
        return Admission(method, path, query, host, fields, LENGTH, cl, expect)
    return Admission(method, path, query, host, fields, NO_BODY, None, False)
