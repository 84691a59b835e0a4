"""Partial content through edge's shared cache (issue 10): storing 206 responses, serving the
ranges they hold, completing them (RFC 9111 §3.3, §3.4; RFC 9110 §14, §15.3.7; RFC 9211).

A real edge (gunicorn, 2 workers) with the RFC defaults in front of a scripted origin
(tests/fixtures/scripted_origin.py) that answers each path from a queue of canned responses
and records every request, so a test sees both what the client got and what edge asked the
origin. The main case runs on each store backend (local, redis, memcached); the others on
the default ``local`` store. Every client request opens a new connection (either worker).
"""

from __future__ import annotations


import pytest

from edge.launch import start_edge
from tests.fixtures.scripted_origin import Canned, ScriptedOrigin
from tests.integration.conftest import store_config, until
from tests.integration.test_cache_conformance import Env, cc, parse_cache_status

BACKENDS = ["local", "redis", "memcached"]
TEN = b"0123456789"


def part(first: int, last: int, total: int = 10, body: bytes = TEN, etag: str | None = '"v1"', extra=()) -> Canned:
    """A 206 of ``body[first:last + 1]`` with its Content-Range, fresh for an hour."""
    headers = [("Cache-Control", "max-age=3600"), ("Content-Range", f"bytes {first}-{last}/{total}")]
    if etag is not None:
        headers.append(("ETag", etag))
    return Canned(206, headers + list(extra), body[first:last + 1])


def status_of(r) -> dict:
    """edge's Cache-Status member (RFC 9211 §2) as a dict of its parameters."""
    return next(params for name, params in parse_cache_status(r.h("Cache-Status") or "") if name == "edge")


def config(origin: ScriptedOrigin, store: dict | None = None) -> dict:
    cfg = {
        "upstreams": {"origin": {"servers": [f"127.0.0.1:{origin.port}"], "retries": 0,
                                 "health": {"passive": {"consecutive_failures": 0}}}},
        "routes": [
            {"name": "small", "match": {"host": ["small.test"]}, "upstream": "origin",
             "cache": {"max_object_size": "1KiB"}},
            {"name": "site", "match": {"path": "/"}, "upstream": "origin"},
        ],
        "cache": {"enabled": True},
    }
    if store is not None:
        cfg["store"] = store
    return cfg


def stored(env: Env, path: str, rng: str) -> None:
    """Wait until the stored partial answers ``rng`` without the origin (only-if-cached,
    RFC 9111 §5.2.1.7): a fill commits just after the response's last byte went out."""
    until(lambda: env.req(path, [("Range", rng), ("Cache-Control", "only-if-cached")]).status == 206, timeout_s=10)


def completed(env: Env, path: str) -> None:
    until(lambda: env.req(path, [("Cache-Control", "only-if-cached")]).status == 200, timeout_s=10)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    origin = ScriptedOrigin()
    edge = start_edge(config(origin), workers=2, work_dir=str(tmp_path_factory.mktemp("edge-partial")))
    yield Env(edge, origin)
    edge.stop()
    origin.stop()


@pytest.fixture(scope="module", params=BACKENDS)
def backend_env(request, tmp_path_factory):
    backend = request.param
    store = store_config(request, backend, "partial")
    origin = ScriptedOrigin()
    edge = start_edge(config(origin, store), workers=2, work_dir=str(tmp_path_factory.mktemp(f"edge-partial-{backend}")))
    yield Env(edge, origin)
    edge.stop()
    origin.stop()


# ------------------------------------------------------------------------------ the main case, every store

def test_partial_is_stored_served_and_completed(backend_env):
    env = backend_env
    p = env.script(env.path("main"), part(0, 4), part(5, 9))
    first = env.req(p, [("Range", "bytes=0-4")])
    assert first.status == 206 and first.body == b"01234"
    assert status_of(first).get("stored") is True                 # RFC 9211 §2.5
    stored(env, p, "bytes=0-4")
    # RFC 9111 §3.3: "the request is partial and specifies a range wholly within the incomplete response"
    for rng, body, content_range in (("bytes=0-4", b"01234", "bytes 0-4/10"), ("bytes=1-3", b"123", "bytes 1-3/10")):
        r = env.req(p, [("Range", rng)])
        assert r.status == 206 and r.body == body and r.h("Content-Range") == content_range
        assert r.hit and status_of(r).get("hit") is True and r.h("Age").isdigit()      # RFC 9211 §2.1, RFC 9111 §5.1
    # RFC 9110 §14.1.1 / §15.5.17: the stored complete length proves bytes=20- unsatisfiable
    r = env.req(p, [("Range", "bytes=20-")])
    assert r.status == 416 and r.h("Content-Range") == "bytes */10" and r.hit
    assert env.count(p) == 1
    # a plain GET completes it: only the missing bytes are asked for, with If-Range (RFC 9111 §3.4)
    full = env.req(p)
    assert full.status == 200 and full.body == TEN and full.h("Content-Range") is None
    s = status_of(full)
    assert s["fwd"] == "partial" and s["fwd-status"] == "206" and s.get("stored") is True   # RFC 9211 §2.2, §2.3
    asked = env.seen(p)[-1]
    assert asked.header("range") == "bytes=5-" and asked.header("if-range") == '"v1"' and env.count(p) == 2
    # the complete response is stored: every later request is answered without the origin
    completed(env, p)
    r = env.req(p)
    assert r.status == 200 and r.body == TEN and r.hit
    r = env.req(p, [("Range", "bytes=7-8")])
    assert r.status == 206 and r.body == b"78" and r.hit
    assert env.count(p) == 2


# ------------------------------------------------------------------------------ serving from a stored partial

def test_a_stored_tail_serves_int_open_and_suffix_ranges(env):
    p = env.script(env.path("tail"), part(4, 9))
    assert env.req(p, [("Range", "bytes=-6")]).body == b"456789"
    stored(env, p, "bytes=-6")
    for rng, body, content_range in (("bytes=6-8", b"678", "bytes 6-8/10"), ("bytes=6-", b"6789", "bytes 6-9/10"),
                                     ("bytes=-1", b"9", "bytes 9-9/10"), ("bytes=-6", b"456789", "bytes 4-9/10")):
        r = env.req(p, [("Range", rng)])
        assert (r.status, r.body, r.h("Content-Range")) == (206, body, content_range), rng
        assert r.hit
    assert env.count(p) == 1


def test_a_range_the_partial_does_not_hold_is_completed_and_cut(env):
    # the client's range runs past the stored bytes: edge completes the representation,
    # sends the client its range and stores the whole (RFC 9111 §3.4)
    p = env.script(env.path("past"), part(0, 4), part(5, 9))
    env.req(p, [("Range", "bytes=0-4")])
    stored(env, p, "bytes=0-4")
    r = env.req(p, [("Range", "bytes=3-7")])
    assert r.status == 206 and r.body == b"34567" and r.h("Content-Range") == "bytes 3-7/10"
    assert status_of(r)["fwd"] == "partial"
    assert env.seen(p)[-1].header("range") == "bytes=5-"
    completed(env, p)
    assert env.req(p).body == TEN and env.count(p) == 2


def test_a_missing_head_is_fetched_and_put_first(env):
    p = env.script(env.path("head"), part(4, 9), part(0, 3))
    env.req(p, [("Range", "bytes=-6")])
    stored(env, p, "bytes=-6")
    r = env.req(p)
    assert r.status == 200 and r.body == TEN
    assert env.seen(p)[-1].header("range") == "bytes=0-3" and env.seen(p)[-1].header("if-range") == '"v1"'
    completed(env, p)
    assert env.count(p) == 2


def test_a_strong_last_modified_completes_too(env):
    # RFC 9110 §8.8.2.2 / §13.1.5: a Last-Modified a second or more before Date is strong
    lm = "Mon, 02 Jan 2023 03:04:05 GMT"
    p = env.script(env.path("lm"), part(0, 4, etag=None, extra=[("Last-Modified", lm)]),
                   part(5, 9, etag=None, extra=[("Last-Modified", lm)]))
    env.req(p, [("Range", "bytes=0-4")])
    stored(env, p, "bytes=0-4")
    r = env.req(p)
    assert r.status == 200 and r.body == TEN and env.seen(p)[-1].header("if-range") == lm


def test_a_part_that_is_the_whole_representation_answers_as_a_200(env):
    # RFC 9110 §15.3.7.3: the entire range "as if it were a complete 200 (OK) response"
    p = env.script(env.path("whole-part"), part(0, 9, etag=None))
    env.req(p, [("Range", "bytes=0-")])
    stored(env, p, "bytes=0-")
    r = env.req(p)
    assert r.status == 200 and r.body == TEN and r.h("Content-Range") is None and r.hit
    head = env.req(p, method="HEAD")
    assert head.status == 200 and head.h("Content-Length") == "10" and head.hit
    assert env.count(p) == 1


def test_client_validators_are_answered_from_the_partial(env):
    # RFC 9111 §4.3.2: a stored 206 answers the client's own If-None-Match
    p = env.script(env.path("inm"), part(0, 4))
    env.req(p, [("Range", "bytes=0-4")])
    stored(env, p, "bytes=0-4")
    r = env.req(p, [("If-None-Match", '"v1"')])
    assert r.status == 304 and r.h("ETag") == '"v1"' and r.hit and env.count(p) == 1


def test_a_large_partial_in_chunks_serves_and_completes(env):
    # bodies over 512 KiB are stored in chunks: ranges and completion read them chunk by chunk
    body = bytes(range(256)) * 4800                     # 1,228,800 bytes
    p = env.script(env.path("big"), part(0, 699_999, total=len(body), body=body),
                   part(700_000, len(body) - 1, total=len(body), body=body))
    assert env.req(p, [("Range", "bytes=0-699999")]).body == body[:700_000]
    stored(env, p, "bytes=0-699999")
    r = env.req(p, [("Range", "bytes=524280-524300")])      # across the first chunk boundary
    assert r.status == 206 and r.body == body[524_280:524_301] and r.hit
    r = env.req(p)
    assert r.status == 200 and r.body == body and env.seen(p)[-1].header("range") == "bytes=700000-"
    completed(env, p)
    r = env.req(p, [("Range", "bytes=-10")])
    assert r.status == 206 and r.body == body[-10:] and r.hit and env.count(p) == 2


def test_partials_are_kept_per_variant(env):
    # RFC 9111 §4.1: a partial is one variant like any stored response
    p = env.script(env.path("vary"), part(0, 4, extra=[("Vary", "Accept-Language")]))
    en, fr = ("Accept-Language", "en"), ("Accept-Language", "fr")
    env.req(p, [en, ("Range", "bytes=0-4")])
    until(lambda: env.req(p, [en, ("Range", "bytes=1-2"), ("Cache-Control", "only-if-cached")]).status == 206,
          timeout_s=10)
    r = env.req(p, [en, ("Range", "bytes=1-2")])
    assert r.body == b"12" and r.hit and env.count(p) == 1
    r = env.req(p, [fr, ("Range", "bytes=1-2")])
    assert not r.hit and env.count(p) == 2


# ------------------------------------------------------------------------------ never answered as complete

def test_a_partial_never_answers_a_request_without_range(env):
    # RFC 9111 §3.3: "A cache MUST NOT use an incomplete response to answer requests unless the
    # response has been made complete"; without a validator it cannot be combined (§3.4), so
    # the client's request goes to the origin as it was sent
    p = env.script(env.path("nov"), part(0, 4, etag=None), cc("max-age=3600", body=TEN))
    env.req(p, [("Range", "bytes=0-4")])
    stored(env, p, "bytes=0-4")
    head = env.req(p, method="HEAD")
    assert head.status == 200 and head.h("Content-Range") is None and env.count(p) == 2
    r = env.req(p)
    assert r.status == 200 and r.body == TEN and status_of(r)["fwd"] == "partial"
    assert env.seen(p)[-1].header("range") is None and env.count(p) == 3
    completed(env, p)
    assert env.req(p, [("Range", "bytes=0-1")]).body == b"01" and env.count(p) == 3


def test_a_weak_validator_is_not_combined(env):
    # RFC 9111 §3.4: only parts that "share the same strong validator"
    p = env.script(env.path("weak"), part(0, 4, etag='W/"v1"'), cc("max-age=3600", headers=[("ETag", 'W/"v1"')], body=TEN))
    env.req(p, [("Range", "bytes=0-4")])
    stored(env, p, "bytes=0-4")
    r = env.req(p)
    assert r.status == 200 and r.body == TEN
    last = env.seen(p)[-1]
    assert last.header("range") is None and last.header("if-range") is None


def test_only_if_cached_with_a_partial_that_cannot_answer(env):
    p = env.script(env.path("oic"), part(0, 4))
    env.req(p, [("Range", "bytes=0-4")])
    stored(env, p, "bytes=0-4")
    # RFC 9111 §5.2.1.7: "respond using a stored response or ... a 504 (Gateway Timeout)"
    assert env.req(p, [("Cache-Control", "only-if-cached")]).status == 504
    assert env.req(p, [("Range", "bytes=3-8"), ("Cache-Control", "only-if-cached")]).status == 504
    assert env.count(p) == 1


# ------------------------------------------------------------------------------ the origin's part does not fit

def test_a_changed_validator_is_not_combined(env):
    # RFC 9110 §15.3.7.3: "These ranges can only be safely combined if they all have in common
    # the same strong validator": an origin that ignored If-Range sent another representation's
    # bytes; edge asks again as the client did and relays that answer
    p = env.script(env.path("changed"), part(0, 4), part(5, 9, body=b"abcdefghij", etag='"v2"'),
                   cc("max-age=3600", headers=[("ETag", '"v2"')], body=b"abcdefghij"))
    env.req(p, [("Range", "bytes=0-4")])
    stored(env, p, "bytes=0-4")
    r = env.req(p)
    assert r.status == 200 and r.body == b"abcdefghij" and r.h("ETag") == '"v2"'
    seen = env.seen(p)
    assert len(seen) == 3 and seen[1].header("range") == "bytes=5-" and seen[2].header("range") is None
    completed(env, p)
    assert env.req(p).body == b"abcdefghij" and env.count(p) == 3


def test_a_changed_representation_comes_back_whole(env):
    # RFC 9110 §13.1.5: If-Range does not match at the origin: it sends the whole 200, which
    # the client gets and which replaces the partial
    p = env.script(env.path("whole"), part(0, 4), cc("max-age=3600", headers=[("ETag", '"v2"')], body=b"ABCDEFGHIJ"))
    env.req(p, [("Range", "bytes=0-4")])
    stored(env, p, "bytes=0-4")
    r = env.req(p)
    assert r.status == 200 and r.body == b"ABCDEFGHIJ" and env.count(p) == 2
    completed(env, p)
    assert env.req(p, [("Range", "bytes=0-1")]).body == b"AB" and env.count(p) == 2


# ------------------------------------------------------------------------------ what is not stored

def test_multipart_and_inconsistent_partials_are_not_stored(env):
    multipart = Canned(206, [("Cache-Control", "max-age=3600"), ("Content-Type", "multipart/byteranges; boundary=B")],
                       b"--B\r\nContent-Range: bytes 0-0/10\r\n\r\n0\r\n--B\r\nContent-Range: bytes 5-5/10\r\n\r\n5\r\n--B--\r\n")
    # RFC 9110 §14.4: a Content-Range of six bytes around five bytes of content
    short = Canned(206, [("Cache-Control", "max-age=3600"), ("Content-Range", "bytes 4-9/10")], b"01234")
    for name, canned, rng in (("multi", multipart, "bytes=0-0,5-5"), ("short", short, "bytes=-6")):
        p = env.script(env.path(name), canned)
        a = env.req(p, [("Range", rng)])
        assert a.status == 206 and "detail" in status_of(a)
        env.req(p, [("Range", rng)])
        assert env.count(p) == 2, name


def test_a_partial_of_an_object_over_the_size_cap_is_not_stored(env):
    # the cap applies to the complete length: a stored partial can always be completed within it
    p = env.script(env.path("cap"), part(0, 4, total=4096, body=b"x" * 4096))
    for _ in range(2):
        r = env.req(p, [("Host", "small.test"), ("Range", "bytes=0-4")])
        assert r.status == 206 and status_of(r).get("detail") == "partial-too-large"
    assert env.count(p) == 2


def test_a_partial_never_replaces_a_stored_complete_response(env):
    p = env.script(env.path("keep"), cc("max-age=3600", headers=[("ETag", '"v1"')], body=TEN), part(2, 3))
    env.req(p)
    completed(env, p)
    # If-Match is forwarded (RFC 9111 §4.3.2): the origin's 206 goes to the client, the stored 200 stays
    r = env.req(p, [("Range", "bytes=2-3"), ("If-Match", '"v1"')])
    assert r.status == 206 and env.count(p) == 2
    r = env.req(p)
    assert r.status == 200 and r.body == TEN and r.hit and env.count(p) == 2


# ------------------------------------------------------------------------------ store down

def test_store_down_passes_partial_requests_through(make_redis_server, edge_factory):
    redis = make_redis_server()
    origin = ScriptedOrigin()
    try:
        edge = edge_factory(config(origin, {"backend": "redis", "url": redis.url}))
        env = Env(edge, origin)
        p = env.script(env.path("down"), part(0, 4), part(0, 4), part(0, 4), cc("max-age=3600", body=TEN))
        env.req(p, [("Range", "bytes=0-4")])
        stored(env, p, "bytes=0-4")
        redis.stop()
        for n in range(2, 4):   # every request reaches the origin as it was sent, none fails
            r = env.req(p, [("Range", "bytes=0-4")])
            assert r.status == 206 and r.body == b"01234" and r.h("Cache-Status") is None
            assert env.count(p) == n and env.seen(p)[-1].header("range") == "bytes=0-4"
        r = env.req(p)
        assert r.status == 200 and r.body == TEN and env.seen(p)[-1].header("range") is None and env.count(p) == 4
    finally:
        origin.stop()


# ------------------------------------------------------------------------------ a stale partial (RFC 9111 §4.3)

def stale_part(first: int, last: int, etag: str = '"v1"') -> Canned:
    """A 206 that is stale at once (max-age=0) but has a validator: stored, then revalidated."""
    return Canned(206, [("Cache-Control", "max-age=0"), ("Content-Range", f"bytes {first}-{last}/10"), ("ETag", etag)],
                  TEN[first:last + 1])


def stored_stale(env: Env, path: str, rng: str) -> None:
    """Wait until the stale partial is in the store (a client that accepts stale, only-if-cached)."""
    until(lambda: env.req(path, [("Range", rng), ("Cache-Control", "max-stale=3600, only-if-cached")]).status == 206,
          timeout_s=10)


def test_a_stale_partial_is_revalidated_and_its_range_served(env):
    # RFC 9111 §4.3.1: the stored validator goes with the client's Range; RFC 9110 §13.2.2
    # evaluates If-None-Match first, so the unchanged representation comes back as a 304
    # (§4.3.4 refreshes the stored head) and the range comes from the stored bytes
    p = env.script(env.path("stale-304"), stale_part(0, 4), Canned(304, [("ETag", '"v1"'), ("Cache-Control", "max-age=3600")]))
    assert env.req(p, [("Range", "bytes=0-4")]).body == b"01234"
    stored_stale(env, p, "bytes=0-4")
    r = env.req(p, [("Range", "bytes=1-3")])
    assert (r.status, r.body, r.h("Content-Range")) == (206, b"123", "bytes 1-3/10")
    s = status_of(r)
    assert s["fwd"] == "stale" and s["fwd-status"] == "304"
    asked = env.seen(p)[-1]
    assert asked.header("if-none-match") == '"v1"' and asked.header("range") == "bytes=1-3" and env.count(p) == 2
    # fresh for an hour now (the 304's max-age): answered from the store
    r = env.req(p, [("Range", "bytes=2-4")])
    assert r.status == 206 and r.body == b"234" and r.hit and env.count(p) == 2


def test_a_stale_partial_of_a_changed_representation_is_replaced(env):
    new = b"abcdefghij"
    p = env.script(env.path("stale-changed"), stale_part(0, 4),
                   Canned(206, [("Cache-Control", "max-age=3600"), ("Content-Range", "bytes 1-3/10"), ("ETag", '"v2"')],
                          new[1:4]))
    env.req(p, [("Range", "bytes=0-4")])
    stored_stale(env, p, "bytes=0-4")
    r = env.req(p, [("Range", "bytes=1-3")])
    assert r.status == 206 and r.body == b"bcd" and r.h("ETag") == '"v2"'
    assert status_of(r)["fwd"] == "stale" and env.seen(p)[-1].header("if-none-match") == '"v1"'
    stored(env, p, "bytes=1-3")        # the origin's new part replaced the old one
    r = env.req(p, [("Range", "bytes=2-3")])
    assert r.body == b"cd" and r.hit and env.count(p) == 2


def test_a_304_for_another_validator_leaves_the_stale_partial_and_asks_again(env):
    # RFC 9111 §4.3.4: "the cache MUST NOT use the new response to update any stored responses"
    p = env.script(env.path("stale-stray"), stale_part(0, 4), Canned(304, [("ETag", '"zz"')]),
                   Canned(206, [("Content-Range", "bytes 1-3/10"), ("ETag", '"v1"')], TEN[1:4]))
    env.req(p, [("Range", "bytes=0-4")])
    stored_stale(env, p, "bytes=0-4")
    r = env.req(p, [("Range", "bytes=1-3")])
    assert r.status == 206 and r.body == b"123"
    seen = env.seen(p)
    assert len(seen) == 3 and seen[2].header("if-none-match") is None and seen[2].header("range") == "bytes=1-3"
