"""Accept-Language keys, choosing a variant by language, If-Modified-Since without Last-Modified,
and POST responses reused for GET (issue 10): the pure rules, one table each, every row citing
the section it checks (RFC 9111 by § alone; RFC 9110, RFC 4647 named)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from edge.cache import language as L
from edge.cache import policy as P
from edge.cache.policy import PolicySettings

T0 = 1_800_000_000.0


def D(ts: float) -> str:
    return P.format_http_date(ts)


def AL(value: str) -> list[tuple[str, str]]:
    return [("Accept-Language", value)]


# ---------------------------------------------------------------------------------------
# §4.1 Accept-Language normalised to one form per meaning
# ---------------------------------------------------------------------------------------

SAME_KEY = [
    # first request, second request, same secondary key?, section
    ("en, de", "de, en", True, "§4.1 reordering; RFC 9110 §12.4.2 equal weights are equal preference"),
    ("en, de", "eN, De", True, "§4.1 case-normalisation; RFC 4647 §2.1 ranges case-insensitive"),
    ("en, de", " en ,   de", True, "§4.1 whitespace"),
    ("en,de", "en;q=1, de;q=1.000", True, "RFC 9110 §12.4.2 no weight means q=1"),
    ("fr;q=0.5, de", "de, fr;q=0.50", True, "RFC 9110 §12.4.2 one weight, two spellings"),
    ("fr;Q=0.5, de", "de, fr ; q = 0.5", True, "RFC 9110 §12.4.2 weight case; OWS tolerated as for Accept-Encoding"),
    ("de-CH, de;q=0.8, en;q=0.5", "en;q=0.5, DE-ch, de;q=0.8", True, "§4.1 order among different weights"),
    ("da, en-gb;q=0.8, en;q=0.7", "en;q=0.7, en-GB;q=0.8, da", True, "RFC 9110 §12.5.4 example"),
    ("en, de", "en", False, "a language fewer"),
    ("en, de;q=0.5", "de, en;q=0.5", False, "RFC 9110 §12.4.2 different weights"),
    ("en-gb, en", "en-us, en", False, "RFC 4647 §2.1 different ranges"),
    ("*", "*, fr;q=0", False, "RFC 9110 §12.4.2 q=0 'not acceptable' is kept"),
    ("de, fr;q=0", "de, fr;q=0.001", False, "RFC 9110 §12.4.2 q=0 differs from the least preference"),
    ("en, en;q=0", "en;q=0, en", False, "a range listed twice: which counts is unknown, order kept"),
    ("en;q=2, de", "de, en;q=2", False, "RFC 9110 §12.4.2 invalid qvalue: unknown meaning, order kept"),
    ("en;x=1, de", "de, en;x=1", False, "RFC 9110 §12.5.4 no other parameter: unknown meaning, order kept"),
    ("en_US, de", "de, en_US", False, "RFC 4647 §2.1 not a language-range: order kept"),
    ("EN_us, de", "en_us, de", True, "unreadable values are still case-normalised (RFC 9110 §8.5.1)"),
]


@pytest.mark.parametrize("a,b,same,section", SAME_KEY)
def test_accept_language_secondary_keys(a, b, same, section):
    names = ("accept-language",)
    assert (P.secondary_key(names, AL(a)) == P.secondary_key(names, AL(b))) is same, section


def test_accept_language_lines_combine_and_absent_differs_from_empty():
    names = ("accept-language",)
    # RFC 9110 §5.3: field lines combine into one list
    assert P.secondary_key(names, AL("de") + AL("en")) == P.secondary_key(names, AL("en, de"))
    # §4.1: a field absent from one request and empty in the other do not match
    assert P.secondary_key(names, []) != P.secondary_key(names, AL(""))


@pytest.mark.parametrize("value,expected,section", [
    ("en, de", "de,en", "equal weights ordered by range"),
    ("fr;q=0.5, DE;q=1.0, *;q=0", "de,fr;q=0.5,*;q=0", "weights descending; q=1 left out; q=0 kept"),
    ("en;q=0.100, de;q=0.1", "de;q=0.1,en;q=0.1", "RFC 9110 §12.4.2 shortest weight spelling"),
    ("", "", "RFC 9110 §5.6.1 empty list"),
    ("en, en", None, "a range twice"),
    ("en;q=0.1234", None, "RFC 9110 §12.4.2 at most three decimals"),
    ("en;q", None, "a weight without value"),
    ("123", None, "RFC 4647 §2.1 a range starts with letters"),
    ("abcdefghi", None, "RFC 4647 §2.1 at most 8 letters"),
])
def test_canonical_form(value, expected, section):
    assert L.canonical([value]) == expected, section


# ---------------------------------------------------------------------------------------
# RFC 9110 §12.1/§12.5.4 + §8.5: the one language a request prefers most
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("value,expected,section", [
    ("fr;q=0.5, de;q=1.0", "de", "RFC 9110 §12.4.2 the strictly highest weight"),
    ("de", "de", "one range"),
    ("DE-ch, de;q=0.9", "de-ch", "lower case"),
    ("en, de", None, "a tie: the origin's tie-break is unknown"),
    ("en;q=0.5, de;q=0.5, fr;q=0.1", None, "a tie at the top"),
    ("*", None, "RFC 4647 §2.1 '*' is no language"),
    ("*, de;q=0.5", None, "'*' preferred: any language, the origin's choice"),
    ("de;q=0", None, "RFC 9110 §12.4.2 q=0 is not acceptable"),
    ("", None, "RFC 9110 §5.6.1 empty list"),
    ("de-ch, de;q=0", None, "RFC 4647 §3.3.1 an exclusion that filters the preferred tag"),
    ("de, de-ch;q=0", "de", "RFC 4647 §3.3.1 an exclusion of a narrower range leaves 'de'"),
    ("de, *;q=0", "de", "RFC 4647 §3.3.1 HTTP's '*' matches only ranges not listed"),
    ("de, de;q=0.5", None, "a range twice"),
    ("de;q=x, fr;q=0.5", None, "RFC 9110 §12.4.2 invalid weight: unreadable"),
])
def test_preferred_range(value, expected, section):
    assert L.preferred_range([value]) == expected, section


def test_no_accept_language_has_no_preferred_language():
    # RFC 9110 §12.5.4: no field "implies that the user agent will accept any language"
    assert L.preferred_range([]) is None


@pytest.mark.parametrize("values,expected,section", [
    (["de"], "de", "RFC 9110 §8.5 one language tag"),
    ([" DE-CH "], "de-ch", "RFC 9110 §8.5.1 case-insensitive"),
    (["de, en"], None, "RFC 9110 §8.5 several audiences: never chosen by one language"),
    (["de", "en"], None, "two field lines"),
    ([], None, "absent"),
    (["*"], None, "RFC 4647 §2.1 '*' is a range, not a tag"),
    (["de_DE"], None, "not a language tag (RFC 5646)"),
])
def test_content_language(values, expected, section):
    assert L.content_language(values) == expected, section


SELECT = [
    # vary, request that stored (and its response's Content-Language), later request, chosen?, section
    (("accept-language",), AL("en, de"), "de", AL("fr;q=0.5, de;q=1.0"), True,
     "RFC 9110 §12.5.4 + §8.5 the later request's single top language is the variant's"),
    (("accept-language",), AL("en, de"), "DE", AL("de"), True, "RFC 9110 §8.5.1 tags case-insensitive"),
    (("accept-language",), AL("en, de"), "de", AL("fr, de;q=0.9"), False, "another top language"),
    (("accept-language",), AL("en, de"), "de", AL("de, fr"), False, "no single top language"),
    (("accept-language",), AL("en, de"), "de", AL("de;q=0, fr"), False, "RFC 9110 §12.4.2 q=0 excluded"),
    (("accept-language",), AL("en, de"), "de-ch", AL("de"), False,
     "RFC 4647 §3.3.1 basic filtering refused: 'de' does not choose a 'de-CH' variant"),
    (("accept-language",), AL("en, de"), "de", AL("de-ch"), False, "RFC 4647 §3.4 lookup's fallback refused"),
    (("accept-language",), AL("en, de"), "de, en", AL("de"), False, "RFC 9110 §8.5 several languages"),
    (("accept-language", "x-v"), AL("en, de") + [("X-V", "1")], "de", AL("de") + [("X-V", "1")], True,
     "§4.1 the other Vary fields match"),
    (("accept-language", "x-v"), AL("en, de") + [("X-V", "1")], "de", AL("de") + [("X-V", "2")], False,
     "§4.1 another Vary field differs"),
    (("accept-language", "x-v"), AL("en, de") + [("X-V", "1")], "de", AL("de"), False,
     "§4.1 another Vary field absent"),
    (("accept-encoding",), AL("en, de"), "de", AL("de"), False, "the response does not vary on Accept-Language"),
    (("accept-language", "*"), AL("en, de"), "de", AL("de"), False, "§4.1 Vary: * never matches"),
]


@pytest.mark.parametrize("vary,stored_req,tag,req,chosen,section", SELECT)
def test_language_selection(vary, stored_req, tag, req, chosen, section):
    stored_key = P.variant_language_key(vary, stored_req, [("Content-Language", tag)])
    found = P.language_selection(vary, req)
    assert (stored_key is not None and found is not None and found[1] == stored_key) is chosen, section


@pytest.mark.parametrize("vary", [("accept-language",), ("accept-language", "content-language"),
                                  ("accept-language", "\x00content-language"), ("a", "accept-language", "z")])
def test_language_keys_never_equal_a_request_key(vary):
    # a variant's language copy must never be found by a request's own secondary key (§4.1):
    # both are computed with the same Vary names (one index), whatever the request sends
    copy = P.variant_language_key(vary, AL("de"), [("Content-Language", "de")])
    assert copy is not None
    for value in ("de", "\x00content-language:de", "content-language:de", "de\n\x00content-language:de"):
        for other in ([], [("Content-Language", "de")], [("\x00content-language", "de")], [("a", "1"), ("z", "2")]):
            assert P.secondary_key(vary, AL(value) + other) != copy


def test_stored_language():
    assert P.stored_language([("Content-Language", "De")]) == "de"
    assert P.stored_language([("Content-Type", "text/plain")]) is None


# ---------------------------------------------------------------------------------------
# RFC 9110 §13.1.3 / §13.2.2, RFC 9111 §4.3.2: If-Modified-Since against a stored response
# ---------------------------------------------------------------------------------------

IMS = [
    # request fields, stored fields, received, expected, section
    ([("If-Modified-Since", D(T0 - 3000))], [("Date", D(T0))], T0, None,
     "§4.3.2 Date stands for Last-Modified; RFC 9110 §13.1.3 modified after the client's date: 200"),
    ([("If-Modified-Since", D(T0))], [("Date", D(T0))], T0, 304, "RFC 9110 §13.1.3 equal: not modified"),
    ([("If-Modified-Since", D(T0 + 60))], [("Date", D(T0))], T0, 304, "RFC 9110 §13.1.3 earlier: not modified"),
    ([("If-Modified-Since", D(T0 - 3000))], [("Date", D(T0)), ("Last-Modified", D(T0 - 3000))], T0, 304,
     "§4.3.2 Last-Modified first"),
    ([("If-Modified-Since", D(T0 - 3000))], [("Date", D(T0)), ("Last-Modified", "garbage")], T0, None,
     "an invalid Last-Modified counts as absent: Date"),
    ([("If-Modified-Since", D(T0 - 3000))], [("Date", "garbage")], T0 - 3000, 304,
     "§4.3.2 no usable Date: the time it was received (RFC 9110 §6.6.1)"),
    ([("If-Modified-Since", D(T0 - 3000))], [], T0 - 2999, None, "§4.3.2 no Date: received after the client's date"),
    ([("If-Modified-Since", D(T0 - 3000))], [], None, None, "no date at all: RFC 9110 §13.1.3 ignored"),
    ([("If-Modified-Since", D(T0 + 3600))], [("Date", D(T0 + 7200))], T0, None,
     "RFC 9110 §13.1.3 the origin's clock: a Date ahead of edge's is compared as it is"),
    ([("If-Modified-Since", D(T0 + 7200))], [("Date", D(T0 + 7200))], T0, 304,
     "RFC 9110 §13.1.3 a future Date equal to the client's date"),
    ([("If-None-Match", '"x"'), ("If-Modified-Since", D(T0))], [("Date", D(T0 - 10)), ("ETag", '"y"')], T0, None,
     "RFC 9110 §13.2.2 If-None-Match first: no match, If-Modified-Since ignored"),
    ([("If-None-Match", 'W/"y"'), ("If-Modified-Since", D(T0 - 3000))], [("Date", D(T0)), ("ETag", '"y"')], T0, 304,
     "RFC 9110 §13.1.2 weak comparison; If-Modified-Since ignored"),
    ([("If-Modified-Since", D(T0)), ("If-Modified-Since", D(T0))], [("Date", D(T0))], T0, None,
     "RFC 9110 §13.1.3 more than one member: ignored"),
]


@pytest.mark.parametrize("req,stored,received,expected,section", IMS)
def test_if_modified_since_without_last_modified(req, stored, received, expected, section):
    assert P.client_conditional("GET", req, stored, received) == expected, section


# ---------------------------------------------------------------------------------------
# RFC 9110 §9.3.3 / §8.7: a POST response reused for GET
# ---------------------------------------------------------------------------------------

U = "http://example.com/a/p?x=1"


@pytest.mark.parametrize("location,same,section", [
    ("/a/p?x=1", True, "RFC 9110 §8.7 partial-URI resolved against the target"),
    ("p?x=1", True, "RFC 9110 §8.7 relative reference"),
    ("http://example.com/a/p?x=1", True, "RFC 9110 §8.7 absolute-URI"),
    ("HTTP://EXAMPLE.COM:80/a/p?x=1", True, "RFC 9110 §4.2.3 scheme/host case and default port"),
    ("/a/p", False, "another query"),
    ("/a/p?x=2", False, "another query"),
    ("/a/P?x=1", False, "paths are case-sensitive"),
    ("/a/q?x=1", False, "another path"),
    ("http://example.com:8080/a/p?x=1", False, "RFC 9110 §4.3.1 another origin (port)"),
    ("https://example.com/a/p?x=1", False, "another origin (scheme)"),
    ("http://other.test/a/p?x=1", False, "another origin (host)"),
    ("http://u@example.com/a/p?x=1", False, "RFC 9110 §4.2.4 userinfo"),
    ("/a/p?x=1#f", False, "RFC 9110 §8.7 no fragment"),
    ("/a/p x?x=1", False, "not a URI"),
    ("", False, "empty"),
    ("http://[::1/a/p", False, "unparseable"),
])
def test_content_location_is_target(location, same, section):
    assert P.content_location_is_target(U, location) is same, section


def test_content_location_root_path():
    # RFC 9110 §4.2.3: an empty path is "/"
    assert P.content_location_is_target("http://example.com/", "http://example.com")


POST = [
    # status, request fields, response fields, settings, ok, section
    (200, [], [("Cache-Control", "max-age=60"), ("Content-Location", "/a/p?x=1")], {}, True,
     "RFC 9110 §9.3.3 explicit freshness and Content-Location = target"),
    (200, [], [("Expires", D(T0 + 60)), ("Date", D(T0)), ("Content-Location", U)], {}, True,
     "RFC 9110 §9.3.3 Expires is explicit (§4.2.1)"),
    (203, [], [("Cache-Control", "s-maxage=60"), ("Content-Location", U)], {}, True, "§4.2.1 s-maxage"),
    (200, [], [("CDN-Cache-Control", "max-age=60"), ("Content-Location", U)], {}, True,
     "RFC 9213 the targeted field's max-age is explicit"),
    (200, [], [("Content-Location", U), ("Last-Modified", D(T0 - 86400)), ("Date", D(T0))], {}, False,
     "RFC 9110 §9.3.3 heuristic freshness is not explicit"),
    (200, [], [("Cache-Control", "public"), ("Content-Location", U)], {}, False, "public is not freshness"),
    (200, [], [("Content-Location", U)], {"forced_ttl_s": 60}, False, "a route's forced TTL is not the origin's"),
    (200, [], [("Cache-Control", "max-age=60")], {}, False, "RFC 9110 §9.3.3 no Content-Location"),
    (200, [], [("Cache-Control", "max-age=60"), ("Content-Location", "/other")], {}, False,
     "RFC 9110 §9.3.3 Content-Location names another URI"),
    (200, [], [("Cache-Control", "max-age=60"), ("Content-Location", "http://other.test/a/p?x=1")], {}, False,
     "RFC 9110 §9.3.3 Content-Location on another origin"),
    (200, [], [("Cache-Control", "max-age=60"), ("Content-Location", U), ("Content-Location", U)], {}, False,
     "two Content-Location lines"),
    (201, [], [("Cache-Control", "max-age=60"), ("Content-Location", U)], {}, False,
     "RFC 9110 §8.7 a 201 describes the action"),
    (204, [], [("Cache-Control", "max-age=60"), ("Content-Location", U)], {}, False, "no content"),
    (200, [("Authorization", "Basic eDp5")], [("Cache-Control", "max-age=60"), ("Content-Location", U)], {}, False,
     "§3.5 Authorization, as for GET"),
    (200, [("Authorization", "Basic eDp5")], [("Cache-Control", "max-age=60, public"), ("Content-Location", U)], {},
     True, "§3.5 unless public allows it"),
    (200, [], [("Cache-Control", "max-age=60, no-store"), ("Content-Location", U)], {}, False, "§3 no-store"),
    (200, [], [("Cache-Control", "max-age=60, private"), ("Content-Location", U)], {}, False, "§3 private (shared)"),
    (200, [("Cache-Control", "no-store")], [("Cache-Control", "max-age=60"), ("Content-Location", U)], {}, False,
     "§5.2.1.5 request no-store"),
]


@pytest.mark.parametrize("status,req,resp,kw,ok,section", POST)
def test_post_response_storable_for_its_target(status, req, resp, kw, ok, section):
    s = PolicySettings(**kw)
    assert P.storable("POST", status, req, resp, s, post_target=U).ok is ok, section
    plan = P.store_plan("POST", status, req, resp, T0, T0, s, post_target=U)
    assert plan.verdict.ok is ok, section                                 # the miss path decides the same


def test_post_response_without_a_target_and_other_methods_are_not_stored():
    resp = [("Cache-Control", "max-age=60"), ("Content-Location", U)]
    assert P.storable("POST", 200, [], resp).reason == "method"                   # §3 no target given
    assert P.storable("PUT", 200, [], resp, post_target=U).reason == "method"     # RFC 9110 §9.3.4: PUT never
    assert P.storable("PATCH", 200, [], resp, post_target=U).reason == "method"


def test_post_target_is_invalidated_even_when_its_response_is_stored():
    # RFC 9111 §4.4: the POST invalidates its target (the cache does that first, then stores)
    assert P.invalidation_targets("POST", 200, U, [("Content-Location", U)]) == [U]


# ---------------------------------------------------------------------------------------
# properties (hypothesis): any spelling of one preference list gives one key; nothing raises
# ---------------------------------------------------------------------------------------

_subtag = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=8)
_range = st.one_of(st.just("*"), st.tuples(st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=8),
                                            st.lists(_subtag, max_size=2)).map(lambda t: "-".join([t[0], *t[1]])))
_weight = st.one_of(st.none(), st.sampled_from(["0", "1", "0.5", "0.25", "0.001", "0.999", "1.000", "0.50"]))
_ows = st.sampled_from(["", " ", "\t", "  "])


@settings(max_examples=200, deadline=None, database=None)
@given(st.lists(st.tuples(_range, _weight), min_size=1, max_size=6, unique_by=lambda m: m[0]), st.data())
def test_every_spelling_of_one_preference_list_has_one_key(members, data):
    # §4.1 with RFC 9110 §12.4.2: the same (range, weight) pairs in any order, case, whitespace
    # and weight spelling give one secondary key, and one preferred language
    def spell(ms):
        out = []
        for rng, q in ms:
            shown = "".join(c.upper() if data.draw(st.booleans()) else c for c in rng)
            if q is not None:
                shown += data.draw(_ows) + ";" + data.draw(_ows) + data.draw(st.sampled_from(["q", "Q"])) + "=" + q
            out.append(data.draw(_ows) + shown + data.draw(_ows))
        return ",".join(out)

    shuffled = data.draw(st.permutations(members))
    a, b = spell(members), spell(shuffled)
    names = ("accept-language",)
    assert P.secondary_key(names, AL(a)) == P.secondary_key(names, AL(b))
    assert L.preferred_range([a]) == L.preferred_range([b])
    canon = L.canonical([a])
    assert canon is not None and L.canonical([canon]) == canon          # a fixed point


@settings(max_examples=300, deadline=None, database=None)
@given(st.text(max_size=60), st.text(max_size=40))
def test_language_and_location_rules_never_raise(value, location):
    # whatever a client or an origin sends, the rules answer with a value
    L.canonical([value])
    L.preferred_range([value])
    L.content_language([value])
    P.language_selection(("accept-language", "x"), AL(value))
    P.variant_language_key(("accept-language",), AL(value), [("Content-Language", value)])
    assert isinstance(P.content_location_is_target(U, location), bool)
