"""The shared cache end to end (issue 10): a real edge (2 workers) per store backend, real origins.

Every test reads the origin's own per-path counters (``/cache-count``) to prove what reached
the backend, and the body (``NAME n=<count>``) to prove which stored response was served.
One edge per store backend for the whole module (local, redis, memcached); each test uses
its own URLs so they do not interfere.
"""

from __future__ import annotations

import concurrent.futures
import subprocess
import sys
import time
import uuid
from urllib.parse import quote

import gevent
import pytest
import requests

from edge.launch import REPO, free_port, start_edge, start_origin
from tests.fixtures.statsd import statsd  # noqa: F401  (the fixture)
from tests.integration.conftest import store_config, until

BACKENDS = ["local", "redis", "memcached"]


def from_cache(r: requests.Response) -> bool:
    """Answered from the store: a hit, or a request that waited for the fill in progress
    (the object is committed just after the first response's last byte)."""
    status = r.headers.get("Cache-Status", "")
    return status.startswith("edge; hit") or "collapsed" in status


class Env:
    def __init__(self, edge, origin, down_port: int, backend: str) -> None:
        self.edge = edge
        self.origin = origin
        self.down_port = down_port
        self.backend = backend
        self.tag = uuid.uuid4().hex[:8]  # unique path names per edge (the origin is per edge too)

    def path(self, name: str, **params: str) -> str:
        q = "&".join(f"{k}={quote(v, safe='')}" for k, v in params.items())
        return f"/cache/{name}-{self.tag}" + (f"?{q}" if q else "")

    def get(self, path: str, host: str | None = None, method: str = "GET", **kw) -> requests.Response:
        headers = {"Connection": "close", **kw.pop("headers", {})}  # a new connection: either worker
        if host:
            headers["Host"] = host
        return requests.request(method, self.edge.url + path, headers=headers, timeout=30, **kw)

    def count(self, path: str) -> dict:
        name = path.split("?")[0]
        return requests.get(f"{self.origin.url}/cache-count", params={"path": name}, timeout=10).json()

    def purge(self, *args: str) -> str:
        out = subprocess.run([sys.executable, "-m", "edge", "purge", "--config", str(self.edge.config_path), *args],
                             cwd=str(REPO), capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return out.stdout


@pytest.fixture(scope="module", params=BACKENDS)
def env(request, tmp_path_factory):
    backend = request.param
    store = store_config(request, backend, "cachetest")
    origin = start_origin("c1", log_dir=str(tmp_path_factory.mktemp("origin")))
    down_port = free_port()
    config = {
        "upstreams": {
            "app": {"servers": [f"127.0.0.1:{origin.port}"]},
            "down": {"servers": [f"127.0.0.1:{down_port}"], "retries": 0},
        },
        "routes": [
            {"name": "down", "match": {"host": ["down.test"]}, "upstream": "down"},
            {"name": "stale", "match": {"host": ["stale.test"]}, "upstream": "app", "cache": {"serve_stale_on_error": "60s"}},
            {"name": "small", "match": {"host": ["small.test"]}, "upstream": "app", "cache": {"max_object_size": "64KiB"}},
            {"name": "nocache", "match": {"host": ["nocache.test"]}, "upstream": "app", "cache": {"enabled": False}},
            {"name": "main", "match": {"path": "/"}, "upstream": "app", "cache": {"ignore_params": ["utm_source"]}},
        ],
        "store": store,
        "cache": {"enabled": True, "ban_refresh": "200ms", "coalesce_wait": "10s"},
    }
    edge = start_edge(config, workers=2, work_dir=str(tmp_path_factory.mktemp(f"edge-{backend}")))
    yield Env(edge, origin, down_port, backend)
    edge.stop()
    origin.stop()


def test_miss_then_hit_with_age_and_cache_status(env):
    p = env.path("hit", cc="max-age=60")
    first = env.get(p)
    assert first.status_code == 200 and first.text.startswith("hit")
    assert "fwd=uri-miss" in first.headers["Cache-Status"] and "stored" in first.headers["Cache-Status"]
    for _ in range(6):
        r = env.get(p)
        assert r.text == first.text
        assert from_cache(r)
        assert int(r.headers["Age"]) >= 0
    assert env.count(p)["count"] == 1
    only = {"Cache-Control": "only-if-cached"}
    assert env.get(p, headers=only).status_code == 200
    # RFC 9111 §5.2.1.7: nothing stored -> 504, and the request never reaches the origin
    missing = env.path("only", cc="max-age=60")
    assert env.get(missing, headers=only).status_code == 504
    assert env.count(missing)["count"] == 0


def test_head_is_answered_from_the_stored_get(env):
    p = env.path("head", cc="max-age=60")
    body = env.get(p).text
    r = env.get(p, method="HEAD")
    assert r.status_code == 200 and r.text == ""
    assert int(r.headers["Content-Length"]) == len(body)
    assert from_cache(r)
    assert env.count(p)["methods"] == ["GET"]


def test_ignored_query_parameter_shares_the_entry(env):
    a = env.get(env.path("utm", cc="max-age=60") + "&utm_source=x")
    b = env.get(env.path("utm", cc="max-age=60") + "&utm_source=y")
    assert a.text == b.text
    assert env.count(env.path("utm"))["count"] == 1


def test_revalidation_with_304_keeps_the_stored_body(env):
    p = env.path("reval", cc="max-age=0", etag='"v1"')
    first = env.get(p)
    assert first.text.startswith("reval") and "n=1" in first.text
    again = env.get(p)
    assert again.status_code == 200 and again.text == first.text  # the 304 refreshed the stored response
    assert "fwd=stale" in again.headers["Cache-Status"] and "fwd-status=304" in again.headers["Cache-Status"]
    c = env.count(p)
    assert c["count"] == 2 and c["conditional"] == 1


def test_vary_keeps_one_variant_per_value(env):
    p = env.path("vary", cc="max-age=60", vary="Accept-Language")
    en = [env.get(p, headers={"Accept-Language": "en"}).text for _ in range(3)]
    fr = [env.get(p, headers={"Accept-Language": "fr"}).text for _ in range(3)]
    assert len(set(en)) == 1 and len(set(fr)) == 1
    assert "accept-language:en" in en[0] and "accept-language:fr" in fr[0]
    assert env.count(p)["count"] == 2


def test_client_conditional_request_is_answered_from_the_cache(env):
    p = env.path("cond", cc="max-age=60", etag='"abc"')
    env.get(p)
    r = env.get(p, headers={"If-None-Match": '"abc"'})
    assert r.status_code == 304 and r.headers["ETag"] == '"abc"'
    r = env.get(p, headers={"If-None-Match": '"other"'})
    assert r.status_code == 200 and r.text.startswith("cond")
    assert env.count(p)["count"] == 1


def test_range_is_answered_from_the_stored_full_response(env):
    p = env.path("range", cc="max-age=60", size="1000")
    full = env.get(p).content
    r = env.get(p, headers={"Range": "bytes=10-19"})
    assert r.status_code == 206 and r.content == full[10:20]
    assert r.headers["Content-Range"] == "bytes 10-19/1000"
    r = env.get(p, headers={"Range": "bytes=5000-"})
    assert r.status_code == 416
    assert env.count(p)["count"] == 1


def test_large_body_is_stored_in_chunks(env):
    p = env.path("chunks", cc="max-age=60", size=str(1300 * 1024))
    first = env.get(p).content
    assert len(first) == 1300 * 1024
    until(lambda: "hit" in env.get(p, method="HEAD").headers["Cache-Status"], timeout_s=10)
    second = env.get(p)
    assert from_cache(second) and second.content == first
    r = env.get(p, headers={"Range": "bytes=600000-600009"})
    assert r.status_code == 206 and r.content == first[600000:600010]
    assert env.count(p)["count"] == 1


def test_post_invalidates_the_stored_response(env):
    p = env.path("inval", cc="max-age=60")
    assert "n=1" in env.get(p).text
    assert "n=1" in env.get(p).text
    assert env.get(p, method="POST", data=b"x").status_code == 200  # n=2 at the origin
    assert "n=3" in env.get(p).text


def test_uncacheable_responses_pass_through(env):
    for name, params in (("nostore", {"cc": "no-store"}), ("private", {"cc": "private, max-age=60"}),
                         ("cookie", {"cc": "max-age=60", "cookie": "a=b"})):
        p = env.path(name, **params)
        assert "n=1" in env.get(p).text and "n=2" in env.get(p).text
    p = env.path("disabled", cc="max-age=60")
    env.get(p, host="nocache.test")
    assert "Cache-Status" not in env.get(p, host="nocache.test").headers
    assert env.count(p)["count"] == 2


def test_objects_over_the_size_cap_are_never_stored(env):
    for params in ({"size": str(100 * 1024)}, {"size": str(100 * 1024), "nolength": "1"}):
        p = env.path("big" + params.get("nolength", ""), cc="max-age=60", **params)
        for _ in range(3):
            assert len(env.get(p, host="small.test").content) == 100 * 1024
        assert env.count(p)["count"] == 3
    p = env.path("fits", cc="max-age=60", size=str(10 * 1024))
    env.get(p, host="small.test")
    env.get(p, host="small.test")
    assert env.count(p)["count"] == 1


def test_surrogate_keys_are_stripped_before_the_client(env):
    r = env.get(env.path("tagged", cc="max-age=60", tag="a b", ctag="c"))
    assert "Surrogate-Key" not in r.headers and "Cache-Tag" not in r.headers


def test_stale_if_error_when_the_origin_is_killed(env, tmp_path):
    down = start_origin("down", port=env.down_port, log_dir=str(tmp_path))
    try:
        sie = env.path("sie", cc="max-age=1, stale-if-error=600")
        plain = env.path("plain", cc="max-age=1")
        body = env.get(sie, host="down.test").text
        env.get(plain, host="down.test")
        time.sleep(1.2)  # both stale now (max-age=1)
    finally:
        down.stop()
    r = env.get(sie, host="down.test")
    assert r.status_code == 200 and r.text == body
    assert "hit" in r.headers["Cache-Status"]
    assert env.get(plain, host="down.test").status_code == 502  # no permission to serve it stale


def test_route_window_serves_stale_on_5xx(env):
    p = env.path("window", cc="max-age=1")
    body = env.get(p, host="stale.test").text
    time.sleep(1.2)
    requests.get(f"{env.origin.url}/cache-fail", params={"status": "503"}, timeout=10)
    try:
        r = env.get(p, host="stale.test")
        assert r.status_code == 200 and r.text == body
        assert env.get(env.path("window2", cc="max-age=1"), host="stale.test").status_code == 503  # nothing stored
    finally:
        requests.get(f"{env.origin.url}/cache-fail", params={"status": "0"}, timeout=10)


def test_stale_while_revalidate_refreshes_once(env):
    p = env.path("swr", cc="max-age=3, stale-while-revalidate=600", delay="0.5")
    assert "n=1" in env.get(p).text
    time.sleep(2.7)  # stale: stored 0.5 s old (the origin's delay counts in its age, RFC 9111 §4.2.3)
    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(lambda _: env.get(p), range(20)))
    # stale at once while one background request refreshes it (the origin takes 0.5 s);
    # a request arriving after the refresh gets the new one
    assert all(a.status_code == 200 and ("n=1" in a.text or "n=2" in a.text) for a in answers)
    assert any("n=1" in a.text and "stale-while-revalidate" in a.headers["Cache-Status"] for a in answers)
    until(lambda: "n=2" in env.get(p).text, timeout_s=10)
    assert env.count(p)["count"] == 2


def test_concurrent_misses_are_coalesced_into_one_fetch(env):
    p = env.path("coalesce", cc="max-age=60", delay="1")
    with concurrent.futures.ThreadPoolExecutor(100) as pool:
        answers = list(pool.map(lambda _: env.get(p), range(100)))
    assert all(a.status_code == 200 for a in answers)
    assert len({a.text for a in answers}) == 1
    assert env.count(p)["count"] == 1


def test_concurrent_misses_of_two_variants_are_two_fetches(env):
    # the first fill holds a marker at the URL key; the other variant's waiters find the Vary
    # index it leaves without their variant and coalesce again on the URL's fill lock
    p = env.path("coalesce-vary", cc="max-age=60", vary="Accept-Language", delay="0.5")
    langs = ["en", "fr"] * 30
    with concurrent.futures.ThreadPoolExecutor(60) as pool:
        answers = list(pool.map(lambda lang: (lang, env.get(p, headers={"Accept-Language": lang})), langs))
    assert all(a.status_code == 200 and f"accept-language:{lang}" in a.text for lang, a in answers)
    assert len({a.text for _, a in answers}) == 2
    assert env.count(p)["count"] == 2


def _counted(sink, name: str, at_least: int, timeout_s: float = 30.0) -> int:
    """The statsd sink's count of ``name`` once it reaches ``at_least`` (or the timeout passes):
    edge sends each increment as it happens, the sink (a greenlet) reads them while we wait."""
    deadline = time.monotonic() + timeout_s
    while sink.counts[name] < at_least and time.monotonic() < deadline:
        gevent.sleep(0.05)
    return sink.counts[name]


def test_a_fill_that_got_no_answer_does_not_hold_back_other_requests(edge_factory, statsd):
    # the backend is down: each miss gets its 502 at once. Before, the failed leader's fill
    # marker stayed until its TTL, so every request for the URL in the next coalesce_wait
    # waited all of it (counted as cache.coalesce_timeout) before trying the backend itself
    e = edge_factory({
        "upstreams": {"down": {"servers": [f"127.0.0.1:{free_port()}"], "retries": 0,
                               "health": {"passive": {"consecutive_failures": 0}}}},
        "routes": [{"match": {"path": "/"}, "upstream": "down"}],
        "cache": {"enabled": True, "coalesce_wait": "10s"},
        "metrics": {"statsd": statsd.address},
    }, workers=2)
    p = f"/cache/down-fill-{uuid.uuid4().hex[:8]}"
    get = lambda _: requests.get(e.url + p, headers={"Connection": "close"}, timeout=60)  # noqa: E731
    assert get(0).status_code == 502
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(get, range(8)))
    assert all(a.status_code == 502 for a in answers)
    # every fetch failed (each after any wait it had): then no request waited out coalesce_wait
    assert _counted(statsd, "edge.upstream.down.connect_error", 9) == 9
    assert statsd.counts["edge.cache.coalesce_timeout"] == 0


ERROR_PAGE_PLUGIN = """
from edge.context import Response
from edge.plugins import Plugin


class ErrorPage(Plugin):
    \"\"\"Replaces the backend's 404 with its own page (the body the backend sent is never read).\"\"\"
    name = "errorpage"

    def on_response(self, ctx, response):
        if response.status == 404:
            return Response(404, [("Content-Type", "text/plain")], b"custom not found\\n")
        return None
"""


def test_a_replaced_response_gives_its_fill_lock_back(tmp_path, edge_factory, statsd):
    # a plugin replaces the backend's cacheable 404 (a custom error page): the teed body is
    # dropped unread, and the fill must still end (cache.pass, reason "aborted"), or every
    # request for the URL would wait coalesce_wait behind it (cache.coalesce_timeout)
    origin = start_origin("c2", log_dir=str(tmp_path))
    try:
        d = tmp_path / "plugins"
        d.mkdir()
        (d / "errorpage.py").write_text(ERROR_PAGE_PLUGIN)
        e = edge_factory({
            "upstreams": {"app": {"servers": [f"127.0.0.1:{origin.port}"]}},
            "routes": [{"match": {"path": "/"}, "upstream": "app"}],
            "plugin_dirs": [str(d)], "plugins": {"errorpage": {}},
            "cache": {"enabled": True, "coalesce_wait": "10s"},
            "metrics": {"statsd": statsd.address},
        }, workers=2)
        p = f"/cache/replaced-{uuid.uuid4().hex[:8]}?status=404&cc=max-age%3D60"
        for _ in range(3):
            r = requests.get(e.url + p, headers={"Connection": "close"}, timeout=60)
            assert r.status_code == 404 and r.text == "custom not found\n"
        assert _counted(statsd, "edge.cache.pass", 3) == 3   # each fill ended when its body was dropped
        assert statsd.counts["edge.cache.coalesce_timeout"] == 0
        count = requests.get(f"{origin.url}/cache-count", params={"path": p.split("?")[0]}, timeout=10).json()["count"]
        assert count == 3   # nothing was stored (the body never streamed): each went to the backend
    finally:
        origin.stop()


def test_uncacheable_misses_are_not_serialised(env):
    p = env.path("hfp", cc="no-store", delay="0.5")
    env.get(p)  # leaves the hit-for-pass mark
    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(lambda _: env.get(p), range(10)))
    assert all(a.status_code == 200 and "collapsed" not in a.headers["Cache-Status"] for a in answers)
    c = env.count(p)
    assert c["count"] == 11
    # not one after another: serialised misses would reach the origin at least its 0.5 s
    # delay apart; some of these were there at the same time
    arrivals = sorted(c["arrivals"][1:])
    assert any(b - a < 0.5 for a, b in zip(arrivals, arrivals[1:]))


def test_purge_by_url_hard_and_soft(env):
    p = env.path("purl", cc="max-age=60", etag='"e"')
    env.get(p)
    assert from_cache(env.get(p))
    env.purge("--soft", env.edge.url + p)
    r = env.get(p)
    assert "fwd=stale" in r.headers["Cache-Status"]  # revalidated (304) after the soft purge
    c = env.count(p)
    assert (c["count"], c["conditional"], c["methods"]) == (2, 1, ["GET", "GET"])
    out = env.purge(env.edge.url + p)
    assert "purged" in out
    r = env.get(p)
    assert "fwd=uri-miss" in r.headers["Cache-Status"]
    assert env.count(p)["count"] == 3
    v = env.path("purl-vary", cc="max-age=60", vary="Accept-Language")
    for lang in ("en", "fr"):
        env.get(v, headers={"Accept-Language": lang})
    env.purge(env.edge.url + v)  # every variant goes with the URL
    # RFC 9211 §2.2: the first finds nothing for the URL (uri-miss); the second finds the
    # first's variant again, not its own (vary-miss); neither is served from before the purge
    statuses = [env.get(v, headers={"Accept-Language": lang}).headers["Cache-Status"] for lang in ("en", "fr")]
    assert "fwd=uri-miss" in statuses[0] and "fwd=vary-miss" in statuses[1], statuses
    assert env.count(v)["count"] == 4


def test_purge_by_prefix_and_tag_reaches_every_worker(env):
    a = env.path("pfx-a", cc="max-age=60")
    b = env.path("pfx-b", cc="max-age=60", tag="group1")
    other = env.path("other", cc="max-age=60", tag="group2")
    for p in (a, b, other):
        env.get(p)
    env.purge("--prefix", f"{env.edge.url}/cache/pfx-a")
    until(lambda: "n=2" in env.get(a).text, timeout_s=10)
    env.purge("--tag", "group1")
    until(lambda: "n=2" in env.get(b).text, timeout_s=10)
    for _ in range(6):  # every worker serves the new objects
        assert "n=2" in env.get(a).text and "n=2" in env.get(b).text
        assert "n=1" in env.get(other).text
    assert env.count(other)["count"] == 1
    soft = env.path("soft-tag", cc="max-age=60", etag='"s"', tag="group3")
    env.get(soft)
    env.purge("--soft", "--tag", "group3")  # stale now: the next request revalidates (304), body kept
    until(lambda: "fwd=stale" in env.get(soft).headers["Cache-Status"], timeout_s=10)
    r = env.get(soft)
    assert "n=1" in r.text and from_cache(r)  # revalidated once, then fresh again
    c = env.count(soft)
    assert (c["count"], c["conditional"], c["methods"]) == (2, 1, ["GET", "GET"])
