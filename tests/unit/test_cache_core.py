"""Pure parts of the cache core (issue 10): keys, records, ban rules, purges on a memory store."""

from __future__ import annotations

import marshal

import pytest

from edge.cache import keys, policy, purge, records
from edge.cache.cache import _coalescable, _has_surrogate_field, _surrogate_keys, route_cache
from edge.cache.records import PASS, StoredObject, VaryIndex
from edge.config import parse_config
from edge.store.memory import MemoryStore


@pytest.mark.parametrize("rules,query,expected", [
    (keys.KeyRules(), "b=2&a=1", "b=2&a=1"),                                    # as received by default
    (keys.KeyRules(sort_query=True), "b=2&a=1", "a=1&b=2"),
    (keys.KeyRules(sort_query=True), "a=2&b=1&a=1", "a=2&a=1&b=1"),              # repeated names keep their order
    (keys.KeyRules(ignore_params=frozenset({"utm_source"})), "x=1&utm_source=y", "x=1"),
    (keys.KeyRules(ignore_params=frozenset({"utm_source"})), "utm_source", ""),  # a bare name too
    (keys.KeyRules(sort_query=True, ignore_params=frozenset({"z"})), "z=1&&b=1&a", "a&b=1"),
])
def test_query_normalisation(rules, query, expected):
    assert rules.query(query) == expected


@pytest.mark.parametrize("scheme,host,expected", [
    ("http", "Example.COM:80", "http://example.com/p"),     # RFC 9110 §4.2.3: default port, case-insensitive host
    ("https", "example.com:443", "https://example.com/p"),
    ("http", "example.com:443", "http://example.com:443/p"),
    ("https", "[::1]:8443", "https://[::1]:8443/p"),
])
def test_cache_url_normalises_the_authority(scheme, host, expected):
    assert keys.cache_url(scheme, host, "/p", "") == expected


def test_store_keys_are_fixed_width_and_memcached_safe():
    h = keys.digest("http://example.com/" + "x" * 5000)
    for k in (keys.url_key(h), keys.variant_key(h, "g", "accept-language=en"), keys.chunk_key(h, "v", 12),
              keys.fill_lock_key(h), keys.revalidate_lock_key(h, "s")):
        assert len(k) < 120 and " " not in k


def test_ignore_params_refuses_non_names():
    with pytest.raises(ValueError):
        keys.KeyRules(ignore_params=frozenset({"a=b"}))


def _facts(**headers):
    hdrs = [("Cache-Control", "max-age=60"), ("ETag", '"x"'), ("Vary", "Accept-Language"), *headers.items()]
    return policy.response_facts(1000.0, 1000.5, 200, hdrs)


def _obj(**kw):
    base = dict(status=200, reason="OK", headers=(("Content-Type", "text/plain"),), facts=_facts(), stored_at=1000.0,
                url="http://example.com/a", tags=("t1",), soft_purged=False, body=b"hello", version="", chunks=0,
                length=5, expires_at=5000.0)
    base.update(kw)
    return StoredObject(**base)


def test_object_record_round_trips_with_the_policy_facts():
    obj = _obj()
    back = records.decode(obj.encode())
    assert back == obj
    assert back.facts == obj.facts and back.facts.vary == ("accept-language",)


def test_other_records_round_trip_and_garbage_is_a_miss():
    idx = VaryIndex(("accept-language",), "g1", 12.5)
    assert records.decode(idx.encode()) == idx
    assert records.decode(records.PASS_RECORD) is PASS
    assert records.decode(None) is None
    assert records.decode(b"not marshal") is None
    assert records.decode(marshal.dumps((records.FORMAT - 1, "o"))) is None   # another layout version
    assert records.decode(marshal.dumps(("x",))) is None
    tokens = records.Tokens()
    token = tokens.fill()   # the fill marker a leader adds at the URL key
    assert records.decode(token.encode()) is records.FILLING and token != tokens.fill()
    assert records.decode(b"\x00other") is None


def test_tokens_are_unique_within_a_worker_and_across_workers():
    # one Tokens per worker cache: a random prefix each, then a counter
    a, b = records.Tokens(), records.Tokens()
    drawn = [a.next() for _ in range(1000)] + [a.fill() for _ in range(1000)] + [b.next() for _ in range(1000)]
    assert len(set(drawn)) == len(drawn)
    assert {t.split(".")[0] for t in drawn[:1000]}.isdisjoint({t.split(".")[0] for t in drawn[2000:]})
    fill = a.fill()
    assert records.decode(fill.encode()) is records.FILLING   # a fill marker, never a record
    assert all(c in "0123456789abcdef." for c in a.next())      # valid in every store's keys


def test_records_rebuild_only_registered_types():
    raw = marshal.dumps((records.FORMAT, "o", 200, "OK", (), ("\x00dc", "os.system", "x"), 0.0, "u", (), False, b"",
                         "", 0, 0, 0.0))
    assert records.decode(raw) is None


@pytest.mark.parametrize("ban,url,tags,expected", [
    (purge.Ban(10.0, "prefix", "example.com/news/", False, 99.0), "https://example.com/news/1", (), purge.HARD),
    (purge.Ban(10.0, "prefix", "example.com/news/", True, 99.0), "http://example.com/news/1", (), purge.SOFT),
    (purge.Ban(10.0, "prefix", "example.com/news/", False, 99.0), "http://example.com/sport/1", (), None),
    (purge.Ban(10.0, "tag", "t1", False, 99.0), "http://example.com/x", ("t0", "t1"), purge.HARD),
    (purge.Ban(10.0, "tag", "t1", False, 99.0), "http://example.com/x", ("t2",), None),
    (purge.Ban(5.0, "tag", "t1", False, 99.0), "http://example.com/x", ("t1",), None),   # stored after the rule
])
def test_ban_verdicts(ban, url, tags, expected):
    assert purge.verdict((ban,), _obj(url=url, tags=tags, stored_at=7.0)) == expected


def test_a_hard_rule_wins_over_a_soft_one():
    bans = (purge.Ban(10.0, "tag", "t1", True, 99.0), purge.Ban(10.0, "tag", "t1", False, 99.0))
    assert purge.verdict(bans, _obj(stored_at=1.0)) == purge.HARD


def test_ban_list_keeps_live_rules_only():
    store = MemoryStore()
    purge.add_ban(store, purge.Ban(10.0, "tag", "old", False, 20.0), 10.0)
    assert purge.add_ban(store, purge.Ban(30.0, "tag", "new", True, 90.0), 30.0) == 1
    rules = purge.decode_bans(store.get(keys.BANS_KEY))
    assert [(b.value, b.soft) for b in rules] == [("new", True)]


def test_purge_url_hard_soft_and_variant_index():
    store = MemoryStore()
    url = "http://example.com/a"
    h = keys.digest(url)
    store.set(keys.url_key(h), _obj().encode(), 100)
    assert purge.purge_url(store, url, True, 1000.0, 100)
    assert records.decode(store.get(keys.url_key(h))).soft_purged
    assert purge.purge_url(store, url, False, 1000.0, 100)
    assert store.get(keys.url_key(h)) is None
    assert not purge.purge_url(store, url, False, 1000.0, 100)
    store.set(keys.url_key(h), VaryIndex(("accept",), "g").encode(), 100)
    assert purge.purge_url(store, url, True, 1234.0, 100)
    assert records.decode(store.get(keys.url_key(h))).purged_at == 1234.0


@pytest.mark.parametrize("given,expected", [
    ("http://Example.com:80/news/", "example.com/news/"),
    ("example.com/news", "example.com/news"),
    ("https://example.com", "example.com/"),
])
def test_prefix_values(given, expected):
    assert purge.prefix_value(given) == expected


def test_url_purge_without_scheme_covers_both():
    assert purge.url_keys("example.com/a?b=1") == ["http://example.com/a?b=1", "https://example.com/a?b=1"]
    with pytest.raises(ValueError):
        purge.url_keys("ftp://example.com/a")


def test_surrogate_keys_from_both_fields():
    assert _surrogate_keys([("Surrogate-Key", "a  b"), ("Cache-Tag", "c, a"), ("X", "y")]) == ("a", "b", "c")
    assert _surrogate_keys([("surrogate-key", "x"), ("CACHE-TAG", "y"), ("Server", "s"), ("Content-Type", "t")]) == ("x", "y")
    # present but empty: no tags, still a field to strip before the client
    assert _surrogate_keys([("Surrogate-Key", " ")]) == () and _has_surrogate_field([("Surrogate-Key", " ")])
    assert _has_surrogate_field([("cache-tag", "")]) and not _has_surrogate_field([("Server", "x"), ("Cache-Control", "y")])


@pytest.mark.parametrize("headers,expected", [
    ([("Accept", "*/*")], True),
    ([("Authorization", "x")], False),
    ([("Range", "bytes=0-1")], False),
    ([("If-None-Match", '"x"')], False),
])
def test_only_plain_gets_lead_a_fill(headers, expected):
    assert _coalescable(headers) is expected


def test_route_settings_merge_over_the_cache_section():
    cfg = parse_config({
        "upstreams": {"a": {"servers": ["127.0.0.1:1"]}},
        "routes": [{"upstream": "a", "cache": {"force_ttl": "10s", "ignore_params": ["x"], "set_cookie": "strip"}}],
        "cache": {"enabled": True, "targeted_field": "Edge-Cache-Control", "sort_query": True, "serve_stale_on_error": "5s"},
    })
    rc = route_cache(cfg.cache, cfg.routes[0].cache)
    assert rc.keys == keys.KeyRules(True, frozenset({"x"}))
    s = rc.settings
    assert s.forced_ttl_s == 10.0 and s.set_cookie == "strip" and s.serve_stale_on_error_s == 5.0
    assert s.targeted_fields == ("edge-cache-control", "cdn-cache-control")
    assert rc.strip_fields == frozenset({"edge-cache-control"})


@pytest.mark.parametrize("section,route,expected", [
    ({}, {}, True),                                             # RFC 9110 §9.3.3 by default
    ({"reuse_post_responses": False}, {}, False),               # the section's value
    ({"reuse_post_responses": False}, {"reuse_post_responses": True}, True),
    ({}, {"reuse_post_responses": False}, False),               # the route's own, also when false
])
def test_post_reuse_per_route_over_the_cache_section(section, route, expected):
    cfg = parse_config({
        "upstreams": {"a": {"servers": ["127.0.0.1:1"]}},
        "routes": [{"upstream": "a", "cache": route}],
        "cache": {"enabled": True, **section},
    })
    assert cfg.cache.reuse_post_responses is section.get("reuse_post_responses", True)
    assert route_cache(cfg.cache, cfg.routes[0].cache).reuse_post is expected


def test_flat_registered_facts_are_one_tuple_in_the_record():
    obj = _obj()
    t = marshal.loads(obj.encode())
    assert t[5][0] == "\x00fl" and len(t[5][2]) == len(policy.StoredFacts.__dataclass_fields__)


def test_a_missing_body_chunk_cuts_the_reply_and_drops_the_url_record():
    from edge.cache.cache import CHUNK_BYTES, Cache, CacheBodyLost

    class Counter:
        def __init__(self):
            self.names = []

        def incr(self, name):
            self.names.append(name)

    cfg = parse_config({"upstreams": {"a": {"servers": ["127.0.0.1:1"]}}, "routes": [{"upstream": "a"}],
                        "cache": {"enabled": True}})
    store, metrics = MemoryStore(), Counter()
    cache = Cache(cfg.cache, [route_cache(cfg.cache, cfg.routes[0].cache)], store, metrics)
    obj = _obj(body=None, version="v1", chunks=2, length=CHUNK_BYTES + 10)
    h = keys.digest(obj.url)
    store.set(keys.url_key(h), obj.encode(), 100)
    store.set(keys.chunk_key(h, "v1", 0), b"a" * CHUNK_BYTES, 100)
    store.set(keys.chunk_key(h, "v1", 1), b"b" * 10, 100)
    assert b"".join(cache._body(obj, 0, obj.length)) == b"a" * CHUNK_BYTES + b"b" * 10
    assert b"".join(cache._body(obj, CHUNK_BYTES - 2, 5)) == b"aabbb"     # a range across the boundary
    store.delete(keys.chunk_key(h, "v1", 1))
    with pytest.raises(CacheBodyLost):
        b"".join(cache._body(obj, 0, obj.length))
    assert store.get(keys.url_key(h)) is None and "cache.chunk_missing" in metrics.names


def test_decoded_records_are_memoised_by_their_bytes(monkeypatch):
    import edge.cache.cache as cache_mod
    from edge.cache.cache import Cache

    cfg = parse_config({"upstreams": {"a": {"servers": ["127.0.0.1:1"]}}, "routes": [{"upstream": "a"}],
                        "cache": {"enabled": True}})
    cache = Cache(cfg.cache, [route_cache(cfg.cache, cfg.routes[0].cache)], MemoryStore(), None)
    first = _obj()
    raw = first.encode()
    a = cache._decode("k", raw)
    assert a == first and cache._decode("k", bytes(raw)) is a     # equal bytes: the decoded object again
    # the record replaced on the store (by any worker): decoded anew, never the old object
    changed = _obj(headers=(("Content-Type", "text/html"),))
    b = cache._decode("k", changed.encode())
    assert b == changed and b is not a
    assert cache._decode("k", None) is None
    # bounded: the oldest entry goes first; big records are not kept
    monkeypatch.setattr(cache_mod, "MEMO_ENTRIES", 3)
    for i in range(5):
        cache._decode(f"n{i}", raw)
    assert len(cache._decoded) == 3 and "n4" in cache._decoded and "k" not in cache._decoded
    big = _obj(body=b"x" * (cache_mod.MEMO_MAX_RECORD_BYTES + 1), length=cache_mod.MEMO_MAX_RECORD_BYTES + 1)
    assert cache._decode("big", big.encode()) == big and "big" not in cache._decoded


@pytest.mark.parametrize("store,cache_store,expected", [
    ({"backend": "local", "path": "/tmp/x"}, None, {"backend": "local", "path": "/tmp/x-cache"}),
    ({"backend": "redis", "url": "redis://127.0.0.1:1"}, None, {"backend": "redis", "url": "redis://127.0.0.1:1"}),
    ({"backend": "local", "path": "/tmp/x"}, {"backend": "memory"}, {"backend": "memory"}),
])
def test_cache_store_settings(store, cache_store, expected):
    from edge.cache.cache import cache_store_config

    cfg = parse_config({"upstreams": {"a": {"servers": ["127.0.0.1:1"]}}, "routes": [{"upstream": "a"}],
                        "store": store, "cache": {"enabled": True, "store": cache_store}})
    got = cache_store_config(cfg)
    assert {k: getattr(got, k) for k in expected} == expected
