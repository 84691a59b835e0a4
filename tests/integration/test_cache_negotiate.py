"""Accept-Language spellings, variants chosen by language, If-Modified-Since without Last-Modified,
and POST responses reused for GET, through a real edge (issue 10).

One edge (gunicorn, 2 workers) per store backend (local, redis, memcached) for the module, in
front of the scripted origin (tests/fixtures/scripted_origin.py), caching with the RFCs'
defaults (as conf/examples/cache.yaml). Every test uses paths of its own; the origin's
per-path counters prove what reached it, and its default body (``<path> <n>``) which answer a
client got. Each request opens a new connection, so consecutive requests may reach either
worker: what one stores the other serves. Requests that must find a response committed
just before wait for it first (``Env.landed``, only-if-cached): a fill commits right after
its last byte went out.
"""

from __future__ import annotations

import concurrent.futures
import email.utils

import pytest

from edge.launch import start_edge
from tests.fixtures.scripted_origin import Canned, ScriptedOrigin
from tests.integration.conftest import store_config, until
from tests.integration.test_cache_conformance import Env, cc, hd

BACKENDS = ["local", "redis", "memcached"]
NO_POST_REUSE = "/c/no-post-reuse/"   # the prefix of the route with reuse_post_responses off


@pytest.fixture(scope="module", params=BACKENDS)
def env(request, tmp_path_factory):
    backend = request.param
    store = store_config(request, backend, "negotiate")
    origin = ScriptedOrigin()
    config = {
        "upstreams": {
            "origin": {
                "servers": [f"127.0.0.1:{origin.port}"],
                "retries": 0,
                "health": {"passive": {"consecutive_failures": 0}},
            },
        },
        "routes": [
            {"name": "site", "match": {"path": "/"}, "upstream": "origin"},
            # the same, but POST answers are never stored (test_post_reuse_switched_off_per_route_...)
            {"name": "no-post-reuse", "match": {"path": NO_POST_REUSE}, "upstream": "origin",
             "cache": {"reuse_post_responses": False}},
        ],
        "store": store,
        "cache": {"enabled": True, "set_cookie": "store"},   # conf/examples/cache.yaml
    }
    edge = start_edge(config, workers=2, work_dir=str(tmp_path_factory.mktemp(f"edge-negotiate-{backend}")))
    yield Env(edge, origin)
    edge.stop()
    origin.stop()


def AL(value: str) -> list[tuple[str, str]]:
    return [("Accept-Language", value)]


def vary_lang(*extra: tuple[str, str], lang: str | None = "de", vary: str = "Accept-Language") -> Canned:
    headers = [("Vary", vary), *extra] + ([("Content-Language", lang)] if lang else [])
    return cc("max-age=3600", headers=headers)


# ------------------------------------------------------------------ RFC 9111 §4.1 Accept-Language spellings

@pytest.mark.parametrize("second", [
    "de, en",                        # §4.1 reordering: equal weights (RFC 9110 §12.4.2)
    "eN, De",                        # §4.1 case-normalisation (RFC 4647 §2.1)
    " en ,   de",                    # §4.1 whitespace
    "de;q=1.0, en;q=1",              # RFC 9110 §12.4.2 q=1 is the default
])
def test_accept_language_spellings_share_one_stored_response(env, second):
    p = env.script(env.path("lang-same"), vary_lang(lang=None))
    first = env.req(p, AL("en, de"))
    env.landed(p, AL("en, de"))
    r = env.req(p, AL(second))
    assert r.hit and r.body == first.body and env.count(p) == 1


@pytest.mark.parametrize("first,second", [
    ("en, de", "en, de;q=0.5"),      # RFC 9110 §12.4.2 other weights: another preference
    ("*", "*, fr;q=0"),              # RFC 9110 §12.4.2 q=0 excludes French: kept in the key
    ("en, en;q=0", "en;q=0, en"),    # a range listed twice: which counts is unknown, spelling kept
])
def test_accept_language_with_another_meaning_is_another_variant(env, first, second):
    p = env.script(env.path("lang-other"), vary_lang(lang=None))
    a = env.req(p, AL(first))
    env.landed(p, AL(first))
    b = env.req(p, AL(second))
    assert not b.hit and b.body != a.body and env.count(p) == 2


# ------------------------------------------------------------------ choosing a variant by its Content-Language

def test_variant_is_chosen_by_the_single_most_preferred_language(env):
    # RFC 9110 §12.5.4 + §8.5: the stored response is in German; German is this client's
    # only top preference, so it is served without asking the origin
    p = env.script(env.path("lang-select"), vary_lang(lang="de"))
    first = env.req(p, AL("en, de"))
    env.landed(p, AL("en, de"))
    for value in ("fr;q=0.5, de;q=1.0", "de", "DE, *;q=0"):
        r = env.req(p, AL(value))
        assert r.hit and r.body == first.body and r.h("Content-Language") == "de", value
    assert env.count(p) == 1


@pytest.mark.parametrize("value", [
    "fr, de;q=0.9",          # another top language
    "de, fr",                # no single top language (a tie)
    "de;q=0, fr",            # RFC 9110 §12.4.2 q=0: German is not acceptable
    "de-ch",                 # RFC 4647 §3.4 lookup's fallback to "de" is not assumed
    "*",                     # any language: the origin's choice
])
def test_variant_is_not_chosen_for_another_preference(env, value):
    p = env.script(env.path("lang-noselect"), vary_lang(lang="de"))
    first = env.req(p, AL("en, de"))
    env.landed(p, AL("en, de"))
    r = env.req(p, AL(value))
    assert not r.hit and r.body != first.body and env.count(p) == 2


def test_a_narrower_variant_is_not_chosen_for_a_wider_range(env):
    # RFC 4647 §3.3.1 basic filtering would let "de" choose "de-CH": the origin may hold plain "de"
    p = env.script(env.path("lang-narrow"), vary_lang(lang="de-CH"))
    env.req(p, AL("de-CH"))
    env.landed(p, AL("de-CH"))
    assert env.req(p, AL("de-ch;q=0.9, fr;q=0.1")).hit       # the same tag still is
    assert not env.req(p, AL("de")).hit and env.count(p) == 2


def test_other_vary_fields_must_still_match(env):
    # RFC 9111 §4.1: every selecting field of the stored request must match
    p = env.script(env.path("lang-xv"), vary_lang(vary="Accept-Language, X-V"))
    env.req(p, AL("en, de") + [("X-V", "1")])
    env.landed(p, AL("en, de") + [("X-V", "1")])
    assert env.req(p, AL("de") + [("X-V", "1")]).hit
    assert not env.req(p, AL("de") + [("X-V", "2")]).hit
    assert env.count(p) == 2


def test_several_languages_are_never_chosen_by_one(env):
    # RFC 9110 §8.5: content for several audiences
    p = env.script(env.path("lang-several"), vary_lang(lang="de, en"))
    env.req(p, AL("en, de"))
    env.landed(p, AL("en, de"))
    assert not env.req(p, AL("de")).hit and env.count(p) == 2


def test_invalidation_reaches_the_variant_chosen_by_language(env):
    # RFC 9111 §4.4: an unsafe request invalidates every stored response of its target URI
    p = env.script(env.path("lang-inval"), vary_lang(lang="de"))
    env.req(p, AL("en, de"))
    env.landed(p, AL("en, de"))
    assert env.req(p, AL("de")).hit
    env.req(p, method="DELETE")
    r = env.req(p, AL("de"))
    assert not r.hit and env.count(p) == 3


def test_newer_variant_in_a_language_replaces_the_older_for_selection(env):
    # two stored responses in German: the language copy holds the one stored last
    p = env.script(env.path("lang-newer"), vary_lang(lang="de"))
    env.req(p, AL("en, de"))
    env.landed(p, AL("en, de"))
    second = env.req(p, AL("de, fr;q=0.5, en;q=0.5"))
    assert second.hit   # chosen by language already
    third = env.req(p, AL("de, fr"))                 # a tie: its own miss, stored in German too
    assert not third.hit
    # its language copy is written just after the variant itself: wait for it (hits either way)
    until(lambda: env.req(p, AL("de;q=0.9, it;q=0.1")).body == third.body, timeout_s=10)
    assert env.count(p) == 2


def test_concurrent_writers_leave_one_whole_variant_per_language(env):
    # many misses at once (both workers), each stored under its own key and also under "de":
    # whatever order the writes land in, a "de" request then gets one of those whole responses
    p = env.script(env.path("lang-race"), vary_lang(lang="de"))
    spellings = [f"de, x{i}" for i in range(12)]    # ties: each is its own variant, none chosen by language
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda v: env.req(p, AL(v)), spellings))
    bodies = {a.body for a in answers}
    for v in spellings:
        env.landed(p, AL(v))
    before = env.count(p)
    for _ in range(6):
        r = env.req(p, AL("de;q=0.8, fr;q=0.2"))
        assert r.hit and r.body in bodies and r.h("Content-Language") == "de"
    assert env.count(p) == before


# ------------------------------------------------------------------ RFC 9111 §4.3.2: If-Modified-Since, no Last-Modified

def test_if_modified_since_is_compared_with_the_stored_date(env):
    date = hd(-60)
    d = email.utils.parsedate_to_datetime(date).timestamp()
    p = env.script(env.path("ims-date"), cc("max-age=3600", headers=[("Date", date)]))
    first = env.req(p)
    env.landed(p)

    def ims(offset_s: float) -> list[tuple[str, str]]:
        return [("If-Modified-Since", email.utils.formatdate(d + offset_s, usegmt=True))]

    # RFC 9110 §13.1.3: modified after the client's date (Date is later): the full response
    earlier = env.req(p, ims(-3000))
    assert earlier.status == 200 and earlier.hit and earlier.body == first.body
    # equal or later: not modified (RFC 9110 §13.2.2 step 4), from the store
    for offset in (0, 30):
        r = env.req(p, ims(offset))
        assert r.status == 304 and r.hit and r.body == b"" and r.h("Date") == date
    # RFC 9110 §13.2.2: If-None-Match first; then If-Modified-Since is ignored
    assert env.req(p, [("If-None-Match", '"nope"'), *ims(30)]).status == 200
    assert env.count(p) == 1


# ------------------------------------------------------------------ RFC 9110 §9.3.3: POST responses reused for GET

def post_answer(location: str, *extra: tuple[str, str], freshness: tuple[str, str] | None = ("Cache-Control", "max-age=3600")):
    return Canned(200, ([freshness] if freshness else []) + [("Content-Location", location), *extra])


@pytest.mark.parametrize("absolute", [False, True])
def test_post_response_with_its_own_content_location_answers_later_gets(env, absolute):
    p = env.path("post")
    location = f"http://127.0.0.1:{env.edge.port}{p}" if absolute else p
    env.script(p, post_answer(location))
    posted = env.req(p, method="POST", body=b"12345")
    assert posted.status == 200 and "stored" in (posted.h("Cache-Status") or "")
    env.landed(p)
    get = env.req(p)
    assert get.hit and get.body == posted.body
    head = env.req(p, method="HEAD")      # RFC 9110 §9.3.3: "a later GET or HEAD request"
    assert head.hit and head.body == b""
    assert env.count(p) == 1 and env.seen(p)[0].method == "POST"


def test_post_invalidates_then_replaces_the_stored_response(env):
    # RFC 9111 §4.4 first (the POST changed the resource), then RFC 9110 §9.3.3
    p = env.path("post-replace")
    env.script(p, cc("max-age=3600"), post_answer(p))
    old = env.req(p)
    env.landed(p)
    posted = env.req(p, method="POST", body=b"x")
    env.landed(p)
    r = env.req(p)
    assert r.hit and r.body == posted.body != old.body and env.count(p) == 2


def test_post_requests_are_never_answered_from_the_store(env):
    # RFC 9110 §9.3.3: "a POST request cannot be satisfied by a cached POST response"
    p = env.path("post-again")
    env.script(p, post_answer(p))
    a = env.req(p, method="POST", body=b"1")
    b = env.req(p, method="POST", body=b"1")
    assert not b.hit and b.body != a.body and env.count(p) == 2


@pytest.mark.parametrize("case", ["other-uri", "other-origin", "authorization", "no-freshness", "heuristic-only",
                                  "no-content-location", "created"])
def test_post_response_not_reused(env, case):
    p = env.path(f"post-{case}")
    headers: list[tuple[str, str]] = []
    answer = post_answer(p)
    if case == "other-uri":
        answer = post_answer(p + "-elsewhere")              # RFC 9110 §9.3.3: same value as the target
    elif case == "other-origin":
        answer = post_answer(f"http://other.test{p}")        # RFC 9110 §4.3.1: another origin
    elif case == "authorization":
        headers = [("Authorization", "Basic eDp5")]          # RFC 9111 §3.5, as for GET
    elif case == "no-freshness":
        answer = post_answer(p, freshness=None)              # RFC 9110 §9.3.3: explicit freshness needed
    elif case == "heuristic-only":
        answer = post_answer(p, ("Last-Modified", hd(-86400)), freshness=None)   # §4.2.2 is not explicit
    elif case == "no-content-location":
        answer = cc("max-age=3600")
    elif case == "created":
        answer = Canned(201, [("Cache-Control", "max-age=3600"), ("Content-Location", p)])   # RFC 9110 §8.7
    env.script(p, answer, cc("max-age=3600"))
    posted = env.req(p, headers, method="POST", body=b"x")
    r = env.req(p)
    assert not r.hit and r.body != posted.body and env.count(p) == 2


def test_post_to_another_uri_never_stores_for_the_named_one(env):
    # the Content-Location of a POST to /a naming /b: /b is invalidated (RFC 9111 §4.4 allows
    # that on the same origin) but never given /a's answer (RFC 9110 §9.3.3: the target only)
    a, b = env.path("post-a"), env.path("post-b")
    env.script(b, cc("max-age=3600"))
    env.script(a, post_answer(b))
    env.req(b)
    env.landed(b)
    posted = env.req(a, method="POST", body=b"x")
    r = env.req(b)
    assert not r.hit and r.body != posted.body and env.count(b) == 2
    assert not env.req(a).hit and env.count(a) == 2   # nor for /a: its Content-Location is not /a


# ------------------------------------------------------------------ a Vary miss asks about the stored variants

def XV(value: str) -> list[tuple[str, str]]:
    return [("X-Variant", value)]


def vary_tagged(etag: str, status: int = 200) -> Canned:
    return Canned(status, [("Cache-Control", "max-age=3600"), ("Vary", "X-Variant"), ("ETag", etag)])


def cache_status(r) -> str:
    return r.h("Cache-Status") or ""


@pytest.mark.parametrize("tag", ['"v1"', 'W/"v1"'])
def test_vary_miss_sends_the_stored_tags_and_a_304_selects_that_variant(env, tag):
    # RFC 9111 §4.1: "forwarded to the origin server, potentially with preconditions added to
    # describe what responses the cache has already stored"; §4.3.4: the 304's validator
    # (strong, or the most recent weak match) identifies the stored response to update
    p = env.script(env.path("vary-select"), vary_tagged(tag), vary_tagged(tag, status=304))
    first = env.req(p, XV("one"))
    env.landed(p, XV("one"))
    r = env.req(p, XV("two"))
    assert r.status == 200 and r.body == first.body and r.h("ETag") == tag
    assert "fwd=vary-miss" in cache_status(r) and "fwd-status=304" in cache_status(r)
    assert env.seen(p)[1].header("if-none-match") == tag and env.count(p) == 2
    # the origin chose that representation for this request's Vary values: now stored for them too
    again = env.req(p, [*XV("two"), ("Cache-Control", "only-if-cached")])
    assert again.status == 200 and again.hit and again.body == first.body and env.count(p) == 2


def test_vary_miss_gets_and_stores_a_new_representation(env):
    p = env.script(env.path("vary-new"), vary_tagged('"a"'), vary_tagged('"b"'), vary_tagged('"a"', status=304))
    first = env.req(p, XV("one"))
    env.landed(p, XV("one"))
    second = env.req(p, XV("two"))
    assert second.body != first.body and second.h("ETag") == '"b"' and "fwd=vary-miss" in cache_status(second)
    assert env.seen(p)[1].header("if-none-match") == '"a"'
    env.landed(p, XV("two"))
    assert env.req(p, XV("one")).body == first.body and env.req(p, XV("two")).body == second.body
    assert env.count(p) == 2
    # a third set of values: both stored tags are offered, and the 304 picks the first variant
    third = env.req(p, XV("three"))
    offered = {t.strip() for t in env.seen(p)[2].header("if-none-match").split(",")}
    assert offered == {'"a"', '"b"'}
    assert third.body == first.body and third.h("ETag") == '"a"' and env.count(p) == 3


def test_a_304_naming_no_stored_variant_is_asked_again_without_conditionals(env):
    # RFC 9111 §4.3.4: "If none of the stored responses contain at least one of the same
    # strong validators, then the cache MUST NOT use the new response to update any stored
    # responses": the client gets the full answer, fetched without the precondition
    p = env.script(env.path("vary-stray"), vary_tagged('"a"'), vary_tagged('"zz"', status=304), vary_tagged('"c"'))
    first = env.req(p, XV("one"))
    env.landed(p, XV("one"))
    r = env.req(p, XV("two"))
    assert r.status == 200 and r.h("ETag") == '"c"' and r.body != first.body
    seen = env.seen(p)
    assert len(seen) == 3 and seen[1].header("if-none-match") == '"a"' and seen[2].header("if-none-match") is None


def test_vary_miss_keeps_the_clients_own_conditional(env):
    # the client's own If-None-Match goes to the origin as sent: a 304 then answers the client
    p = env.script(env.path("vary-client-inm"), vary_tagged('"a"'), vary_tagged('"b"'))
    env.req(p, XV("one"))
    env.landed(p, XV("one"))
    r = env.req(p, [*XV("two"), ("If-None-Match", '"mine"')])
    assert r.status == 200 and env.seen(p)[1].header("if-none-match") == '"mine"'


def test_post_reuse_switched_off_per_route_still_invalidates(env):
    # routes[].cache.reuse_post_responses: false (as nginx and Varnish): the POST invalidates
    # the stored GET (RFC 9111 §4.4 holds whatever the switch) but its answer, reusable by
    # RFC 9110 §9.3.3, is not stored: the GET after it goes to the origin. The default (on)
    # is the tests above, on the route beside this one.
    p = env.path("no-post-reuse/off")
    assert p.startswith(NO_POST_REUSE)
    env.script(p, cc("max-age=3600"), post_answer(p), cc("max-age=3600"))
    old = env.req(p)
    env.landed(p)
    assert env.req(p).hit and env.count(p) == 1
    posted = env.req(p, method="POST", body=b"x")
    assert posted.status == 200 and "stored" not in (posted.h("Cache-Status") or "")
    r = env.req(p)
    assert not r.hit and r.body not in (old.body, posted.body) and env.count(p) == 3
    assert [s.method for s in env.seen(p)] == ["GET", "POST", "GET"]
