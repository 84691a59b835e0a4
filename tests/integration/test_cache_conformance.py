"""Black-box HTTP cache conformance (issue 10): what a client sees through edge's shared cache.

One real edge (gunicorn, 2 workers) for the module, caching every route with the RFCs'
defaults only (as conf/examples/cache.yaml: no forced TTLs, no ignored directives,
``set_cookie: store``), in front of a scripted origin (tests/fixtures/scripted_origin.py)
that answers each path from a queue of canned responses and records every request. Each
test uses paths of its own. Every assertion cites the requirement it checks: RFC 9111
(§ alone), RFC 9110 (conditional requests, ranges), RFC 5861 (stale-while-revalidate,
stale-if-error), RFC 9211 (Cache-Status) and RFC 9213 (CDN-Cache-Control).

Time: a response is made stale on arrival with an ``Age`` or an old ``Date`` from the origin
(§4.2.3) rather than by sleeping; the one test that needs ``Age`` to grow waits for it.
Every client request opens a new connection, so consecutive requests may reach either
worker: what one worker stores the other serves (the store is shared).
"""

from __future__ import annotations

import email.utils
import http.client
import re
import time
import uuid

import pytest

from edge.launch import start_edge
from tests.fixtures.scripted_origin import Canned, ScriptedOrigin
from tests.integration.conftest import until
from tests.integration.rawhttp import messages, send_until_close

def hd(offset_s: float = 0.0) -> str:
    """An HTTP-date ``offset_s`` from now (RFC 9110 §5.6.7)."""
    return email.utils.formatdate(time.time() + offset_s, usegmt=True)


class Reply:
    def __init__(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def h(self, name: str) -> str | None:
        values = [v for n, v in self.headers if n.lower() == name.lower()]
        return ", ".join(values) if values else None

    def all(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n.lower() == name.lower()]

    @property
    def text(self) -> str:
        return self.body.decode("latin-1")

    @property
    def hit(self) -> bool:
        """Served from the store without contacting the origin: RFC 9211 ``hit``, or ``collapsed``
        (it waited for the fill of a concurrent miss, whose object is committed just after that
        response's last byte)."""
        return any(m[0] == "edge" and ("hit" in m[1] or "collapsed" in m[1])
                   for m in parse_cache_status(self.h("Cache-Status") or ""))


# RFC 8941 (Structured Fields) grammar for the List that Cache-Status is (RFC 9211 §2)
_SF_KEY = r"[a-z*][a-z0-9_\-.*]*"
_SF_BARE = (r'(?:-?\d{1,15}(?:\.\d{1,3})?|"(?:[^"\\\x00-\x1f\x7f]|\\["\\])*"|[A-Za-z*][!#$%&\'*+\-.^_`|~0-9A-Za-z:/]*'
            r"|:[A-Za-z0-9+/=]*:|\?[01])")
_SF_PARAM = rf";\s*{_SF_KEY}(?:={_SF_BARE})?"
_SF_MEMBER = re.compile(rf"({_SF_BARE})((?:{_SF_PARAM})*)")
_SF_PARAM_RE = re.compile(rf";\s*({_SF_KEY})(?:=({_SF_BARE}))?")


def parse_cache_status(value: str) -> list[tuple[str, dict[str, str | bool]]]:
    """An sf-list of ``cache-name; params`` members (RFC 9211 §2); AssertionError if malformed."""
    out = []
    if not value.strip():
        return out
    pos = 0
    value = value.strip(" ")
    while True:
        m = _SF_MEMBER.match(value, pos)
        assert m, f"Cache-Status is not a Structured Field List: {value!r} at {pos}"
        params: dict[str, str | bool] = {}
        for p in _SF_PARAM_RE.finditer(m.group(2)):
            params[p.group(1)] = True if p.group(2) is None else p.group(2)
        out.append((m.group(1), params))
        pos = m.end()
        if pos == len(value):
            return out
        sep = re.compile(r"[ \t]*,[ \t]*").match(value, pos)
        assert sep and sep.end() < len(value), f"Cache-Status is not a Structured Field List: {value!r}"
        pos = sep.end()


def check_invariants(r: Reply) -> None:
    """What every answer through a caching route must satisfy, whatever the test."""
    status = r.all("Cache-Status")
    members = parse_cache_status(", ".join(status))          # RFC 9211 §2: an sf-list
    ours = [params for name, params in members if name == "edge"]
    assert len(ours) <= 1, status
    if ours and ("hit" in ours[0] or "collapsed" in ours[0]):
        # RFC 9111 §5.1: "a cache SHOULD generate an Age header field" in a response from
        # its store (§4: MUST for a stored response); one member, a non-negative integer
        ages = r.all("Age")
        assert len(ages) == 1 and ages[0].isdigit(), ages
    if ours:
        for key in ("ttl", "fwd-status"):
            if key in ours[0]:
                assert re.fullmatch(r"-?\d+", str(ours[0][key])), ours[0]      # §2.3, §2.4: Integers
        if "fwd" in ours[0]:
            assert ours[0]["fwd"] in ("bypass", "method", "uri-miss", "vary-miss", "miss", "request", "stale",
                                      "partial"), ours[0]                      # §2.2


class Env:
    def __init__(self, edge, origin: ScriptedOrigin) -> None:
        self.edge = edge
        self.origin = origin
        self.tag = uuid.uuid4().hex[:8]
        self.n = 0

    def path(self, name: str) -> str:
        """A path no other test (or parameter set) uses."""
        self.n += 1
        return f"/c/{name}-{self.tag}-{self.n}"

    def script(self, path: str, *responses: Canned) -> str:
        self.origin.script(path.split("?")[0], *responses)
        return path

    def count(self, path: str) -> int:
        return self.origin.count(path.split("?")[0])

    def seen(self, path: str):
        return self.origin.requests(path.split("?")[0])

    def req(self, path: str, headers=(), method: str = "GET", body: bytes | None = None) -> Reply:
        """One request on a new connection (either worker)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.edge.port, timeout=30)
        try:
            conn.putrequest(method, path, skip_host=any(n.lower() == "host" for n, _ in headers),
                            skip_accept_encoding=True)
            for n, v in headers:
                conn.putheader(n, v)
            if body is not None:
                conn.putheader("Content-Length", str(len(body)))
            conn.putheader("Connection", "close")
            conn.endheaders(body)
            r = conn.getresponse()
            data = r.read()
            reply = Reply(r.status, r.getheaders(), data)
            check_invariants(reply)
            return reply
        finally:
            conn.close()

    def raw(self, path: str, method: str = "GET", headers: str = "") -> bytes:
        """The exact bytes of the answer (the connection closes after it)."""
        request = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.edge.port}\r\n{headers}Connection: close\r\n\r\n"
        return send_until_close(self.edge.port, request.encode(), timeout_s=30)

    def landed(self, path: str, headers=()) -> None:
        """Wait until a fresh stored response answers ``path`` without the origin
        (only-if-cached, §5.2.1.7). A response that replaces a stored one is committed just
        after its last byte went out (no fill marker covers that moment), so the next request
        could otherwise still find the old one."""
        until(lambda: self.req(path, [*headers, ("Cache-Control", "only-if-cached")]).status == 200, timeout_s=10)

    def twice(self, path: str, *responses: Canned, headers=(), second_headers=None) -> tuple[Reply, Reply]:
        """Script ``path``, request it twice; the second request's headers default to the first's."""
        self.script(path, *responses)
        a = self.req(path, headers)
        b = self.req(path, headers if second_headers is None else second_headers)
        return a, b


def cc(*value: str, **kw) -> Canned:
    """A 200 with these Cache-Control lines (and ``headers=`` more fields)."""
    extra = list(kw.pop("headers", ()))
    return Canned(kw.pop("status", 200), [("Cache-Control", v) for v in value] + extra, **kw)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    origin = ScriptedOrigin()
    config = {
        "upstreams": {
            "origin": {
                "servers": [f"127.0.0.1:{origin.port}"],
                "retries": 0,  # every origin answer the client gets is the one the script gave
                "health": {"passive": {"consecutive_failures": 0}},
            },
        },
        "routes": [{"name": "site", "match": {"path": "/"}, "upstream": "origin"}],
        "cache": {"enabled": True, "set_cookie": "store"},   # conf/examples/cache.yaml
    }
    edge = start_edge(config, workers=2, work_dir=str(tmp_path_factory.mktemp("edge-conformance")))
    yield Env(edge, origin)
    edge.stop()
    origin.stop()


# ------------------------------------------------------------------------------ §4.2 freshness

def test_max_age_fresh_response_is_reused_with_age(env):
    p = env.path("max-age")
    a, b = env.twice(p, cc("max-age=3600"))
    assert a.text == f"{p} 1\n"
    assert b.text == a.text and env.count(p) == 1            # §4.2: fresh, reused
    assert b.hit and b.h("Age") is not None and int(b.h("Age")) >= 0   # §5.1: "MUST generate an Age header field"


@pytest.mark.parametrize("value,reused", [
    ("max-age=0, s-maxage=3600", True),      # §4.2.1: a shared cache uses s-maxage first
    ("s-maxage=3600", True),
    ("max-age=3600, s-maxage=0", False),
    ("s-maxage=0, max-age=3600", False),
])
def test_s_maxage_takes_precedence_over_max_age(env, value, reused):
    p = env.path("s-maxage")
    a, b = env.twice(p, cc(value))
    assert (env.count(p) == 1) is reused and (b.text == a.text) is reused


@pytest.mark.parametrize("expires,reused", [
    (3600, True),     # §4.2.1: Expires minus Date
    (-3600, False),
    (0, False),       # Expires == Date: freshness lifetime 0
    ("0", False),     # §5.3: invalid ("especially the value 0") means already expired
    ("garbage", False),
    ("Thu, 01 Jan 1970 00:00:00 GMT", False),
])
def test_expires(env, expires, reused):
    p = env.path("expires")
    date = hd()
    value = expires if isinstance(expires, str) else email.utils.formatdate(
        email.utils.parsedate_to_datetime(date).timestamp() + expires, usegmt=True)
    a, b = env.twice(p, Canned(headers=[("Date", date), ("Expires", value)]))
    assert (env.count(p) == 1) is reused and (b.text == a.text) is reused


def test_dates_are_matched_case_insensitively(env):
    # §4.2: "Although all date formats are specified to be case-sensitive, a cache recipient
    # SHOULD match the field value case-insensitively."
    p = env.path("expires-case")
    env.twice(p, Canned(headers=[("Expires", hd(3600).upper().replace("GMT", "gmt"))]))
    assert env.count(p) == 1


def test_invalid_expires_blocks_heuristics(env):
    # §4.2.2: "A cache MUST NOT use heuristics to determine freshness when an explicit
    # expiration time is present"; §5.3: an invalid Expires is a time in the past
    p = env.path("expires-invalid-lm")
    env.twice(p, Canned(headers=[("Expires", "0"), ("Last-Modified", hd(-30 * 86400))]))
    assert env.count(p) == 2


def test_max_age_overrides_expires(env):
    # §5.3: "If a response includes a Cache-Control header field with the max-age directive,
    # a recipient MUST ignore the Expires header field"
    p = env.path("max-age-over-expires")
    env.twice(p, cc("max-age=3600", headers=[("Expires", hd(-3600))]))
    assert env.count(p) == 1
    q = env.path("max-age0-over-expires")
    env.twice(q, cc("max-age=0", headers=[("Expires", hd(3600))]))
    assert env.count(q) == 2
    r = env.path("s-maxage-over-expires")
    env.twice(r, cc("s-maxage=3600", headers=[("Expires", hd(-3600))]))
    assert env.count(r) == 1


def test_response_pragma_has_no_meaning(env):
    # §5.4: "the meaning of "Pragma: no-cache" in responses was never specified"; Cache-Control governs
    p = env.path("pragma-response")
    env.twice(p, cc("max-age=3600", headers=[("Pragma", "no-cache")]))
    assert env.count(p) == 1


def test_no_date_uses_the_receipt_time(env):
    # §4.2.1 Expires "minus the value of the Date response header field (using the time the
    # message was received if it is not present)"; RFC 9110 §6.6.1
    p = env.path("nodate-max-age")
    env.twice(p, cc("max-age=3600", date=False))
    assert env.count(p) == 1
    q = env.path("nodate-expires")
    a, b = env.twice(q, Canned(headers=[("Expires", hd(3600))], date=False))
    assert env.count(q) == 1
    # RFC 9110 §6.6.1: "A recipient with a clock that receives a response message without a Date
    # header field MUST record the time it was received and append a corresponding Date header
    # field to the message's header section if it is cached or forwarded downstream"
    assert a.h("Date") is not None and b.h("Date") == a.h("Date")
    r = env.path("nodate-uncached")
    a, b = env.twice(r, cc("no-store", date=False))
    assert a.h("Date") is not None and b.h("Date") is not None


def test_invalid_date_is_replaced_by_the_receipt_time(env):
    # RFC 9110 §6.6.1: "A recipient with a clock that receives a response with an invalid
    # Date header field value MAY replace that value with the time that response was received"
    p = env.path("baddate")
    env.twice(p, cc("max-age=3600", headers=[("Date", "yesterday")], date=False))
    assert env.count(p) == 1


def test_stored_date_is_not_changed(env):
    # §3.1/§4: the stored header fields are sent as stored; Date is the origin's
    p = env.path("date-kept")
    date = hd(-5)
    a, b = env.twice(p, cc("max-age=3600", headers=[("Date", date)], date=False))
    assert b.hit and b.h("Date") == date


@pytest.mark.parametrize("fields,reused", [
    ([("Date", "-30")], False),                     # §4.2.3 apparent_age = response_time - Date = 30 > 20
    ([("Age", "30")], False),                       # corrected_age_value = Age + response_delay = 30 > 20
    ([("Age", "10")], True),
    ([("Age", "abc")], True),                       # §5.1: an invalid Age is ignored
    ([("Age", "30, 0")], False),                    # §5.1: "use the first member of the field value"
    ([("Age", "30"), ("Age", "0")], False),
    ([("Age", "-5")], True),                        # not a non-negative integer: ignored
])
def test_age_and_date_from_the_origin_are_added_in(env, fields, reused):
    p = env.path("age-in")
    fields = [(n, hd(-30) if v == "-30" else v) for n, v in fields]
    date = [] if any(n == "Date" for n, _ in fields) else [("Date", hd())]
    a, b = env.twice(p, cc("max-age=20", headers=fields + date, date=False))
    assert (env.count(p) == 1) is reused


def test_age_from_the_origin_is_carried_and_grows(env):
    # §4.2.3 corrected_initial_age includes the received Age; §5.1 the Age sent is current_age
    p = env.path("age-grows")
    a, b = env.twice(p, cc("max-age=3600", headers=[("Age", "100")]))
    assert b.hit and 100 <= int(b.h("Age")) < 200
    q = env.path("age-grows-local")
    a, b = env.twice(q, cc("max-age=3600"))
    first = int(b.h("Age"))
    until(lambda: int(env.req(q).h("Age")) > first, timeout_s=10, interval_s=0.25)
    assert env.count(q) == 1


@pytest.mark.parametrize("lines,reused", [
    (["max-age=0"], False),
    (["max-age=0, max-age=3600"], False),           # §4.2.1: the first occurrence, or stale
    (["max-age=0", "max-age=3600"], False),
    (["max-age=3600, max-age=3600"], True),         # repeated, not conflicting
    (['max-age="3600"'], True),                     # §5.2: "recipients ought to accept both forms"
    (["MAX-AGE=3600"], True),                       # §5.2: directive names are case-insensitive
    (["  max-age=3600 ,  public  "], True),         # RFC 9110 §5.6.1 list whitespace
    (["foo=\"a, max-age=0\", max-age=3600"], True),  # a quoted comma does not split
    (["unknown-ext, max-age=3600"], True),          # §5.2.3: unrecognised directives are ignored
    (['ext="max-age=3600", max-age=0'], False),     # a directive inside a quoted string is not one
    (['max-age=0, ext="max-age=3600"'], False),
    (["max-age=003600"], True),                     # §1.2.2 delta-seconds = 1*DIGIT
    (["max-age='3600'"], False),                    # not a token or quoted-string: invalid
    (["max-age =3600"], False),                     # §5.2: token [ "=" ... ]: no whitespace around "="
    (["max-age= 3600"], False),
    (["max-age=3600a"], False),
    (['ext="max-age=3600", max-age="0"'], False),
    (["max-age=2147483648"], True),
    (["s-maxage=3600", "max-age=0"], True),         # §4.2.1 s-maxage first, across lines
    (["max-age=3600", "s-maxage=0"], False),
    (["max-age=abc"], False),                       # §4.2.1: invalid freshness information: stale
    (["max-age=-1"], False),
    (["max-age=99999999999999999999"], True),        # §1.2.2: 2^31
])
def test_cache_control_parsing(env, lines, reused):
    p = env.path("ccparse")
    a, b = env.twice(p, cc(*lines))
    assert (env.count(p) == 1) is reused and (b.text == a.text) is reused


# ------------------------------------------------------------------------------ §4.2.2 heuristics, §3 status codes

HEURISTIC = [200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501]   # RFC 9110 §15.1
NOT_BY_DEFAULT = [201, 202, 302, 303, 307, 400, 403, 500, 502, 503, 504, 599]


@pytest.mark.parametrize("status", HEURISTIC)
def test_heuristically_cacheable_statuses(env, status):
    p = env.path(f"heur-{status}")
    # §4.2.2: a fraction of the time since Last-Modified, for heuristically cacheable statuses
    a, b = env.twice(p, Canned(status, [("Last-Modified", hd(-30 * 86400))]))
    assert b.status == status and env.count(p) == 1
    if status != 204:
        assert b.body == a.body
    q = env.path(f"explicit-{status}")
    a, b = env.twice(q, cc("max-age=3600", status=status))
    assert b.status == status and env.count(q) == 1


@pytest.mark.parametrize("status", NOT_BY_DEFAULT)
def test_statuses_not_cacheable_by_default(env, status):
    # §3 / §4.2.2: without explicit freshness, no heuristic for these statuses
    p = env.path(f"noheur-{status}")
    env.twice(p, Canned(status, [("Last-Modified", hd(-30 * 86400))]))
    assert env.count(p) == 2


@pytest.mark.parametrize("status", [201, 302, 307, 403])
def test_explicit_freshness_makes_other_statuses_cacheable(env, status):
    # §3: "the response contains at least one of ... a max-age response directive"
    p = env.path(f"explicit-other-{status}")
    a, b = env.twice(p, cc("max-age=3600", status=status, headers=[("Location", "/elsewhere")]))
    assert b.status == status and env.count(p) == 1


@pytest.mark.parametrize("status", [200, 203, 204, 299, 301, 302, 303, 307, 308, 400, 404, 410, 499, 500, 502,
                                    503, 504, 599])
def test_explicit_freshness_for_any_final_status(env, status):
    # §3: any final status may be stored with explicit freshness (only 206/304 and
    # must-understand need the status to be understood); §4.2: a stale one is not reused
    p = env.path(f"status-fresh-{status}")
    a, b = env.twice(p, cc("max-age=3600", status=status))
    assert b.status == status and env.count(p) == 1
    q = env.path(f"status-stale-{status}")
    env.twice(q, cc("max-age=3600", status=status, headers=[("Age", "7200")]))
    assert env.count(q) == 2


def test_public_allows_heuristics_for_other_statuses(env):
    # §4.2.2: heuristics also for "responses without explicit freshness that have been marked
    # as explicitly cacheable (e.g., with a public response directive)"
    for status in (302, 599):
        p = env.path(f"heur-public-{status}")
        env.twice(p, Canned(status, [("Cache-Control", "public"), ("Location", "/x"),
                                     ("Last-Modified", hd(-30 * 86400))]))
        assert env.count(p) == 1, status


def test_heuristic_freshness_needs_last_modified_in_the_past(env):
    p = env.path("heur-no-lm")
    env.twice(p, Canned(200, []))
    assert env.count(p) == 2
    q = env.path("heur-future-lm")
    env.twice(q, Canned(200, [("Last-Modified", hd(3600))]))
    assert env.count(q) == 2


def test_heuristic_freshness_is_never_used_past_a_stated_expiry(env):
    # §4.2.2: "MUST NOT use heuristics ... when an explicit expiration time is present"
    for name, fields in (("heur-expired", [("Expires", hd(-10))]), ("heur-max-age0", [("Cache-Control", "max-age=0")])):
        p = env.path(name)
        env.twice(p, Canned(200, fields + [("Last-Modified", hd(-30 * 86400))]))
        assert env.count(p) == 2, name


def test_heuristic_age_is_shown(env):
    p = env.path("heur-age")
    a, b = env.twice(p, Canned(200, [("Last-Modified", hd(-30 * 86400))]))
    assert b.hit and b.h("Age") is not None


def test_full_answer_to_a_range_request_is_stored(env):
    # RFC 9110 §14.2: a server may ignore Range and send 200; that complete response is storable
    p = env.path("range-ignored")
    env.script(p, cc("max-age=3600", body=b"0123456789"))
    a = env.req(p, [("Range", "bytes=0-4")])
    assert a.status == 200 and a.body == b"0123456789"
    env.landed(p)
    r = env.req(p, [("Range", "bytes=2-3")])
    assert r.status == 206 and r.body == b"23" and env.count(p) == 1


def test_partial_content_is_not_served_as_the_full_response(env):
    # §3.3: a cache "MUST NOT" serve an incomplete response as complete; a 206 is partial
    p = env.path("partial-206")
    env.script(p, Canned(206, [("Cache-Control", "max-age=3600"), ("Content-Range", "bytes 0-4/10")], b"01234"),
               cc("max-age=3600", body=b"0123456789"))
    first = env.req(p, [("Range", "bytes=0-4")])
    assert first.status == 206
    full = env.req(p)
    assert full.status == 200 and full.body == b"0123456789" and env.count(p) == 2


# ------------------------------------------------------------------------------ §3, §5.2.2 storing

@pytest.mark.parametrize("lines", [["no-store"], ["no-store, max-age=3600"], ["max-age=3600", "no-store"],
                                   ["private"], ["private, max-age=3600"], ["max-age=3600, PRIVATE"]])
def test_no_store_and_private_are_not_stored(env, lines):
    # §5.2.2.5 no-store: "MUST NOT store any part"; §5.2.2.7 private: "a shared cache MUST NOT store"
    p = env.path("nostore")
    a, b = env.twice(p, cc(*lines))
    assert env.count(p) == 2 and b.text == f"{p} 2\n"


@pytest.mark.parametrize("status,stored", [(200, True), (404, True), (299, False)])
def test_must_understand(env, status, stored):
    # §5.2.2.3: with must-understand a cache stores only a status code it understands, and
    # "SHOULD ignore the no-store directive" when it does
    p = env.path(f"must-understand-{status}")
    env.twice(p, cc("must-understand, no-store, max-age=3600", status=status))
    assert (env.count(p) == 1) is stored


def test_private_with_field_names_stores_without_them(env):
    # §5.2.2.7: qualified private: "a shared cache MUST NOT store the specified field name(s)",
    # the rest of the response may be stored and reused
    p = env.path("private-fields")
    a, b = env.twice(p, cc('private="X-Secret", max-age=3600', headers=[("X-Secret", "s"), ("X-Other", "o")]))
    assert a.h("X-Secret") == "s"
    assert b.hit and env.count(p) == 1 and b.h("X-Secret") is None and b.h("X-Other") == "o"


@pytest.mark.parametrize("lines,omitted", [
    (['no-cache="X-Fresh", max-age=3600'], ["X-Fresh"]),
    (['no-cache="X-Fresh"', "max-age=3600"], ["X-Fresh"]),        # two Cache-Control lines are one list
    (['no-cache="X-Fresh, X-Also"', "max-age=3600"], ["X-Fresh", "X-Also"]),
])
def test_no_cache_with_field_names_is_not_sent_from_the_cache(env, lines, omitted):
    # §5.2.2.4: qualified no-cache: the cache may reuse the response, but "the specified field
    # name(s) MUST NOT be sent in the response to a subsequent request without successful
    # revalidation"
    p = env.path("nocache-fields")
    a, b = env.twice(p, cc(*lines, headers=[("X-Fresh", "f"), ("X-Also", "a"), ("X-Other", "o")]))
    assert a.h("X-Fresh") == "f"
    assert b.hit and env.count(p) == 1 and b.h("X-Other") == "o"
    for name in omitted:
        assert b.h(name) is None, name


def test_no_cache_response_is_always_revalidated(env):
    # §5.2.2.4: "MUST NOT be used to satisfy any other request without forwarding it for validation"
    p = env.path("nocache")
    env.script(p, cc("no-cache, max-age=3600", headers=[("ETag", '"v1"')]),
               Canned(304, [("Cache-Control", "no-cache, max-age=3600"), ("ETag", '"v1"')]))
    a = env.req(p)
    b = env.req(p)
    c = env.req(p)
    assert env.count(p) == 3 and a.text == b.text == c.text == f"{p} 1\n"
    assert env.seen(p)[1].header("If-None-Match") == '"v1"'


def test_no_cache_without_validator_goes_to_the_origin(env):
    p = env.path("nocache-novalidator")
    a, b = env.twice(p, cc("no-cache"))
    assert env.count(p) == 2 and b.text == f"{p} 2\n"


AUTH = [("Authorization", "Basic dTpw")]


@pytest.mark.parametrize("value,stored", [
    ("max-age=3600", False),                       # §3.5: not without an explicit permission
    ("", False),                                   # (Expires below)
    ("public, max-age=3600", True),
    ("s-maxage=3600", True),
    ("must-revalidate, max-age=3600", True),
])
def test_authorization(env, value, stored):
    p = env.path("auth")
    env.script(p, cc(value) if value else Canned(headers=[("Expires", hd(30 * 86400))]))
    a = env.req(p, AUTH)
    assert env.seen(p)[0].header("Authorization") == AUTH[0][1]   # the credentials go to the origin
    if stored:
        # a request with credentials does not lead a coalesced fill (nothing for others to wait
        # on), so its object lands just after its answer: wait for it without the origin
        env.landed(p)
    b = env.req(p, AUTH)
    assert (env.count(p) == 1) is stored and (b.body == a.body) is stored
    c = env.req(p)  # without credentials: stored only when allowed
    assert (c.text == a.text) is stored


def test_authorization_request_is_not_answered_from_a_response_stored_without_permission(env):
    # §3.5: "A shared cache MUST NOT use a cached response to a request with an Authorization
    # header field ... unless" public, must-revalidate or s-maxage
    p = env.path("auth-reuse")
    env.twice(p, cc("max-age=3600"), second_headers=AUTH)
    assert env.count(p) == 2
    q = env.path("auth-reuse-public")
    env.twice(q, cc("public, max-age=3600"), second_headers=AUTH)
    assert env.count(q) == 1


def test_set_cookie_is_stored_per_the_route_setting(env):
    # set_cookie: store (conf/examples/cache.yaml): RFC 9111 lets a shared cache store it
    p = env.path("cookie")
    a, b = env.twice(p, cc("max-age=3600", headers=[("Set-Cookie", "a=b")]))
    assert env.count(p) == 1 and b.h("Set-Cookie") == "a=b"


def test_incomplete_response_is_not_stored(env):
    # §3.3: "A cache MUST NOT use an incomplete response to answer requests unless the response
    # has been made complete or the request is partial"
    p = env.path("truncated")
    env.script(p, cc("max-age=3600", headers=[("Content-Length", "100")], body=b"x" * 50, cut=True),
               cc("max-age=3600", body=b"y" * 100))
    try:
        env.req(p)
    except (http.client.IncompleteRead, ConnectionError):
        pass   # the client sees the cut too
    r = env.req(p)
    assert r.status == 200 and r.body == b"y" * 100 and env.count(p) == 2


def test_chunked_response_is_stored_and_served_with_valid_framing(env):
    # §3.1: Transfer-Encoding is hop-by-hop: stored bodies are served with their own framing
    p = env.path("chunked")
    env.script(p, cc("max-age=3600", headers=[("Transfer-Encoding", "chunked")],
                     body=b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"))
    a = env.req(p)
    b = env.req(p)
    assert a.body == b.body == b"hello world" and b.hit
    raw = env.raw(p)
    head, _, body = raw.partition(b"\r\n\r\n")
    lower = head.lower()
    assert (b"content-length: 11" in lower) != (b"transfer-encoding: chunked" in lower)
    assert body == b"hello world" or body.startswith(b"b\r\nhello world")


def test_hop_by_hop_and_connection_listed_fields_are_not_stored(env):
    # §3.1: "the Connection header field and header fields listed by it ... MUST NOT be stored"
    # (hop-by-hop, RFC 9110 §7.6.1); Proxy-Authenticate etc. too
    p = env.path("hop")
    a, b = env.twice(p, cc("max-age=3600", headers=[
        ("Connection", "X-Hop, X-Hop2"), ("X-Hop", "1"), ("X-Hop2", "2"), ("Keep-Alive", "timeout=5"),
        ("Proxy-Authenticate", "Basic"), ("Proxy-Authentication-Info", "x"), ("Proxy-Connection", "keep-alive"),
        ("TE", "trailers"), ("X-Kept", "k")]))
    assert env.count(p) == 1
    for r in (a, b):
        assert r.h("X-Hop") is None and r.h("X-Hop2") is None and r.h("Keep-Alive") is None
    for name in ("Proxy-Authenticate", "Proxy-Authentication-Info", "Proxy-Connection", "TE"):
        assert b.h(name) is None, name
    assert b.h("X-Kept") == "k"


def test_304_does_not_bring_hop_by_hop_fields_into_the_store(env):
    # §3.2: the update excepts "Header fields excepted from storage in Section 3.1"
    p = env.path("reval-hop")
    env.script(p, stale_on_arrival(), Canned(304, [
        ("Cache-Control", "max-age=3600"), ("ETag", '"s1"'), ("Connection", "X-Hop"), ("X-Hop", "1"),
        ("Keep-Alive", "timeout=5"), ("Proxy-Authenticate", "Basic"), ("X-New", "n")]))
    env.req(p)
    env.req(p)
    c = env.req(p)
    assert c.hit and c.h("X-New") == "n"
    for name in ("X-Hop", "Keep-Alive", "Proxy-Authenticate"):
        assert c.h(name) is None, name


def test_unknown_fields_are_stored(env):
    # §3.1: "Caches MUST include all received response header fields — including unrecognized ones"
    p = env.path("unknown-fields")
    a, b = env.twice(p, cc("max-age=3600", headers=[("X-Thing", "1"), ("X-Thing", "2"), ("Content-Foo", "bar")]))
    assert b.hit and b.all("X-Thing") in (["1", "2"], ["1, 2"])
    assert b.h("Content-Foo") == "bar"


# ------------------------------------------------------------------------------ must-revalidate, stale serving

def stale_on_arrival(*directives: str, headers=()) -> Canned:
    """A response that is already 10 s past its freshness when it arrives (§4.2.3 Age)."""
    return cc(", ".join(("max-age=5",) + directives), headers=[("Age", "15"), ("ETag", '"s1"'), *headers])


@pytest.mark.parametrize("directive", ["must-revalidate", "proxy-revalidate", "s-maxage=5", "no-cache"])
def test_must_revalidate_never_serves_stale(env, directive):
    # §5.2.2.2: "MUST NOT reuse a stored response without successful validation ... if a cache
    # is disconnected, the cache MUST generate an error message rather than reuse the stale
    # response"; §5.2.2.8, §5.2.2.10 extend it to proxy-revalidate and s-maxage in a shared cache
    p = env.path("mustreval")
    env.script(p, stale_on_arrival(directive, "stale-if-error=600", "stale-while-revalidate=600"),
               Canned(close=True))
    a = env.req(p)
    assert a.status == 200
    b = env.req(p, [("Cache-Control", "max-stale=600")])
    assert b.body != a.body
    # §5.2.2.2 "SHOULD be 504 (Gateway Timeout)"; §5.2.2.4 names no status for no-cache
    assert b.status == 504 if directive != "no-cache" else b.status >= 500
    c = env.req(p, [("Cache-Control", "only-if-cached")])
    assert c.status == 504


def test_stale_if_error(env):
    # RFC 5861 §4: "when an error is encountered, a cached stale response MAY be used"
    p = env.path("sie")
    env.script(p, stale_on_arrival("stale-if-error=600"), Canned(503, [], b"down\n"))
    a = env.req(p)
    b = env.req(p)
    assert b.status == 200 and b.body == a.body and env.count(p) == 2
    q = env.path("sie-down")
    env.script(q, stale_on_arrival("stale-if-error=600"), Canned(close=True))
    a = env.req(q)
    b = env.req(q)
    assert b.status == 200 and b.body == a.body


@pytest.mark.parametrize("directives", [(), ("stale-if-error=5",)])
def test_without_stale_if_error_the_error_is_passed_on(env, directives):
    # no permission, or a stale-if-error window already passed (10 s stale > 5)
    p = env.path("no-sie")
    env.script(p, stale_on_arrival(*directives), Canned(503, [], b"down\n"))
    env.req(p)
    b = env.req(p)
    assert b.status == 503 and b.body == b"down\n"


def test_request_stale_if_error(env):
    # RFC 5861 §4: stale-if-error in a request ("the client is willing to accept a stale response")
    p = env.path("sie-request")
    env.script(p, stale_on_arrival(), Canned(500, [], b"boom\n"))
    a = env.req(p)
    b = env.req(p, [("Cache-Control", "stale-if-error=600")])
    assert b.status == 200 and b.body == a.body
    c = env.req(p, [("Cache-Control", "stale-if-error=2")])   # stale for 10 s: past the client's bound
    assert c.status == 500 and c.body == b"boom\n"


@pytest.mark.parametrize("validator", [[("ETag", '"abc"')], []])
def test_stale_while_revalidate_with_max_age_0(env, validator):
    # RFC 5861 §3 with a response that is stale on arrival; the background refresh replaces it
    p = env.path("swr0")
    env.script(p, cc("max-age=0, stale-while-revalidate=3600", headers=validator),
               cc("max-age=3600", headers=[("ETag", '"def"')]))
    a = env.req(p)
    b = env.req(p)
    assert b.body == a.body and b.h("Cache-Control") == "max-age=0, stale-while-revalidate=3600"
    until(lambda: env.count(p) == 2, timeout_s=10)
    # the refreshed object lands just after the background fetch ends (meanwhile the stale one is served)
    until(lambda: env.req(p).h("ETag") == '"def"', timeout_s=10)
    c = env.req(p)
    assert c.hit and c.h("ETag") == '"def"' and c.h("Cache-Control") == "max-age=3600" and env.count(p) == 2


def test_stale_while_revalidate(env):
    # RFC 5861 §3: serve stale "up to the indicated number of seconds" while revalidating
    # asynchronously
    p = env.path("swr")
    env.script(p, stale_on_arrival("stale-while-revalidate=600"), cc("max-age=3600"))
    a = env.req(p)
    b = env.req(p)
    assert b.status == 200 and b.body == a.body and b.h("Age") is not None
    until(lambda: env.count(p) == 2, timeout_s=10)
    # the refreshed object lands just after the background fetch ends; requests in between get
    # the stale one and must not start a second refresh (RFC 5861 §3 "asynchronously", once)
    until(lambda: env.req(p).text == f"{p} 2\n", timeout_s=10)
    assert env.count(p) == 2


# ------------------------------------------------------------------------------ §5.2.1 request directives

def test_request_max_age(env):
    # §5.2.1.1: "the client prefers a response whose age is less than or equal to" N
    p = env.path("req-max-age")
    env.script(p, cc("max-age=3600", headers=[("Age", "100")]))
    env.req(p)
    assert env.req(p, [("Cache-Control", "max-age=1000")]).hit
    assert env.count(p) == 1
    env.req(p, [("Cache-Control", "max-age=10")])
    assert env.count(p) == 2
    env.req(p, [("Cache-Control", "max-age=0")])
    assert env.count(p) == 3


def test_request_max_stale(env):
    # §5.2.1.2: "the client will accept a response that has exceeded its freshness lifetime"
    p = env.path("req-max-stale")
    env.script(p, stale_on_arrival(), cc("max-age=3600"))
    a = env.req(p)
    b = env.req(p, [("Cache-Control", "max-stale")])
    assert b.body == a.body and env.count(p) == 1
    c = env.req(p, [("Cache-Control", "max-stale=600")])
    assert c.body == a.body and env.count(p) == 1
    d = env.req(p, [("Cache-Control", "max-stale=2")])   # 10 s stale > 2
    assert env.count(p) == 2 and d.text == f"{p} 2\n"


def test_request_min_fresh(env):
    # §5.2.1.3: "freshness lifetime is no less than its current age plus the specified time"
    p = env.path("req-min-fresh")
    env.script(p, cc("max-age=3600"))
    env.req(p)
    assert env.req(p, [("Cache-Control", "min-fresh=60")]).hit and env.count(p) == 1
    env.req(p, [("Cache-Control", "min-fresh=7200")])
    assert env.count(p) == 2


def test_request_no_cache(env):
    # §5.2.1.4: not used "without successful validation on the origin server"
    p = env.path("req-no-cache")
    a, b = env.twice(p, cc("max-age=3600"), second_headers=[("Cache-Control", "no-cache")])
    assert env.count(p) == 2


def test_request_no_store(env):
    # §5.2.1.5: "a cache MUST NOT store any part of either this request or any response to it"
    p = env.path("req-no-store")
    env.twice(p, cc("max-age=3600"), headers=[("Cache-Control", "no-store")], second_headers=[])
    assert env.count(p) == 2


def test_only_if_cached(env):
    # §5.2.1.7: "respond using a stored response ... or respond with a 504 (Gateway Timeout)"
    p = env.path("oic-miss")
    env.script(p, cc("max-age=3600"))
    r = env.req(p, [("Cache-Control", "only-if-cached")])
    assert r.status == 504 and env.count(p) == 0
    env.req(p)
    r = env.req(p, [("Cache-Control", "only-if-cached")])
    assert r.status == 200 and env.count(p) == 1
    q = env.path("oic-stale")
    env.script(q, stale_on_arrival())
    env.req(q)
    assert env.req(q, [("Cache-Control", "only-if-cached")]).status == 504 and env.count(q) == 1


def test_pragma_no_cache_only_without_cache_control(env):
    # §5.4 (RFC 7234 §5.4): Pragma: no-cache acts as no-cache only when Cache-Control is absent
    p = env.path("pragma")
    env.twice(p, cc("max-age=3600"), second_headers=[("Pragma", "no-cache")])
    assert env.count(p) == 2
    q = env.path("pragma-with-cc")
    env.twice(q, cc("max-age=3600"), second_headers=[("Pragma", "no-cache"), ("Cache-Control", "max-age=3600")])
    assert env.count(q) == 1


# ------------------------------------------------------------------------------ §4.1 Vary

def test_vary_one_field(env):
    p = env.path("vary1")
    env.script(p, cc("max-age=3600", headers=[("Vary", "X-Lang")]))
    a = env.req(p, [("X-Lang", "en")])
    assert env.req(p, [("X-Lang", "en")]).body == a.body and env.count(p) == 1
    assert env.req(p, [("x-lang", "en")]).body == a.body and env.count(p) == 1   # field names are case-insensitive
    b = env.req(p, [("X-Lang", "fr")])
    assert b.body != a.body and env.count(p) == 2
    assert env.req(p, [("X-Lang", "EN")]).body != a.body   # values of an unknown field: as sent
    assert env.req(p).body not in (a.body, b.body)          # absent matches only absent


def test_vary_two_fields(env):
    p = env.path("vary2")
    env.script(p, cc("max-age=3600", headers=[("Vary", "X-A, X-B")]))
    a = env.req(p, [("X-A", "1"), ("X-B", "1")])
    assert env.req(p, [("X-A", "1"), ("X-B", "1")]).body == a.body
    assert env.req(p, [("X-A", "1"), ("X-B", "2")]).body != a.body
    assert env.req(p, [("X-A", "1")]).body != a.body
    assert env.count(p) == 3


def test_vary_two_lines(env):
    p = env.path("vary2lines")
    env.script(p, cc("max-age=3600", headers=[("Vary", "X-A"), ("Vary", "X-B")]))
    a = env.req(p, [("X-A", "1"), ("X-B", "1")])
    assert env.req(p, [("X-A", "1"), ("X-B", "2")]).body != a.body
    assert env.count(p) == 2


@pytest.mark.parametrize("lines", [["*"], ["X-A, *"], ["*, X-A"], ["*, *"], ["*", "*"], [", *"], ["", "*"],
                                   ["X-A", "*"]])
def test_vary_star_never_matches(env, lines):
    # §4.1: "A stored response with a Vary header field value containing a member '*' always fails to match"
    p = env.path("varystar")
    env.twice(p, cc("max-age=3600", headers=[("Vary", v) for v in lines]), headers=[("X-A", "1")])
    assert env.count(p) == 2


def test_vary_normalises_whitespace_and_lines(env):
    # §4.1: match after "adding or removing whitespace" and "combining multiple header field lines"
    p = env.path("varyws")
    env.script(p, cc("max-age=3600", headers=[("Vary", "X-List")]))
    a = env.req(p, [("X-List", "a, b")])
    assert env.req(p, [("X-List", "a,b")]).body == a.body
    assert env.req(p, [("X-List", "a"), ("X-List", "b")]).body == a.body
    assert env.count(p) == 1


def test_vary_absent_differs_from_empty(env):
    # §4.1: "If ... a header field is absent from a request, it can only match another request
    # if it is also absent there."
    p = env.path("varyempty")
    env.script(p, cc("max-age=3600", headers=[("Vary", "X-E")]))
    a = env.req(p)
    b = env.req(p, [("X-E", "")])
    assert b.body != a.body and env.count(p) == 2
    assert env.req(p).body == a.body and env.req(p, [("X-E", "")]).body == b.body and env.count(p) == 2


def test_vary_variants_coexist(env):
    p = env.path("varyboth")
    env.script(p, cc("max-age=3600", headers=[("Vary", "X-V")]))
    bodies = {v: env.req(p, [("X-V", v)]).body for v in ("1", "2", "3")}
    for v, body in bodies.items():
        assert env.req(p, [("X-V", v)]).body == body
    assert env.count(p) == 3


# ------------------------------------------------------------------------------ §4.3 validation

def test_revalidation_with_etag_updates_stored_fields(env):
    # §4.3.1: "MUST send the relevant entity tags"; §4.3.4: the 304 updates the stored response
    p = env.path("reval-etag")
    env.script(p, stale_on_arrival(headers=[("X-Version", "A"), ("Content-Type", "text/plain")]),
               Canned(304, [("Cache-Control", "max-age=3600"), ("ETag", '"s1"'), ("X-Version", "B"),
                            ("Content-Type", "text/plain;charset=utf-8")]))
    a = env.req(p)
    b = env.req(p)
    assert env.seen(p)[1].header("If-None-Match") == '"s1"'
    assert b.status == 200 and b.body == a.body and b.h("X-Version") == "B"   # the response returned
    c = env.req(p)
    assert c.hit and c.body == a.body and c.h("X-Version") == "B"             # and the stored one
    assert c.h("Content-Type") == "text/plain;charset=utf-8"
    assert env.count(p) == 2


def test_revalidation_with_last_modified(env):
    # §4.3.1: "SHOULD send the Last-Modified value (using If-Modified-Since)"
    p = env.path("reval-lm")
    lm = hd(-86400)
    env.script(p, cc("max-age=5", headers=[("Age", "15"), ("Last-Modified", lm), ("X-Version", "A")]),
               Canned(304, [("Cache-Control", "max-age=3600"), ("Last-Modified", lm), ("X-Version", "B")]))
    a = env.req(p)
    b = env.req(p)
    assert env.seen(p)[1].header("If-Modified-Since") == lm
    assert b.body == a.body and b.h("X-Version") == "B"
    c = env.req(p)
    assert c.hit and c.h("X-Version") == "B" and env.count(p) == 2


def test_weak_etag_is_sent_for_validation(env):
    p = env.path("reval-weak")
    env.script(p, cc("max-age=5", headers=[("Age", "15"), ("ETag", 'W/"w1"')]),
               Canned(304, [("Cache-Control", "max-age=3600"), ("ETag", 'W/"w1"')]))
    a = env.req(p)
    b = env.req(p)
    assert env.seen(p)[1].header("If-None-Match") == 'W/"w1"' and b.body == a.body
    assert env.req(p).hit


def test_304_does_not_update_content_length(env):
    # §3.2: the cache updates stored fields "with the exception of ... Content-Length"
    p = env.path("reval-cl")
    env.script(p, stale_on_arrival(), Canned(304, [("Cache-Control", "max-age=3600"), ("ETag", '"s1"'),
                                                 ("Content-Length", "3")]))
    a = env.req(p)
    b = env.req(p)
    c = env.req(p)
    for r in (b, c):
        assert r.body == a.body and r.h("Content-Length") == str(len(a.body))


def test_304_keeps_fields_it_omits(env):
    # §3.2: fields the 304 does not carry keep their stored value
    p = env.path("reval-keep")
    env.script(p, stale_on_arrival(headers=[("X-Stored", "yes")]),
               Canned(304, [("Cache-Control", "max-age=3600"), ("ETag", '"s1"')]))
    env.req(p)
    b = env.req(p)
    c = env.req(p)
    assert b.h("X-Stored") == "yes" and c.h("X-Stored") == "yes" and c.hit


def test_304_for_another_strong_validator_updates_nothing(env):
    # §4.3.4: "If none of the stored responses contain at least one of the same strong
    # validators, then the cache MUST NOT use the new response to update any stored responses";
    # the stored response was not validated, so it cannot be served either (§4.2.4)
    p = env.path("reval-mismatch")
    env.script(p, stale_on_arrival(headers=[("X-Version", "A")]),
               Canned(304, [("Cache-Control", "max-age=3600"), ("ETag", '"other"'), ("X-Version", "B")]),
               cc("max-age=3600", headers=[("ETag", '"s2"'), ("X-Version", "C")]))
    env.req(p)
    b = env.req(p)
    assert b.status == 200 and b.h("X-Version") == "C" and b.text == f"{p} 3\n"
    assert env.seen(p)[2].header("If-None-Match") is None   # the new request is unconditional
    env.landed(p)
    c = env.req(p)
    assert c.hit and c.h("X-Version") == "C" and c.text == f"{p} 3\n"


def test_304_with_a_weak_or_last_modified_match_updates(env):
    # §4.3.4: weak validators (and Last-Modified) select the most recent matching response
    p = env.path("reval-weakmatch")
    lm = hd(-86400)
    env.script(p, stale_on_arrival(headers=[("Last-Modified", lm), ("X-Version", "A")]),
               Canned(304, [("Cache-Control", "max-age=3600"), ("ETag", 'W/"s1"'), ("X-Version", "B")]))
    env.req(p)
    b = env.req(p)
    assert b.h("X-Version") == "B" and env.req(p).hit and env.count(p) == 2


def test_200_answer_to_a_revalidation_replaces_the_stored_response(env):
    p = env.path("reval-200")
    env.script(p, stale_on_arrival(), cc("max-age=3600", headers=[("ETag", '"s2"')]))
    env.req(p)
    b = env.req(p)
    assert b.text == f"{p} 2\n"
    env.landed(p)
    c = env.req(p)
    assert c.hit and c.text == f"{p} 2\n" and c.h("ETag") == '"s2"'


# ------------------------------------------------------------------------------ RFC 9110 §13 conditional requests from the cache

def test_client_if_none_match_is_answered_from_the_cache(env):
    p = env.path("cond-inm")
    env.script(p, cc("max-age=3600", headers=[("ETag", '"abc"'), ("Last-Modified", hd(-86400))]))
    env.req(p)
    for inm in ('"abc"', 'W/"abc"', '"x", "abc"', "*"):
        r = env.req(p, [("If-None-Match", inm)])
        # RFC 9110 §13.1.2: weak comparison; §15.4.5: a 304 has the ETag a 200 would have
        assert r.status == 304 and r.body == b"" and r.h("ETag") == '"abc"', inm
        assert r.h("Cache-Control") == "max-age=3600" and r.h("Date") is not None
    assert env.req(p, [("If-None-Match", '"other"')]).status == 200
    # §13.2.2: If-None-Match takes precedence over If-Modified-Since
    assert env.req(p, [("If-None-Match", '"other"'), ("If-Modified-Since", hd())]).status == 200
    assert env.req(p, [("If-None-Match", '"abc"'), ("If-Modified-Since", hd(-10 * 86400))]).status == 304
    assert env.count(p) == 1


def test_client_conditional_on_a_stale_response_is_answered_after_validation(env):
    # RFC 9111 §4.3.2: the cache validates with its own validators, then evaluates the
    # client's conditions against the (updated) stored response
    p = env.path("cond-stale")
    env.script(p, stale_on_arrival(), Canned(304, [("Cache-Control", "max-age=3600"), ("ETag", '"s1"')]))
    env.req(p)
    r = env.req(p, [("If-None-Match", '"s1"')])
    assert r.status == 304 and r.h("ETag") == '"s1"' and env.count(p) == 2
    assert env.seen(p)[1].header("If-None-Match") == '"s1"'


def test_client_conditional_miss_is_forwarded(env):
    # nothing stored: the origin answers the client's own conditional; a 304 is not stored (§3)
    p = env.path("cond-miss")
    env.script(p, Canned(304, [("Cache-Control", "max-age=3600"), ("ETag", '"m"')]), cc("max-age=3600"))
    r = env.req(p, [("If-None-Match", '"m"')])
    assert r.status == 304 and env.seen(p)[0].header("If-None-Match") == '"m"'
    r = env.req(p)
    assert r.status == 200 and r.text == f"{p} 2\n"


def test_revalidation_carries_the_request_fields_vary_names(env):
    # §4.3.1: a conditional request for a stored response with Vary carries the selecting fields
    p = env.path("reval-vary")
    env.script(p, stale_on_arrival(headers=[("Vary", "X-Sel")]),
               Canned(304, [("Cache-Control", "max-age=3600"), ("ETag", '"s1"'), ("Vary", "X-Sel")]))
    a = env.req(p, [("X-Sel", "123")])
    b = env.req(p, [("X-Sel", "123")])
    seen = env.seen(p)[1]
    assert seen.header("If-None-Match") == '"s1"' and seen.header("X-Sel") == "123" and b.body == a.body


def test_origin_only_preconditions_are_forwarded(env):
    # §4.3.2: If-Match and If-Unmodified-Since "are not applicable to a cache"
    p = env.path("cond-ifmatch")
    env.script(p, cc("max-age=3600", headers=[("ETag", '"m1"')]), Canned(412, [], b""))
    env.req(p)
    r = env.req(p, [("If-Match", '"other"')])
    assert r.status == 412 and env.seen(p)[1].header("If-Match") == '"other"'


def test_client_if_modified_since_is_answered_from_the_cache(env):
    p = env.path("cond-ims")
    lm = hd(-86400)
    env.script(p, cc("max-age=3600", headers=[("Last-Modified", lm)]))
    env.req(p)
    assert env.req(p, [("If-Modified-Since", lm)]).status == 304
    assert env.req(p, [("If-Modified-Since", hd(-3600))]).status == 304   # later than Last-Modified
    assert env.req(p, [("If-Modified-Since", hd(-2 * 86400))]).status == 200
    assert env.count(p) == 1


# ------------------------------------------------------------------------------ HEAD (RFC 9110 §9.3.2, RFC 9111 §4.3.5)

def test_head_is_answered_from_a_stored_get(env):
    p = env.path("head")
    env.script(p, cc("max-age=3600", headers=[("X-V", "1")]))
    a = env.req(p)
    r = env.req(p, method="HEAD")
    assert r.status == 200 and r.body == b"" and r.h("Content-Length") == str(len(a.body)) and r.h("X-V") == "1"
    assert [s.method for s in env.seen(p)] == ["GET"]
    raw = env.raw(p, "HEAD")
    assert raw.endswith(b"\r\n\r\n")   # no body bytes after the head


def test_head_response_is_not_stored_as_a_get(env):
    p = env.path("head-miss")
    env.script(p, cc("max-age=3600"))
    env.req(p, method="HEAD")
    g = env.req(p)
    assert g.body == f"{p} 2\n".encode() and [s.method for s in env.seen(p)] == ["HEAD", "GET"]


def test_head_200_updates_the_stored_get(env):
    # §4.3.5: a HEAD 200 with matching validators and length "SHOULD update the stored response"
    p = env.path("head-update")
    env.script(p, cc("max-age=3600", headers=[("ETag", '"h1"'), ("X-V", "1")]),
               cc("max-age=3600", headers=[("ETag", '"h1"'), ("X-V", "2"), ("Content-Length", str(len(f"{p} 1\n")))]),
               cc("max-age=3600", headers=[("ETag", '"h1"'), ("X-V", "3")]))
    a = env.req(p)
    h = env.req(p, [("Cache-Control", "no-cache")], method="HEAD")
    assert h.status == 200 and h.h("X-V") == "2" and env.count(p) == 2
    g = env.req(p)
    assert g.body == a.body and g.h("X-V") == "2" and env.count(p) == 2


def test_head_200_with_another_validator_makes_the_stored_get_stale(env):
    # §4.3.5: otherwise "the cache SHOULD consider the stored response to be stale"
    p = env.path("head-stale")
    env.script(p, cc("max-age=3600", headers=[("ETag", '"h1"')]),
               cc("max-age=3600", headers=[("ETag", '"h2"')]),
               cc("max-age=3600", headers=[("ETag", '"h2"')]))
    env.req(p)
    env.req(p, [("Cache-Control", "no-cache")], method="HEAD")
    g = env.req(p)
    assert env.count(p) == 3 and g.text == f"{p} 3\n"


# ------------------------------------------------------------------------------ §4.4 invalidation

@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "FOO", "M-SEARCH"])
def test_unsafe_methods_invalidate(env, method):
    # §4.4: "A cache MUST invalidate the target URI ... when it receives a non-error status code
    # in response to an unsafe request method (including methods whose safety is unknown)"
    p = env.path(f"inval-{method}")
    env.script(p, cc("max-age=3600"))
    env.req(p)
    assert env.req(p).hit
    assert env.req(p, method=method, body=b"x").status == 200
    r = env.req(p)
    assert not r.hit and r.text == f"{p} 3\n"


def test_invalidation_covers_every_variant(env):
    # §4.4 invalidates the target URI: every stored response for it (§4.1 variants included)
    p = env.path("inval-vary")
    env.script(p, cc("max-age=3600", headers=[("Vary", "X-V")]))
    one = env.req(p, [("X-V", "1")])
    two = env.req(p, [("X-V", "2")])
    env.req(p, method="DELETE")
    assert env.req(p, [("X-V", "1")]).body != one.body and env.req(p, [("X-V", "2")]).body != two.body
    assert env.count(p) == 5


def test_safe_methods_do_not_invalidate(env):
    p = env.path("inval-safe")
    env.script(p, cc("max-age=3600"))
    a = env.req(p)
    env.req(p, method="OPTIONS")
    assert env.req(p).body == a.body and env.count(p) == 2


def test_error_answer_does_not_invalidate(env):
    p = env.path("inval-error")
    env.script(p, cc("max-age=3600"), Canned(500, [], b"err\n"), cc("max-age=3600"))
    a = env.req(p)
    assert env.req(p, method="POST", body=b"x").status == 500
    assert env.req(p).body == a.body and env.count(p) == 2


def test_location_and_content_location_are_invalidated_on_the_same_origin_only(env):
    # §4.4: "MAY invalidate the URI(s) in the Location and Content-Location response header
    # fields"; "MUST NOT trigger an invalidation ... if the origin ... differs"
    loc, cloc, foreign = env.path("inval-loc"), env.path("inval-cloc"), env.path("inval-foreign")
    for q in (loc, cloc):
        env.script(q, cc("max-age=3600"))
        env.req(q)
    env.script(foreign, cc("max-age=3600"))
    other = [("Host", "other.test")]
    env.req(foreign, other)
    assert env.req(foreign, other).hit
    p = env.path("inval-post")
    env.script(p, Canned(201, [("Location", loc), ("Content-Location", f"http://127.0.0.1:{env.edge.port}{cloc}")]))
    env.req(p, [("Host", f"127.0.0.1:{env.edge.port}")], method="POST", body=b"x")
    assert not env.req(loc, [("Host", f"127.0.0.1:{env.edge.port}")]).hit
    assert not env.req(cloc, [("Host", f"127.0.0.1:{env.edge.port}")]).hit
    q = env.path("inval-loc-query") + "?a=1&b=2"          # the query is part of the URI invalidated
    env.script(q, cc("max-age=3600"))
    env.req(q)
    assert env.req(q).hit
    p2 = env.path("inval-post-query")
    env.script(p2, Canned(303, [("Location", q)]))
    env.req(p2, method="PUT", body=b"x")                     # a 3xx is not an error status either
    assert not env.req(q).hit
    f = env.path("inval-post-foreign")
    env.script(f, Canned(200, [("Location", f"http://other.test{foreign}"),
                               ("Content-Location", f"http://other.test{foreign}")]))
    env.req(f, [("Host", f"127.0.0.1:{env.edge.port}")], method="POST", body=b"x")
    assert env.req(foreign, other).hit


# ------------------------------------------------------------------------------ RFC 9211 Cache-Status, §5.1 Age

def test_cache_status_is_a_structured_list(env):
    p = env.path("cache-status")
    env.script(p, cc("max-age=3600"))
    miss = parse_cache_status(env.req(p).h("Cache-Status"))
    env.landed(p)   # else the next request may wait for the fill: "fwd=uri-miss; collapsed" (§2.6)
    hit = parse_cache_status(env.req(p).h("Cache-Status"))
    (name, params), = [m for m in miss if m[0] == "edge"]
    # RFC 9211 §2.2 fwd, §2.3 fwd-status, §2.5 stored, §2.4 ttl
    assert params["fwd"] in ("uri-miss", "miss") and params["fwd-status"] == "200" and params["stored"] is True
    assert int(params["ttl"]) > 3000
    (name, params), = [m for m in hit if m[0] == "edge"]
    assert params["hit"] is True and "fwd" not in params and 3000 < int(params["ttl"]) <= 3600
    q = env.path("cache-status-nostore")
    env.script(q, cc("no-store"))
    (name, params), = [m for m in parse_cache_status(env.req(q).h("Cache-Status")) if m[0] == "edge"]
    assert "stored" not in params and "hit" not in params and "fwd" in params


def test_cache_status_of_upstream_caches_is_kept_first(env):
    # RFC 9211 §2: "caches add their entries to the end" of the list received
    p = env.path("cache-status-upstream")
    env.script(p, cc("max-age=3600", headers=[("Cache-Status", "OriginCache; hit")]))
    a = parse_cache_status(env.req(p).h("Cache-Status"))
    b = parse_cache_status(env.req(p).h("Cache-Status"))
    for members in (a, b):
        assert [m[0] for m in members] == ["OriginCache", "edge"]


# ------------------------------------------------------------------------------ RFC 9213 CDN-Cache-Control

@pytest.mark.parametrize("cc_value,cdn,reused", [
    ("no-store", "max-age=3600", True),           # §2.1: CDN-Cache-Control governs, Cache-Control ignored
    ("max-age=3600", "no-store", False),
    ("max-age=3600", "max-age=0", False),
    ("private", "max-age=3600", True),
    ("max-age=3600", "max-age=, ,", True),         # §2.2: an invalid value is ignored as if absent
    ("max-age=3600", '"junk"', True),
    ("no-store", "max-age=3600, &&&&&", False),   # not a Dictionary: ignored, Cache-Control governs
    ("max-age=3600", "private", False),            # RFC 9111 §5.2.2.7 read from the targeted field
    ("max-age=3600", "no-cache", False),           # §5.2.2.4 likewise
    ("no-store", "foobar, max-age=3600", True),    # unknown directives are ignored
    ("no-store", "MaX-aGe=3600", False),           # RFC 8941 §3.2 keys are lower case: not a Dictionary
    ("no-store", "max-age=99999999999", True),
])
def test_cdn_cache_control(env, cc_value, cdn, reused):
    p = env.path("cdn")
    a, b = env.twice(p, cc(cc_value, headers=[("CDN-Cache-Control", cdn)]))
    assert (env.count(p) == 1) is reused
    assert a.h("CDN-Cache-Control") == cdn     # §3: forwarded downstream


def test_cdn_cache_control_max_age_counts_the_age(env):
    # RFC 9213 §2.1 directives keep their RFC 9111 meaning: §4.2.3 Age still counts
    p = env.path("cdn-age")
    env.twice(p, Canned(headers=[("CDN-Cache-Control", "max-age=3600"), ("Age", "7200")]))
    assert env.count(p) == 2


def test_cdn_cache_control_overrides_expires(env):
    # RFC 9213 §2.1: "MUST ignore the Cache-Control and Expires header fields"
    p = env.path("cdn-expires")
    env.twice(p, Canned(headers=[("CDN-Cache-Control", "max-age=3600"), ("Expires", hd(-10))]))
    assert env.count(p) == 1
    q = env.path("cdn-expires2")
    env.twice(q, Canned(headers=[("CDN-Cache-Control", "max-age=0"), ("Expires", hd(3600))]))
    assert env.count(q) == 2


# ------------------------------------------------------------------------------ bodies that must be empty

def test_204_from_the_cache_has_no_body(env):
    p = env.path("nobody-204")
    env.script(p, cc("max-age=3600", status=204))
    env.req(p)
    raw = env.raw(p)
    assert raw.startswith(b"HTTP/1.1 204") and raw.endswith(b"\r\n\r\n") and b"\r\ncontent-length" not in raw.lower()
    assert env.count(p) == 1


def test_304_from_the_cache_has_no_body(env):
    p = env.path("nobody-304")
    env.script(p, cc("max-age=3600", headers=[("ETag", '"e"')]))
    env.req(p)
    raw = env.raw(p, headers='If-None-Match: "e"\r\n')
    assert raw.startswith(b"HTTP/1.1 304") and raw.endswith(b"\r\n\r\n")


def test_interim_responses_are_not_stored(env):
    # §3: "the response status code is final"; a 1xx before the final response is not stored
    p = env.path("interim")
    # RFC 9110 §15.2: the 103 is forwarded to the client whose request caused the fetch (issue 10),
    # read raw because http.client would take it for the final response
    env.script(p, Canned(200, [("Cache-Control", "max-age=3600")], interim=((103, (("Link", "</s.css>; rel=preload"),)),)))
    a = messages(env.raw(p))
    b = messages(env.raw(p))
    assert [m[0] for m in a] == [103, 200] and [m[0] for m in b] == [200]
    assert b[0][2] == a[1][2] and env.count(p) == 1


# ------------------------------------------------------------------------------ RFC 9110 §14 ranges from the cache

def test_range_requests_from_the_stored_response(env):
    p = env.path("range")
    body = bytes(range(100))
    env.script(p, cc("max-age=3600", headers=[("ETag", '"r1"'), ("Last-Modified", hd(-86400))], body=body))
    assert env.req(p).body == body
    r = env.req(p, [("Range", "bytes=10-19")])
    assert r.status == 206 and r.body == body[10:20] and r.h("Content-Range") == "bytes 10-19/100"
    r = env.req(p, [("Range", "bytes=-5")])
    assert r.status == 206 and r.body == body[-5:] and r.h("Content-Range") == "bytes 95-99/100"
    r = env.req(p, [("Range", "bytes=90-")])
    assert r.status == 206 and r.body == body[90:]
    r = env.req(p, [("Range", "bytes=200-300")])
    assert r.status == 416 and r.h("Content-Range") == "bytes */100"   # §15.5.17
    # §13.1.5 If-Range: a strong match gives the range, anything else the whole representation
    r = env.req(p, [("Range", "bytes=0-1"), ("If-Range", '"r1"')])
    assert r.status == 206 and r.body == body[:2]
    r = env.req(p, [("Range", "bytes=0-1"), ("If-Range", '"other"')])
    assert r.status == 200 and r.body == body
    r = env.req(p, [("Range", "bytes=0-1"), ("If-Range", 'W/"r1"')])
    assert r.status == 200 and r.body == body
    r = env.req(p, [("Range", "items=0-1")])            # §14.2: another range unit is ignored
    assert r.status == 200 and r.body == body
    r = env.req(p, [("Range", "bytes=0-1")], method="HEAD")   # §14.2: ranges are defined for GET only
    assert r.status == 200 and r.h("Content-Range") is None
    assert env.count(p) == 1


def test_if_range_with_a_date(env):
    # RFC 9110 §13.1.5: an HTTP-date If-Range matches a strong Last-Modified exactly; Last-Modified
    # is strong when Date is at least one second later (§8.8.2.2)
    p = env.path("range-date")
    body = bytes(range(50))
    lm = hd(-86400)
    env.script(p, cc("max-age=3600", headers=[("Last-Modified", lm)], body=body))
    env.req(p)
    r = env.req(p, [("Range", "bytes=0-9"), ("If-Range", lm)])
    assert r.status == 206 and r.body == body[:10]
    r = env.req(p, [("Range", "bytes=0-9"), ("If-Range", hd(-2 * 86400))])
    assert r.status == 200 and r.body == body
    assert env.count(p) == 1
