"""edge.cache.policy from the RFC text: one table per rule family, each row citing its section.

Times are injected: T0 is an arbitrary instant, ``D(t)`` its HTTP-date.
"""

from __future__ import annotations

import math

import pytest

from edge.cache import policy as P
from edge.cache.policy import (
    Fetch, Fresh, OnlyIfCachedMiss, PolicySettings, Revalidate, ServeStale,
)

T0 = 1_800_000_000.0
SHARED = PolicySettings()


def D(t: float) -> str:
    return P.format_http_date(t)


def facts(headers, status=200, req_t=T0, resp_t=T0, settings=SHARED):
    return P.response_facts(req_t, resp_t, status, headers, settings)


# ---------------------------------------------------------------------------------------
# HTTP-date
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("value,expected,section", [
    ("Sun, 06 Nov 1994 08:49:37 GMT", 784111777.0, "RFC 9110 §5.6.7 IMF-fixdate"),
    ("Sunday, 06-Nov-94 08:49:37 GMT", 784111777.0, "RFC 9110 §5.6.7 rfc850-date"),
    ("Sun Nov  6 08:49:37 1994", 784111777.0, "RFC 9110 §5.6.7 asctime-date"),
    ("0", None, "RFC 9111 §5.3 invalid"),
    ("-1", None, "RFC 9111 §5.3 invalid"),
    ("Sun, 06 Nov 1994 08:49:37 UTC", None, "RFC 9110 §5.6.7 only GMT"),
    ("SUN, 06 NOV 1994 08:49:37 gmt", 784111777.0, "RFC 9111 §4.2 a cache matches dates case-insensitively"),
    ("sunday, 06-nov-94 08:49:37 Gmt", 784111777.0, "RFC 9111 §4.2 case-insensitively (rfc850-date)"),
    ("Sun, 32 Nov 1994 08:49:37 GMT", None, "RFC 9110 §5.6.7 day range"),
    ("Sun, 06 Foo 1994 08:49:37 GMT", None, "RFC 9110 §5.6.7 month"),
    ("", None, "empty"),
    ("x" * 1000, None, "overlong"),
])
def test_http_date(value, expected, section):
    assert P.parse_http_date(value) == expected, section


# ---------------------------------------------------------------------------------------
# Cache-Control parsing (§5.2, §4.2.1, §1.2.2)
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("values,checks,section", [
    (["max-age=60"], {"max_age": 60}, "§5.2.2.1"),
    (["MAX-AGE=60"], {"max_age": 60}, "§5.2 case-insensitive names"),
    (["  max-age=60 ,\tpublic  "], {"max_age": 60, "public": True}, "§5.2 / RFC 9110 §5.6.1 OWS around members"),
    (["max-age =60"], {"max_age": -1}, "§5.2 no whitespace before '=': invalid, stale"),
    (["max-age= 60"], {"max_age": -1}, "§5.2 no whitespace after '=': invalid, stale"),
    (["max-age='60'"], {"max_age": -1}, "§5.2 single quotes are not a quoted-string"),
    (["max-age=0003600"], {"max_age": 3600}, "§1.2.2 delta-seconds = 1*DIGIT: leading zeros"),
    (['x-ext="max-age=5", max-age=1'], {"max_age": 1}, "§5.2 a quoted argument is not a directive"),
    (['private = "a, b"'], {"private": ("a", "b")}, "field-name lists survive sloppy '='"),
    (['max-age="60"'], {"max_age": 60}, "§5.2 'recipients ought to accept both forms'"),
    (["max-age=abc"], {"max_age": -1}, "§4.2.1 invalid freshness -> stale (-1)"),
    (["max-age=-5"], {"max_age": -1}, "§1.2.2 delta-seconds = 1*DIGIT"),
    (["max-age=5, max-age=10"], {"max_age": -1}, "§4.2.1 conflicting repeats -> stale"),
    (["max-age=5", "max-age=5"], {"max_age": 5}, "§4.2.1 identical repeats agree"),
    (["max-age=99999999999999"], {"max_age": P.DELTA_MAX}, "§1.2.2 capped at 2^31"),
    (['no-cache="set-cookie, x-a", max-age=3'], {"no_cache": ("set-cookie", "x-a"), "max_age": 3},
     "§5.2.2.4 qualified no-cache; commas inside quotes"),
    (['private="a\\"b", public'], {"private": ('a"b',), "public": True}, "RFC 9110 §5.6.4 quoted-pair"),
    (["no-cache"], {"no_cache": True}, "§5.2.2.4 unqualified"),
    (['no-cache="a", no-cache'], {"no_cache": True}, "§4.2.1 conflict -> most restrictive"),
    (["no-store", "private"], {"no_store": True, "private": True}, "RFC 9110 §5.3 lines combine"),
    ([",,, ,"], {"max_age": None, "no_store": False}, "RFC 9110 §5.6.1 empty list elements"),
    (["max-stale"], {"max_stale": P.DELTA_MAX}, "§5.2.1.2 max-stale without value"),
    (["max-stale=30"], {"max_stale": 30}, "§5.2.1.2 max-stale with value"),
    (["min-fresh=10, only-if-cached"], {"min_fresh": 10, "only_if_cached": True}, "§5.2.1.3, §5.2.1.7"),
    (["s-maxage=7, must-revalidate, proxy-revalidate, no-transform"],
     {"s_maxage": 7, "must_revalidate": True, "proxy_revalidate": True, "no_transform": True}, "§5.2.2"),
    (["stale-while-revalidate=30, stale-if-error=60"],
     {"stale_while_revalidate": 30, "stale_if_error": 60}, "RFC 5861 §3, §4"),
    (['max-age="60'], {"max_age": 60}, "unterminated quoted-string tolerated"),
])
def test_parse_cache_control(values, checks, section):
    cc = P.parse_cache_control(values)
    for attr, want in checks.items():
        assert getattr(cc, attr) == want, (section, attr)


@pytest.mark.parametrize("values,expected,section", [
    (["5"], 5, "§5.1"),
    (["5, 7"], 5, "§5.1 list: first member"),
    (["5", "7"], 5, "§5.1 repeated lines: first"),
    (["abc"], None, "§5.1 invalid -> ignored"),
    (["-3"], None, "§5.1 negative -> ignored"),
    (["1.5"], None, "§5.1 non-integer -> ignored"),
    (["99999999999999999"], P.DELTA_MAX, "§1.2.2 capped"),
    ([], None, "absent"),
])
def test_parse_age(values, expected, section):
    assert P.parse_age(values) == expected, section


# ---------------------------------------------------------------------------------------
# §3 storing
# ---------------------------------------------------------------------------------------

ST = [
    # method, status, request headers, response headers, settings, ok, reason, section
    ("GET", 200, [], [], {}, True, "heuristic", "§3 heuristically cacheable status"),
    ("POST", 200, [], [("Cache-Control", "max-age=60")], {}, False, "method", "§3 method understood"),
    ("HEAD", 200, [], [("Cache-Control", "max-age=60")], {}, False, "method", "HEAD answered from a stored GET"),
    ("GET", 100, [], [], {}, False, "status", "§3 final status"),
    ("GET", 600, [], [("Expires", D(T0 + 60))], {}, False, "status", "RFC 9110 §15 invalid status: as a 5xx"),
    ("GET", 999, [], [("Cache-Control", "max-age=60")], {}, False, "status", "RFC 9110 §15 invalid status: as a 5xx"),
    ("GET", 599, [], [("Expires", D(T0 + 60))], {}, True, "explicit", "§3 Expires (599 is valid)"),
    ("GET", 599, [], [], {}, False, "status", "§3 599 not heuristically cacheable"),
    ("GET", 206, [], [("Cache-Control", "max-age=60")], {}, True, "explicit", "§3.3 a 206 MAY be stored (edge.cache.partial)"),
    ("GET", 304, [], [], {}, False, "status", "§4.3.4 a 304 updates, is not stored"),
    ("GET", 200, [], [("Cache-Control", "no-store")], {}, False, "no-store", "§5.2.2.5"),
    ("GET", 200, [], [("Cache-Control", "NO-STORE, max-age=60")], {}, False, "no-store", "§4.2.1 most restrictive"),
    ("GET", 200, [("Cache-Control", "no-store")], [("Cache-Control", "max-age=60")], {}, False,
     "request-no-store", "§5.2.1.5"),
    ("GET", 200, [], [("Cache-Control", "private")], {}, False, "private", "§5.2.2.7 shared cache"),
    ("GET", 200, [], [("Cache-Control", "private, max-age=60")], {"shared": False}, True, "explicit",
     "§3 private cache"),
    ("GET", 200, [], [("Cache-Control", 'private="set-cookie", max-age=60')], {}, True, "explicit",
     "§5.2.2.7 qualified private: store without the fields"),
    ("GET", 200, [("Authorization", "Basic x")], [("Cache-Control", "max-age=60")], {}, False,
     "authorization", "§3.5"),
    ("GET", 200, [("Authorization", "Basic x")], [("Cache-Control", "max-age=60, public")], {}, True,
     "explicit", "§3.5 public"),
    ("GET", 200, [("Authorization", "Basic x")], [("Cache-Control", "max-age=60, must-revalidate")], {},
     True, "explicit", "§3.5 must-revalidate"),
    ("GET", 200, [("Authorization", "Basic x")], [("Cache-Control", "s-maxage=60")], {}, True,
     "explicit", "§3.5 s-maxage"),
    ("GET", 200, [("Authorization", "Basic x")], [("Cache-Control", "max-age=60")], {"shared": False},
     True, "explicit", "§3.5 applies to shared caches"),
    ("GET", 302, [], [], {}, False, "status", "§3 302 not heuristically cacheable"),
    ("GET", 302, [], [("Cache-Control", "max-age=60")], {}, True, "explicit", "§3 max-age"),
    ("GET", 500, [], [("Expires", D(T0 + 60))], {}, True, "explicit", "§3 Expires"),
    ("GET", 307, [], [("Cache-Control", "s-maxage=60")], {}, True, "explicit", "§3 s-maxage (shared)"),
    ("GET", 307, [], [("Cache-Control", "public")], {}, True, "explicit", "§3 public"),
    ("GET", 302, [], [], {"forced_ttl_s": 60}, True, "forced-ttl", "§5.2.3 out-of-band extension"),
    *[("GET", s, [], [], {}, True, "heuristic", f"RFC 9110 §15.1 {s}")
      for s in (200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501)],
    ("GET", 200, [], [("Set-Cookie", "a=b"), ("Cache-Control", "max-age=60")], {}, False, "set-cookie",
     "route default refuses Set-Cookie"),
    ("GET", 200, [], [("Set-Cookie", "a=b"), ("Cache-Control", "max-age=60")], {"set_cookie": "strip"},
     True, "explicit", "set_cookie=strip"),
    ("GET", 200, [], [("Vary", "*"), ("Cache-Control", "max-age=60")], {}, False, "vary-star",
     "§4.1 Vary: * never matches"),
    ("GET", 200, [], [("Cache-Control", "no-store, must-understand, max-age=60")], {}, True, "explicit",
     "§5.2.2.3 must-understand overrides no-store for a known status"),
    ("GET", 299, [], [("Cache-Control", "no-store, must-understand, max-age=60")], {}, False,
     "must-understand", "§5.2.2.3 unknown status"),
    ("GET", 200, [], [("Cache-Control", "no-store"), ("CDN-Cache-Control", "max-age=600")], {}, True,
     "explicit", "RFC 9213 §3 example: CDN cache stores"),
    ("GET", 200, [], [("Cache-Control", "max-age=60"), ("CDN-Cache-Control", "no-store")], {}, False,
     "no-store", "RFC 9213 §2.1 targeted field governs"),
    ("GET", 200, [], [("Cache-Control", "no-store"), ("CDN-Cache-Control", "none")], {}, True, "heuristic",
     "RFC 9213 §3 example 'none'"),
    ("GET", 200, [], [("Cache-Control", "no-store"), ("CDN-Cache-Control", "")], {}, False, "no-store",
     "RFC 9213 §2.2 empty targeted field ignored"),
    ("GET", 200, [], [("Cache-Control", "no-store"), ("CDN-Cache-Control", "Max-Age=60")], {}, False,
     "no-store", "RFC 9213 §2.2 invalid dictionary ignored"),
    ("GET", 200, [], [("Cache-Control", "no-store"), ("CDN-Cache-Control", "max-age=600")],
     {"targeted_fields": ()}, False, "no-store", "target list off"),
    ("GET", 200, [], [("Cache-Control", "no-store"), ("Edge-Cache-Control", "max-age=5"),
                      ("CDN-Cache-Control", "no-store")],
     {"targeted_fields": ("edge-cache-control", "cdn-cache-control")}, True, "explicit",
     "RFC 9213 §2.1 first field in target-list order"),
]


@pytest.mark.parametrize("method,status,req,resp,kw,ok,reason,section", ST)
def test_storable(method, status, req, resp, kw, ok, reason, section):
    v = P.storable(method, status, req, resp, PolicySettings(**kw))
    assert (v.ok, v.reason) == (ok, reason), section


@pytest.mark.parametrize("resp,kw,kept,section", [
    ([("Connection", "x-foo"), ("X-Foo", "1"), ("Keep-Alive", "t=1"), ("X-Bar", "2")], {},
     ["x-bar"], "§3.1 Connection and the fields it names"),
    ([("Proxy-Authenticate", "Basic"), ("Proxy-Authentication-Info", "a"), ("X", "1")], {},
     ["x"], "§3.1 proxy-specific fields MUST NOT be stored"),
    ([("Cache-Control", 'no-cache="X-Secret"'), ("X-Secret", "s"), ("X", "1")], {},
     ["cache-control", "x"], "§5.2.2.4 qualified no-cache fields never sent from cache"),
    ([("Cache-Control", 'private="x-user"'), ("X-User", "u"), ("X", "1")], {},
     ["cache-control", "x"], "§5.2.2.7 qualified private: shared cache MUST NOT store"),
    ([("Cache-Control", 'private="x-user"'), ("X-User", "u")], {"shared": False},
     ["cache-control", "x-user"], "§5.2.2.7 private cache keeps them"),
    ([("Set-Cookie", "a=b"), ("X", "1")], {"set_cookie": "strip"}, ["x"], "set_cookie=strip"),
    ([("Set-Cookie", "a=b"), ("X", "1")], {}, ["x"], "set_cookie=refuse: a merged 304's cookie not kept"),
    ([("Set-Cookie", "a=b"), ("X", "1")], {"set_cookie": "store"}, ["set-cookie", "x"], "set_cookie=store"),
    ([("X-Unknown", "1"), ("Content-Length", "3")], {}, ["x-unknown", "content-length"],
     "§3.1 'including unrecognized ones'"),
])
def test_headers_to_store(resp, kw, kept, section):
    out = P.headers_to_store(resp + [("Date", D(T0))], T0, PolicySettings(**kw))
    assert [k.lower() for k, _ in out if k.lower() != "date"] == kept, section


def test_headers_to_store_appends_date_when_missing():
    # RFC 9110 §6.6.1: "MUST record the time it was received and append a corresponding Date"
    out = P.headers_to_store([("X", "1")], T0 + 5)
    assert ("Date", D(T0 + 5)) in out


# ---------------------------------------------------------------------------------------
# §4.2 freshness lifetime
# ---------------------------------------------------------------------------------------

FR = [
    # status, headers, settings, lifetime, heuristic, section
    (200, [("Cache-Control", "max-age=60")], {}, 60, False, "§4.2.1 max-age"),
    (200, [("Cache-Control", "max-age=60, s-maxage=120")], {}, 120, False, "§4.2.1 s-maxage first (shared)"),
    (200, [("Cache-Control", "max-age=60, s-maxage=120")], {"shared": False}, 60, False,
     "§4.2.1 s-maxage only for shared caches"),
    (200, [("Cache-Control", "max-age=60"), ("Expires", D(T0 + 600))], {}, 60, False,
     "§5.3 max-age over Expires"),
    (200, [("Expires", D(T0 + 600))], {}, 600, False, "§4.2.1 Expires - Date"),
    (200, [("Expires", "0")], {}, 0, False, "§5.3 invalid Expires: already expired"),
    (200, [("Expires", "garbage"), ("Last-Modified", D(T0 - 1000))], {}, 0, False,
     "§4.2.2 Expires present: no heuristic"),
    (200, [("Expires", D(T0 + 600)), ("Expires", D(T0 + 60))], {}, 0, False,
     "§4.2.1 two different Expires: stale"),
    (200, [("Expires", D(T0 + 600)), ("Expires", D(T0 + 600))], {}, 600, False, "§4.2.1 identical Expires"),
    (200, [("Cache-Control", "max-age=abc")], {}, 0, False, "§4.2.1 invalid max-age: stale"),
    (200, [("Cache-Control", "max-age=-1"), ("Last-Modified", D(T0 - 1000))], {}, 0, False,
     "§4.2.1 invalid max-age: stale, no heuristic"),
    (200, [("Cache-Control", "max-age=10, max-age=20")], {}, 0, False, "§4.2.1 conflicting: stale"),
    (200, [("Last-Modified", D(T0 - 1000))], {}, 100, True, "§4.2.2 10% of Date - Last-Modified"),
    (200, [("Last-Modified", D(T0 - 10_000_000))], {}, 86400, True, "§4.2.2 capped"),
    (200, [("Last-Modified", D(T0 - 1000))], {"heuristic_fraction": 0.5}, 500, True, "§4.2.2 fraction setting"),
    (404, [("Last-Modified", D(T0 - 1000))], {}, 100, True, "§4.2.2 heuristic 404"),
    (302, [("Last-Modified", D(T0 - 1000))], {}, 0, False, "§4.2.2 302 not heuristically cacheable"),
    (302, [("Last-Modified", D(T0 - 1000)), ("Cache-Control", "public")], {}, 100, True,
     "§4.2.2 'marked as explicitly cacheable (e.g., with a public response directive)'"),
    (200, [], {}, 0, False, "§4.2.2 nothing to base a heuristic on"),
    (200, [("Last-Modified", D(T0 + 1000))], {}, 0, False, "§4.2.2 Last-Modified in the future"),
    (200, [], {"default_ttl_s": 30}, 30, True, "route default TTL instead of the heuristic"),
    (200, [("Cache-Control", "max-age=5")], {"default_ttl_s": 30}, 5, False, "default TTL never over explicit"),
    (200, [("Cache-Control", "max-age=5")], {"forced_ttl_s": 300}, 300, False, "forced TTL"),
    (200, [("Cache-Control", "max-age=5"), ("CDN-Cache-Control", "max-age=600")], {}, 600, False,
     "RFC 9213 §2.1 targeted max-age"),
    (200, [("Expires", D(T0 + 60)), ("CDN-Cache-Control", "public")], {}, 0, False,
     "RFC 9213 §2.1 Expires ignored with a targeted field"),
    (200, [("CDN-Cache-Control", "max-age=1.5")], {}, 0, False, "RFC 9213 §2.2 decimal max-age not consumed"),
    (200, [("CDN-Cache-Control", 'max-age="600"')], {}, 0, False, "RFC 9213 §2.2 String max-age not consumed"),
    (200, [("CDN-Cache-Control", "max-age=600, &&&"), ("Cache-Control", "max-age=7")], {}, 7, False,
     "RFC 9213 §2.2 parsing error: field ignored, Cache-Control used"),
    (200, [("CDN-Cache-Control", "max-age=60, s-maxage=600")], {}, 600, False, "RFC 9213 same precedence"),
    (200, [("Cache-Control", "max-age=60"), ("Date", "nonsense")], {}, 60, False,
     "RFC 9110 §6.6.1 invalid Date replaced by receipt time"),
]


@pytest.mark.parametrize("status,headers,kw,lifetime,heuristic,section", FR)
def test_freshness_lifetime(status, headers, kw, lifetime, heuristic, section):
    hs = headers if any(k == "Date" for k, _ in headers) else headers + [("Date", D(T0))]
    f = facts(hs, status=status, settings=PolicySettings(**kw))
    assert (f.freshness_lifetime, f.heuristic) == (lifetime, heuristic), section


def test_expires_uses_receipt_time_without_date():
    # §4.2.1: "using the time the message was received if it is not present"
    f = facts([("Expires", D(T0 + 600))], resp_t=T0 + 100, req_t=T0 + 100)
    assert f.freshness_lifetime == 500


# ---------------------------------------------------------------------------------------
# §4.2.3 age
# ---------------------------------------------------------------------------------------

AGE = [
    # request_time, response_time, headers, now, current_age, section
    (T0, T0, [("Date", D(T0))], T0 + 10, 10, "§4.2.3 resident_time"),
    (T0, T0, [("Date", D(T0)), ("Age", "30")], T0, 30, "§4.2.3 corrected_age_value"),
    (T0 - 2, T0, [("Date", D(T0)), ("Age", "30")], T0, 32, "§4.2.3 response_delay added to Age"),
    (T0, T0, [("Date", D(T0 - 50)), ("Age", "30")], T0, 50, "§4.2.3 apparent_age wins"),
    (T0, T0, [("Date", D(T0 + 50))], T0, 0, "§4.2.3 apparent_age >= 0 (clock skew)"),
    (T0, T0, [], T0 + 3, 3, "RFC 9110 §6.6.1 no Date: date_value = response_time"),
    (T0, T0, [("Date", "0")], T0 + 3, 3, "RFC 9110 §6.6.1 invalid Date: receipt time"),
    (T0, T0, [("Date", D(T0)), ("Age", "abc")], T0, 0, "§5.1 invalid Age ignored"),
    (T0, T0, [("Date", D(T0)), ("Age", "-10")], T0, 0, "§5.1 negative Age ignored"),
    (T0, T0, [("Date", D(T0)), ("Age", "20"), ("Age", "90")], T0, 20, "§5.1 repeated Age: first"),
    (T0, T0, [("Date", D(T0)), ("Age", "99999999999999")], T0, P.DELTA_MAX, "§1.2.2 2^31"),
]


@pytest.mark.parametrize("req_t,resp_t,headers,now,age,section", AGE)
def test_current_age(req_t, resp_t, headers, now, age, section):
    f = facts(headers, req_t=req_t, resp_t=resp_t)
    assert P.current_age(f, now) == pytest.approx(age), section


def test_age_makes_response_stale():
    # §4.2: fresh while freshness_lifetime > current_age
    f = facts([("Date", D(T0)), ("Cache-Control", "max-age=60"), ("Age", "50")])
    assert P.is_fresh(f, T0 + 9) and not P.is_fresh(f, T0 + 10)
    assert isinstance(P.lookup("GET", [], f, T0 + 11), Revalidate)


# ---------------------------------------------------------------------------------------
# §4, §5.2.1, §5.2.2, RFC 5861: lookup
# ---------------------------------------------------------------------------------------

V = [("Date", D(T0)), ("ETag", '"v1"'), ("Last-Modified", D(T0 - 3600))]

LOOKUP = [
    # response Cache-Control, request headers, seconds after T0, origin_down, (type, reason/attr), section
    ("max-age=60", [], 10, False, (Fresh, None), "§4.2 fresh"),
    ("max-age=60", [], 60, False, (Revalidate, "stale"), "§4.2 stale at lifetime"),
    ("max-age=60", [("Cache-Control", "no-cache")], 10, False, (Revalidate, "request"), "§5.2.1.4"),
    ("max-age=60", [("Pragma", "no-cache")], 10, False, (Revalidate, "request"), "§5.4 Pragma without CC"),
    ("max-age=60", [("Pragma", "no-cache"), ("Cache-Control", "max-stale")], 10, False, (Fresh, None),
     "§5.4 Pragma ignored when Cache-Control present"),
    ("max-age=60", [("Cache-Control", "max-age=5")], 10, False, (Revalidate, "request"), "§5.2.1.1"),
    ("max-age=60", [("Cache-Control", "max-age=15")], 10, False, (Fresh, None), "§5.2.1.1 within"),
    ("max-age=60", [("Cache-Control", "max-age=abc")], 10, False, (Revalidate, "request"),
     "§5.2.1.1 invalid read as 0"),
    ("max-age=60", [("Cache-Control", "min-fresh=55")], 10, False, (Revalidate, "request"), "§5.2.1.3"),
    ("max-age=60", [("Cache-Control", "min-fresh=50")], 10, False, (Fresh, None), "§5.2.1.3 enough"),
    ("max-age=60", [("Cache-Control", "max-stale=30")], 80, False, (ServeStale, "max-stale"), "§5.2.1.2"),
    ("max-age=60", [("Cache-Control", "max-stale=10")], 80, False, (Revalidate, "stale"), "§5.2.1.2 too stale"),
    ("max-age=60", [("Cache-Control", "max-stale")], 10_000, False, (ServeStale, "max-stale"),
     "§5.2.1.2 without value: any age"),
    ("max-age=60, must-revalidate", [("Cache-Control", "max-stale")], 80, False, (Revalidate, "stale"),
     "§5.2.2.2 / §4.2.4 must-revalidate beats max-stale"),
    ("s-maxage=60", [("Cache-Control", "max-stale")], 80, False, (Revalidate, "stale"),
     "§5.2.2.10 s-maxage implies proxy-revalidate"),
    ("max-age=60, proxy-revalidate", [("Cache-Control", "max-stale")], 80, False, (Revalidate, "stale"),
     "§5.2.2.8 proxy-revalidate in a shared cache"),
    ("max-age=60", [("Cache-Control", "only-if-cached")], 10, False, (Fresh, None), "§5.2.1.7 fresh"),
    ("max-age=60", [("Cache-Control", "only-if-cached")], 80, False, (OnlyIfCachedMiss, None),
     "§5.2.1.7 stale -> 504"),
    ("max-age=60", [("Cache-Control", "only-if-cached, max-stale")], 80, False, (ServeStale, "max-stale"),
     "§5.2.1.7 'consistent with the other constraints'"),
    ("max-age=60", [("Cache-Control", "only-if-cached, no-cache")], 10, False, (OnlyIfCachedMiss, None),
     "§5.2.1.7 validation needed -> 504"),
    ("no-cache", [], 0, False, (Revalidate, "stale"), "§5.2.2.4 always validate"),
    ("no-cache, max-age=60", [], 1, False, (Revalidate, "stale"), "§5.2.2.4 no-cache makes max-age inoperative"),
    ('no-cache="x-a", max-age=60', [], 1, False, (Fresh, None), "§5.2.2.4 qualified: may serve"),
    ("max-age=60, stale-while-revalidate=30", [], 80, False, (ServeStale, "stale-while-revalidate"),
     "RFC 5861 §3"),
    ("max-age=60, stale-while-revalidate=30", [], 95, False, (Revalidate, "stale"), "RFC 5861 §3 window over"),
    ("max-age=60, stale-while-revalidate=30, must-revalidate", [], 80, False, (Revalidate, "stale"),
     "§5.2.2.2 must-revalidate overrides RFC 5861"),
    ("max-age=60, stale-while-revalidate=30", [("Cache-Control", "max-age=0")], 80, False,
     (Revalidate, "request"), "§5.2.1.1 client refuses stale"),
    ("max-age=60, stale-if-error=30", [], 80, True, (ServeStale, "stale-if-error"), "RFC 5861 §4 origin down"),
    ("max-age=60, stale-if-error=30", [], 80, False, (Revalidate, "stale"), "RFC 5861 §4 only on error"),
    ("max-age=60, stale-if-error=30", [], 100, True, (Revalidate, "stale"), "RFC 5861 §4 window over"),
    ("max-age=60", [("Cache-Control", "stale-if-error=60")], 80, True, (ServeStale, "stale-if-error"),
     "RFC 5861 §4 request directive"),
    ("max-age=60, stale-if-error=30, no-cache", [], 80, True, (Revalidate, "stale"),
     "§5.2.2.4 no-cache overrides stale-if-error"),
]


@pytest.mark.parametrize("rcc,req,dt,down,expected,section", LOOKUP)
def test_lookup(rcc, req, dt, down, expected, section):
    f = facts(V + [("Cache-Control", rcc)])
    d = P.lookup("GET", req, f, T0 + dt, SHARED, origin_down=down)
    kind, reason = expected
    assert type(d) is kind, (section, d)
    if reason is not None:
        assert d.reason == reason, (section, d)


def test_lookup_route_stale_window_when_origin_down():
    f = facts(V + [("Cache-Control", "max-age=60")])
    s = PolicySettings(serve_stale_on_error_s=100)
    assert isinstance(P.lookup("GET", [], f, T0 + 150, s, origin_down=True), ServeStale)
    assert isinstance(P.lookup("GET", [], f, T0 + 170, s, origin_down=True), Revalidate)
    mr = facts(V + [("Cache-Control", "max-age=60, must-revalidate")])
    assert isinstance(P.lookup("GET", [], mr, T0 + 70, s, origin_down=True), Revalidate)


@pytest.mark.parametrize("method,req,facts_or_none,expected,section", [
    ("POST", [], True, Fetch("method"), "§4 method must match"),
    ("HEAD", [], True, Fresh, "RFC 9110 §9.3.2 HEAD from a stored GET"),
    ("GET", [], None, Fetch("uri-miss"), "nothing stored"),
    ("GET", [("Cache-Control", "only-if-cached")], None, OnlyIfCachedMiss(), "§5.2.1.7 nothing stored -> 504"),
    ("GET", [("If-Match", '"v1"')], True, Fetch("request"), "§4.3.2 If-Match not applicable to a cache"),
    ("GET", [("If-Unmodified-Since", D(T0))], True, Fetch("request"), "§4.3.2 If-Unmodified-Since"),
])
def test_lookup_misc(method, req, facts_or_none, expected, section):
    f = facts(V + [("Cache-Control", "max-age=60")]) if facts_or_none else None
    d = P.lookup(method, req, f, T0 + 1)
    if isinstance(expected, type):
        assert type(d) is expected, section
    else:
        assert d == expected, section


def test_lookup_vary_star_never_matches():
    # §4.1: "A stored response with a Vary header field value containing a member "*" always fails to match"
    f = facts(V + [("Cache-Control", "max-age=60"), ("Vary", "*")])
    assert P.lookup("GET", [], f, T0 + 1) == Fetch("vary-miss")


def test_fresh_decision_carries_age_and_ttl():
    f = facts(V + [("Cache-Control", "max-age=60"), ("Age", "5")])
    assert P.lookup("GET", [], f, T0 + 10) == Fresh(15.0, 45.0)


def test_revalidate_headers_from_stored_validators():
    # §4.3.1: entity tags MUST be sent; Last-Modified SHOULD be sent as If-Modified-Since
    f = facts(V + [("Cache-Control", "max-age=1")])
    d = P.lookup("GET", [], f, T0 + 5)
    assert d.headers == (("If-None-Match", '"v1"'), ("If-Modified-Since", D(T0 - 3600)))


@pytest.mark.parametrize("stored_headers,req,expected,section", [
    ([[("ETag", '"a"')], [("ETag", 'W/"b"')]], [], (("If-None-Match", '"a", W/"b"'),),
     "§4.3.1 all stored entity tags; no IMS for several"),
    ([[("Last-Modified", D(T0 - 10))]], [], (("If-Modified-Since", D(T0 - 10)),), "§4.3.1 Last-Modified"),
    ([[]], [], (("If-Modified-Since", D(T0)),), "RFC 9110 §13.1.3 Date when no Last-Modified"),
    ([[("ETag", '"a"')]], [("If-None-Match", '"c", "a"')], (("If-None-Match", '"c", "a"'),),
     "§4.3.2 union with the client's list"),
])
def test_conditional_headers(stored_headers, req, expected, section):
    fs = [facts(h + [("Date", D(T0))]) for h in stored_headers]
    assert P.conditional_headers(fs, req) == expected, section


# ---------------------------------------------------------------------------------------
# stale_on_error (RFC 5861 §4, RFC 9111 §4.2.4, §5.2.2.2)
# ---------------------------------------------------------------------------------------

SOE = [
    # response CC, seconds after T0, status, settings, request headers, allowed, section
    ("max-age=60, stale-if-error=30", 80, None, {}, [], True, "RFC 5861 §4 connection failure"),
    ("max-age=60, stale-if-error=30", 80, 503, {}, [], True, "RFC 5861 §4 503"),
    ("max-age=60, stale-if-error=30", 80, 404, {}, [], False, "RFC 5861 §4 only 500/502/503/504"),
    ("max-age=60, stale-if-error=30", 80, 501, {}, [], False, "RFC 5861 §4 501 is not an error here"),
    ("max-age=60", 80, 501, {"serve_stale_on_error_s": 30}, [], True, "§4.3.3 route window: any 5xx"),
    ("max-age=60", 80, 404, {"serve_stale_on_error_s": 30}, [], False, "§4.3.3 only 5xx"),
    ("max-age=60", 80, 999, {"serve_stale_on_error_s": 30}, [], True, "RFC 9110 §15 invalid status: as a 5xx"),
    ("max-age=60, stale-if-error=30", 80, 999, {}, [], False, "RFC 5861 §4 only 500/502/503/504"),
    ("max-age=60, stale-if-error=30", 95, 500, {}, [], False, "RFC 5861 §4 window"),
    ("max-age=60", 80, 502, {}, [], False, "§4.2.4 no permission"),
    ("max-age=60", 80, 502, {"serve_stale_on_error_s": 30}, [], True, "route window"),
    ("max-age=60, must-revalidate", 80, 502, {"serve_stale_on_error_s": 30}, [], False,
     "§5.2.2.2 MUST generate an error"),
    ("s-maxage=60, stale-if-error=30", 80, None, {}, [], False, "§5.2.2.10 s-maxage ~ proxy-revalidate"),
    ("max-age=60, no-cache", 80, 502, {"serve_stale_on_error_s": 30}, [], False, "§5.2.2.4"),
    ("max-age=60", 80, 504, {}, [("Cache-Control", "stale-if-error=30")], True, "RFC 5861 §4 request"),
    ("max-age=60", 30, 504, {}, [], True, "still fresh"),
    ("max-age=60, stale-if-error=30", 80, 500, {}, [("Cache-Control", "no-cache")], False,
     "§5.2.1.4 client asked for validation"),
]


@pytest.mark.parametrize("rcc,dt,status,kw,req,ok,section", SOE)
def test_stale_on_error(rcc, dt, status, kw, req, ok, section):
    f = facts(V + [("Cache-Control", rcc)])
    assert P.stale_on_error(f, T0 + dt, PolicySettings(**kw), status, req) is ok, section


# ---------------------------------------------------------------------------------------
# §4.1 Vary
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("vary,a,b,same,section", [
    (["Accept-Encoding"], [("Accept-Encoding", "gzip, br")], [("accept-encoding", "gzip,br")], True,
     "§4.1 whitespace"),
    (["accept-encoding"], [("Accept-Encoding", "gzip"), ("Accept-Encoding", "br")],
     [("Accept-Encoding", "gzip, br")], True, "§4.1 combining field lines"),
    (["Accept-Encoding"], [("Accept-Encoding", "gzip")], [("Accept-Encoding", "br")], False, "§4.1 values"),
    (["Accept-Encoding"], [], [("Accept-Encoding", "")], False, "§4.1 absent differs from empty"),
    (["Accept-Encoding"], [], [], True, "§4.1 both absent match"),
    (["A", "B"], [("A", "1"), ("B", "2")], [("b", "2"), ("a", "1")], True, "§4.1 names case-insensitive"),
    (["B, A"], [("A", "1"), ("B", "2")], [("A", "1"), ("B", "2")], True, "order of Vary names"),
    (["X"], [("X", "a\nb")], [("X", "a"), ("Y", "b")], False, "no forged line boundary"),
    (["X"], [("X", "a,,b, ")], [("X", "a,b")], True, "RFC 9110 §5.6.1 empty list elements"),
    (["Accept-Encoding"], [("Accept-Encoding", "GZIP;Q=0.5, br")], [("Accept-Encoding", "br, gzip ; q=0.5")],
     True, "§4.1 case-normalisation and reordering where order is not significant (RFC 9110 §8.4.1)"),
    (["Accept-Language"], [("Accept-Language", "EN-us, de")], [("Accept-Language", "en-US,de")], True,
     "§4.1 language tags are case-insensitive (RFC 9110 §8.5.1)"),
    (["Accept-Language"], [("Accept-Language", "en, de")], [("Accept-Language", "de, en")], True,
     "§4.1 reordering equally weighted languages (RFC 9110 §12.4.2: preference is the weight; edge.cache.language)"),
    (["X-Custom"], [("X-Custom", "A")], [("X-Custom", "a")], False, "§4.1 unknown fields: case kept"),
])
def test_secondary_key(vary, a, b, same, section):
    names = [n.strip() for v in vary for n in v.split(",")]
    assert (P.secondary_key(names, a) == P.secondary_key(names, b)) is same, section


def test_secondary_key_vary_star_and_empty():
    assert P.secondary_key(["*"], []) is None          # §4.1 never matches
    assert P.secondary_key(["a", "*"], []) is None
    assert P.secondary_key([], [("A", "1")]) == ""


# ---------------------------------------------------------------------------------------
# §3.2 / §4.3.4 freshening
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("stored,fresh,expected,section", [
    ([("Date", "d1"), ("ETag", '"a"'), ("X", "1")], [("Date", "d2"), ("X", "2")],
     [("Date", "d2"), ("ETag", '"a"'), ("X", "2")], "§3.2 replace present fields"),
    ([("X", "1"), ("X", "2")], [("X", "3")], [("X", "3")], "§3.2 all lines of a replaced field"),
    ([("Content-Length", "10")], [("Content-Length", "0"), ("Y", "n")], [("Content-Length", "10"), ("Y", "n")],
     "§3.2 'The Content-Length header field' excepted; new fields appended"),
    ([("Content-Type", "text/html"), ("Content-Encoding", "br")],
     [("Content-Type", "text/plain"), ("Content-Encoding", "gzip")],
     [("Content-Type", "text/plain"), ("Content-Encoding", "br")],
     "§3.2 Content-Encoding: a field the stored bytes depend upon; Content-Type updated"),
    ([("Set-Cookie", "a=b"), ("Expires", "x")], [("Set-Cookie", "a=c"), ("Expires", "y")],
     [("Set-Cookie", "a=c"), ("Expires", "y")], "§3.2 any other field replaced"),
    ([("Content-Range", "bytes 0-1/2")], [("Content-Range", "bytes 0-0/2")], [("Content-Range", "bytes 0-1/2")],
     "§3.2 automatically processed fields"),
    ([("A", "1")], [("Connection", "x-h"), ("X-H", "1"), ("Keep-Alive", "t=1")], [("A", "1")],
     "§3.1 hop-by-hop never stored"),
    ([("Age", "100"), ("A", "1")], [("B", "2")], [("A", "1"), ("B", "2")], "stale Age dropped"),
    ([("Age", "100")], [("Age", "5")], [("Age", "5")], "new Age kept"),
])
def test_merge_304(stored, fresh, expected, section):
    assert P.merge_304(stored, fresh) == expected, section


def test_merge_304_dates_a_304_without_date():
    out = P.merge_304([("Date", D(T0))], [("ETag", '"a"')], response_time=T0 + 100)
    assert ("Date", D(T0 + 100)) in out and ("Date", D(T0)) not in out


def test_freshening_restarts_the_age():
    # §4.3.4 then §4.2.3: the updated response's age counts from the 304
    f = facts([("Date", D(T0)), ("Cache-Control", "max-age=60"), ("ETag", '"a"')])
    merged = P.merge_304(P.headers_to_store([("Date", D(T0)), ("Cache-Control", "max-age=60"), ("ETag", '"a"')], T0),
                         [("ETag", '"a"')], response_time=T0 + 100)
    f2 = P.response_facts(T0 + 100, T0 + 100, 200, merged)
    assert not P.is_fresh(f, T0 + 101) and P.is_fresh(f2, T0 + 101)


@pytest.mark.parametrize("fresh,stored,expected,section", [
    ([("ETag", '"a"')], [[("ETag", '"a"')], [("ETag", '"b"')], [("ETag", '"a"')]], [0, 2],
     "§4.3.4 strong validator: all stored responses with it"),
    ([("ETag", '"z"')], [[("ETag", '"a"')]], [], "§4.3.4 MUST NOT update when none matches"),
    ([("ETag", 'W/"a"')], [[("ETag", 'W/"a"')], [("ETag", '"a"')]], [1],
     "§4.3.4 weak: the most recent matching one"),
    ([("Last-Modified", "lm1")], [[("Last-Modified", "lm1")], [("Last-Modified", "lm2")]], [0],
     "§4.3.4 Last-Modified as weak validator"),
    ([], [[]], [0], "§4.3.4 no validators, one stored without validator"),
    ([], [[], []], [], "§4.3.4 no validators, several stored"),
    ([], [[("ETag", '"a"')]], [], "§4.3.4 no validators, stored has one"),
    ([("ETag", 'W/"a"')], [[("ETag", '"a"')]], [0], "§4.3.4 weak comparison for weak validators"),
])
def test_select_by_validator(fresh, stored, expected, section):
    fs = [facts(h + [("Date", D(T0))], resp_t=T0 + i) for i, h in enumerate(stored)]
    assert P.select_by_validator(fresh, fs) == expected, section


@pytest.mark.parametrize("fresh,stored,expected,section", [
    ([("ETag", '"a"')], [("ETag", '"a"')], True, "§4.3.4 the stored strong validator"),
    ([("ETag", '"z"')], [("ETag", '"a"')], False, "§4.3.4 another strong validator: MUST NOT update"),
    ([("ETag", 'W/"a"')], [("ETag", '"a"')], True, "§4.3.4 weak comparison for a weak validator"),
    ([("ETag", 'W/"z"')], [("ETag", '"a"')], False, "§4.3.4 a weak validator matching nothing"),
    ([("Last-Modified", D(T0 - 10))], [("Last-Modified", D(T0 - 10))], True, "§4.3.4 Last-Modified matches"),
    ([("Last-Modified", D(T0 - 5))], [("Last-Modified", D(T0 - 10))], False, "§4.3.4 another Last-Modified"),
    ([], [("ETag", '"a"')], True, "§4.3.1 the 304 answers the one validation edge sent"),
    ([], [], True, "§4.3.4 no validators, one stored without validator"),
])
def test_validates(fresh, stored, expected, section):
    assert P.validates(fresh, facts(stored + [("Date", D(T0))])) is expected, section


@pytest.mark.parametrize("stored,length,head,expected,section", [
    ([("ETag", '"a"')], 10, [("ETag", '"a"'), ("X-V", "2")], True, "§4.3.5 matching ETag: update"),
    ([("ETag", '"a"')], 10, [("ETag", '"b"')], False, "§4.3.5 another ETag: stale"),
    ([], 10, [("ETag", '"b"')], False, "§4.3.5 a validator the stored response lacks: stale"),
    ([("Last-Modified", "lm1")], 10, [("Last-Modified", "lm1")], True, "§4.3.5 matching Last-Modified"),
    ([("Last-Modified", "lm1")], 10, [("Last-Modified", "lm2")], False, "§4.3.5 another Last-Modified"),
    ([("ETag", '"a"'), ("Last-Modified", "lm1")], 10, [("ETag", '"a"'), ("Last-Modified", "lm2")], False,
     "§4.3.5 every received validator must match"),
    ([("ETag", '"a"')], 10, [("ETag", '"a"'), ("Content-Length", "10")], True, "§4.3.5 same Content-Length"),
    ([("ETag", '"a"')], 10, [("ETag", '"a"'), ("Content-Length", "11")], False, "§4.3.5 other Content-Length: stale"),
    ([("ETag", '"a"')], 10, [("X-V", "2")], True, "§4.3.5 no validator or length received: nothing differs"),
])
def test_head_updates(stored, length, head, expected, section):
    assert P.head_updates(stored, length, head) is expected, section


# ---------------------------------------------------------------------------------------
# RFC 9110 §13 client conditionals from the cache
# ---------------------------------------------------------------------------------------

S = [("ETag", '"v1"'), ("Last-Modified", D(T0 - 100)), ("Date", D(T0))]

COND = [
    ("GET", [("If-None-Match", '"v1"')], S, 304, "§13.1.2 match"),
    ("GET", [("If-None-Match", 'W/"v1"')], S, 304, "§13.1.2 weak comparison"),
    ("GET", [("If-None-Match", '"x", "v1"')], S, 304, "§13.1.2 list"),
    ("GET", [("If-None-Match", '"x"')], S, None, "§13.1.2 no match: full response"),
    ("GET", [("If-None-Match", "*")], S, 304, "§13.1.2 *"),
    ("HEAD", [("If-None-Match", '"v1"')], S, 304, "§13.2.2 step 3 HEAD"),
    ("DELETE", [("If-None-Match", '"v1"')], S, 412, "§13.2.2 step 3 other methods"),
    ("GET", [("If-None-Match", '"x"'), ("If-Modified-Since", D(T0))], S, None,
     "§13.2.2 If-Modified-Since ignored with If-None-Match"),
    ("GET", [("If-Modified-Since", D(T0 - 100))], S, 304, "§13.1.3 not modified since (equal)"),
    ("GET", [("If-Modified-Since", D(T0 - 200))], S, None, "§13.1.3 modified since"),
    ("GET", [("If-Modified-Since", "garbage")], S, None, "§13.1.3 invalid date ignored"),
    ("GET", [("If-Modified-Since", D(T0)), ("If-Modified-Since", D(T0))], S, None,
     "§13.1.3 more than one member ignored"),
    ("POST", [("If-Modified-Since", D(T0))], S, None, "§13.1.3 only GET/HEAD"),
    ("GET", [("If-Modified-Since", D(T0))], [("Date", D(T0 - 5))], 304,
     "RFC 9111 §4.3.2 Date when no Last-Modified"),
    ("GET", [("If-Match", '"x"')], S, 412, "§13.2.2 step 1"),
    ("GET", [("If-Match", 'W/"v1"')], S, 412, "§13.1.1 strong comparison"),
    ("GET", [("If-Match", '"v1"'), ("If-None-Match", '"v1"')], S, 304, "§13.2.2 step 1 then 3"),
    ("GET", [("If-Match", "*")], S, None, "§13.1.1 *"),
    ("GET", [("If-Unmodified-Since", D(T0 - 200))], S, 412, "§13.1.4 modified after"),
    ("GET", [("If-Unmodified-Since", D(T0))], S, None, "§13.1.4 unmodified"),
    ("GET", [("If-Match", '"v1"'), ("If-Unmodified-Since", D(T0 - 200))], S, None,
     "§13.2.2 step 2 only without If-Match"),
    ("GET", [], S, None, "no preconditions"),
]


@pytest.mark.parametrize("method,req,stored,expected,section", COND)
def test_client_conditional(method, req, stored, expected, section):
    assert P.client_conditional(method, req, stored, T0) == expected, section


@pytest.mark.parametrize("status", [203, 204, 404, 301])
def test_client_conditional_only_for_stored_200(status):
    # RFC 9111 §4.3.2 (200/206), RFC 9110 §13.2.1 (ignore unless 2xx): served whole
    assert P.client_conditional("GET", [("If-None-Match", '"v1"')], S, T0, stored_status=status) is None


@pytest.mark.parametrize("stored,expected,section", [
    ([("Date", "d"), ("ETag", '"a"'), ("Content-Type", "t"), ("Vary", "X"), ("Cache-Control", "max-age=5"),
      ("Expires", "e"), ("Content-Location", "/c"), ("Last-Modified", "lm"), ("Content-Length", "9")],
     [("Date", "d"), ("ETag", '"a"'), ("Vary", "X"), ("Cache-Control", "max-age=5"), ("Expires", "e"),
      ("Content-Location", "/c")], "RFC 9110 §15.4.5 MUST fields; no other metadata"),
    ([("Date", "d"), ("Last-Modified", "lm"), ("Content-Type", "t")], [("Date", "d"), ("Last-Modified", "lm")],
     "RFC 9110 §15.4.5 Last-Modified when there is no ETag"),
])
def test_not_modified_headers(stored, expected, section):
    assert P.not_modified_headers(stored) == expected, section


# ---------------------------------------------------------------------------------------
# §4.4 invalidation
# ---------------------------------------------------------------------------------------

U = "http://example.com/a/b"

INV = [
    ("POST", 200, [], [U], "§4.4 target URI"),
    ("PUT", 204, [("Location", "/a/c")], [U, "http://example.com/a/c"], "§4.4 Location, same origin"),
    ("DELETE", 301, [("Content-Location", "c")], [U, "http://example.com/a/c"], "§4.4 relative Content-Location"),
    ("POST", 201, [("Location", "http://other.com/x")], [U], "§4.4 MUST NOT: other host"),
    ("POST", 201, [("Location", "https://example.com/x")], [U], "§4.4 MUST NOT: other scheme"),
    ("POST", 201, [("Location", "http://example.com:8080/x")], [U], "§4.4 MUST NOT: other port"),
    ("POST", 201, [("Location", "http://EXAMPLE.com:80/x")], [U, "http://EXAMPLE.com:80/x"],
     "§4.4 same origin, default port"),
    ("POST", 404, [], [], "§4.4 non-error only"),
    ("POST", 500, [], [], "§4.4 non-error only"),
    ("GET", 200, [], [], "§4.4 safe methods do not invalidate"),
    ("PURGEX", 200, [], [U], "§4.4 'methods whose safety is unknown'"),
]


@pytest.mark.parametrize("method,status,resp,expected,section", INV)
def test_invalidation_targets(method, status, resp, expected, section):
    assert P.invalidation_targets(method, status, U, resp) == expected, section


# ---------------------------------------------------------------------------------------
# RFC 9110 §14 ranges
# ---------------------------------------------------------------------------------------

RS = [("ETag", '"s"'), ("Last-Modified", D(T0 - 100)), ("Date", D(T0))]

RANGES = [
    # range, if-range, length, method, (status, start, end, content_range), section
    ("bytes=0-9", None, 100, "GET", (206, 0, 9, "bytes 0-9/100"), "§14.1.2 int-range"),
    ("bytes=90-", None, 100, "GET", (206, 90, 99, "bytes 90-99/100"), "§14.1.2 open-ended"),
    ("bytes=50-500", None, 100, "GET", (206, 50, 99, "bytes 50-99/100"), "§14.1.1 last-pos beyond end"),
    ("bytes=-10", None, 100, "GET", (206, 90, 99, "bytes 90-99/100"), "§14.1.1 suffix"),
    ("bytes=-500", None, 100, "GET", (206, 0, 99, "bytes 0-99/100"), "§14.1.1 suffix longer than body"),
    ("Bytes=0-0", None, 100, "GET", (206, 0, 0, "bytes 0-0/100"), "§14.1 unit case-insensitive"),
    ("bytes=100-", None, 100, "GET", (416, 0, -1, "bytes */100"), "§15.5.17 unsatisfiable"),
    ("bytes=-0", None, 100, "GET", (416, 0, -1, "bytes */100"), "§14.1.1 suffix of 0"),
    ("bytes=0-1,5-6", None, 100, "GET", (200, 0, -1, None), "§14.2 MAY ignore: several ranges -> 200"),
    ("bytes=0-1,500-600", None, 100, "GET", (206, 0, 1, "bytes 0-1/100"), "§15.3.7 single part for one"),
    ("bytes=9-1", None, 100, "GET", (200, 0, -1, None), "§14.1.1 invalid: ignored"),
    ("items=0-1", None, 100, "GET", (200, 0, -1, None), "§14.2 unknown unit ignored"),
    ("bytes=abc", None, 100, "GET", (200, 0, -1, None), "§14.2 invalid ignored"),
    ("bytes=0-9", None, 100, "HEAD", (200, 0, -1, None), "§14.2 GET only"),
    ("bytes=0-9", '"s"', 100, "GET", (206, 0, 9, "bytes 0-9/100"), "§13.1.5 If-Range strong match"),
    ("bytes=0-9", '"other"', 100, "GET", (200, 0, -1, None), "§13.1.5 no match: full"),
    ("bytes=0-9", 'W/"s"', 100, "GET", (200, 0, -1, None), "§13.1.5 weak never matches"),
    ("bytes=0-9", D(T0 - 100), 100, "GET", (206, 0, 9, "bytes 0-9/100"), "§13.1.5 date == Last-Modified"),
    ("bytes=0-9", D(T0 - 99), 100, "GET", (200, 0, -1, None), "§13.1.5 date must match exactly"),
    (None, '"s"', 100, "GET", (200, 0, -1, None), "§13.1.5 If-Range without Range ignored"),
    ("bytes=0-", None, 0, "GET", (416, 0, -1, "bytes */0"), "§14.1.1 empty body"),
]


@pytest.mark.parametrize("rng,if_range,length,method,expected,section", RANGES)
def test_ranges(rng, if_range, length, method, expected, section):
    d = P.ranges(rng, if_range, length, RS, method)
    assert (d.status, d.start, d.end, d.content_range) == expected, section


def test_if_range_date_needs_strong_last_modified():
    # §13.1.5 + §8.8.2.2: a Last-Modified less than a second before Date is weak
    weak = [("Last-Modified", D(T0)), ("Date", D(T0))]
    assert P.ranges("bytes=0-1", D(T0), 10, weak).status == 200


# ---------------------------------------------------------------------------------------
# RFC 9211 Cache-Status, §5.1 Age, RFC 9213 forwarding
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("kw,expected,section", [
    ({"hit": True, "ttl": 42.7}, "edge; hit; ttl=42", "RFC 9211 §2.1, §2.4"),
    ({"hit": True, "ttl": -3.2}, "edge; hit; ttl=-4", "RFC 9211 §2.4 negative when stale"),
    ({"fwd": "uri-miss", "fwd_status": 200, "stored": True}, "edge; fwd=uri-miss; fwd-status=200; stored",
     "RFC 9211 §2.2, §2.3, §2.5"),
    ({"fwd": "stale", "fwd_status": 304, "collapsed": True}, "edge; fwd=stale; fwd-status=304; collapsed",
     "RFC 9211 §2.6"),
    ({"fwd": "bypass", "detail": "store down"}, 'edge; fwd=bypass; detail="store down"', "RFC 9211 §2.8"),
    ({"fwd": "method"}, "edge; fwd=method", "RFC 9211 §2.2"),
    ({"name": "edge-1", "fwd": "vary-miss"}, "edge-1; fwd=vary-miss", "RFC 9211 §2 cache name"),
    ({"fwd": "request", "key": 'a "b"'}, 'edge; fwd=request; key="a \\"b\\""', "RFC 9211 §2.7 sf-string"),
])
def test_cache_status(kw, expected, section):
    assert P.cache_status(**kw) == expected, section


@pytest.mark.parametrize("name", ["edge", "edge-1", "my cache", 'a "b"'])
@pytest.mark.parametrize("ttl", [42.7, 0.0, -3.2, 3599.999])
def test_hit_status_prefix_is_cache_status_up_to_the_ttl(name, ttl):
    # the hit path formats its Cache-Status from this prefix (RFC 9211 §2.1, §2.4)
    assert P.hit_status_prefix(name) + str(math.floor(ttl)) == P.cache_status(name=name, hit=True, ttl=ttl)


def test_cache_status_refuses_unknown_fwd():
    with pytest.raises(ValueError):
        P.cache_status(fwd="nope")


@pytest.mark.parametrize("age,expected", [
    (0, "0"), (1.9, "1"), (-5, "0"), (float("nan"), "0"), (3e12, str(P.DELTA_MAX)), (P.DELTA_MAX, str(P.DELTA_MAX)),
])
def test_age_header(age, expected):
    # §5.1 "Age = delta-seconds", §1.2.2 cap
    assert P.age_header(age) == expected


def test_downstream_strip_keeps_cdn_cache_control():
    # RFC 9213 §3: CDN caches "will typically forward" CDN-Cache-Control
    s = PolicySettings(targeted_fields=("Edge-Cache-Control", "cdn-cache-control"),
                       strip_targeted=("Edge-Cache-Control",))
    assert P.downstream_strip(s) == ("edge-cache-control",)
    assert s.targeted_fields == ("edge-cache-control", "cdn-cache-control")


@pytest.mark.parametrize("kw", [
    {"heuristic_fraction": 2}, {"heuristic_max_s": -1}, {"serve_stale_on_error_s": -1},
    {"default_ttl_s": -1}, {"forced_ttl_s": -5}, {"set_cookie": "eat"},
    {"targeted_fields": ("bad field",)}, {"strip_targeted": ("a:b",)},
])
def test_settings_validation(kw):
    with pytest.raises(ValueError):
        PolicySettings(**kw)


def test_facts_flags():
    f = facts([("Date", D(T0)), ("Cache-Control", "max-age=5, no-transform, public, immutable, s-maxage=9"),
               ("Vary", "Accept-Encoding, accept-encoding, X")])
    assert (f.no_transform, f.public, f.immutable, f.must_revalidate) == (True, True, True, True)
    assert f.vary == ("accept-encoding", "x")


def test_no_transform_from_cache_control_with_targeted_field():
    # §5.2.2.6 concerns every intermediary: Cache-Control's no-transform holds even when a
    # targeted field governs caching
    f = facts([("Date", D(T0)), ("Cache-Control", "no-transform"), ("CDN-Cache-Control", "max-age=9")])
    assert f.no_transform and f.freshness_lifetime == 9


@pytest.mark.parametrize("headers,kw,useful", [
    ([("Cache-Control", "max-age=5")], {}, True),
    ([("ETag", '"a"')], {}, True),
    ([], {}, False),
    ([], {"serve_stale_on_error_s": 10}, True),
    ([("Cache-Control", "max-age=0, stale-if-error=60")], {}, True),
    ([("Cache-Control", "max-age=0, stale-while-revalidate=60")], {}, True),   # RFC 5861 §3: served stale
    ([("Cache-Control", "max-age=0")], {}, False),
])
def test_worth_storing(headers, kw, useful):
    s = PolicySettings(**kw)
    assert P.worth_storing(facts(headers + [("Date", D(T0))], settings=s), s) is useful


@pytest.mark.parametrize("method,status,req,resp,kw", [
    ("GET", 200, [], [("Date", D(T0)), ("Cache-Control", "max-age=60"), ("ETag", '"a"'), ("Age", "3")], {}),
    ("GET", 200, [], [("Cache-Control", "no-cache=\"X-A\", private=\"X-B\""), ("X-A", "1"), ("X-B", "2"),
                      ("Connection", "X-C"), ("X-C", "3"), ("Expires", D(T0 + 30))], {}),     # §3.1 drops
    ("GET", 200, [], [("CDN-Cache-Control", "max-age=9"), ("Cache-Control", "no-store, no-transform")], {}),
    ("GET", 200, [], [("Set-Cookie", "a=1"), ("Cache-Control", "max-age=5")], {"set_cookie": "strip"}),
    ("GET", 200, [], [("Set-Cookie", "a=1"), ("Cache-Control", "max-age=5")], {}),            # refused
    ("GET", 200, [("Authorization", "x")], [("Cache-Control", "max-age=5")], {}),
    ("GET", 404, [], [("Last-Modified", D(T0 - 1000)), ("Date", D(T0)), ("Vary", "A, b")], {}),
    ("POST", 200, [], [("Cache-Control", "max-age=5")], {}),
    ("GET", 200, [], [("Vary", "*"), ("Cache-Control", "max-age=5")], {}),
])
def test_store_plan_answers_as_the_three_functions(method, status, req, resp, kw):
    # one parse on the miss path (store_plan) must decide exactly as storable(),
    # response_facts() and headers_to_store() do one by one
    s = PolicySettings(**kw)
    plan = P.store_plan(method, status, req, resp, T0 - 1, T0, s)
    assert plan.verdict == P.storable(method, status, req, resp, s)
    if plan.verdict.ok:
        assert plan.facts == P.response_facts(T0 - 1, T0, status, resp, s)
        assert plan.headers == P.headers_to_store(resp, T0, s)
        # the cache keeps its purge tags out of the stored copy and never stores Age
        tagged = resp + [("Surrogate-Key", "t1")]
        kept = P.store_plan(method, status, req, tagged, T0 - 1, T0, s, resp, frozenset({"age"})).headers
        assert kept == [(n, v) for n, v in P.headers_to_store(resp, T0, s) if n.lower() != "age"]
    else:
        assert plan.facts is None and plan.headers is None
