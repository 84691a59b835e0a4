"""Routing through a real edge: precedence, hosts, rewrites, redirects, fixed answers, Host modes."""

from __future__ import annotations

import json

import pytest
import requests


@pytest.fixture(scope="module")
def edge(origin, origin2, tmp_path_factory):
    from edge.launch import start_edge

    cfg = {
        "upstreams": {
            "one": {"servers": [f"127.0.0.1:{origin.port}"]},
            "two": {"servers": [f"127.0.0.1:{origin2.port}"]},
        },
        "routes": [
            {"name": "default", "match": {"path": "/"}, "upstream": "one"},
            {"name": "api", "match": {"path": "/api"}, "upstream": "two", "strip_prefix": True},
            {"name": "api-exact", "match": {"path": {"exact": "/api/echo"}}, "upstream": "one"},
            {"name": "regex", "match": {"path": {"regex": "^/items/[0-9]+$"}}, "upstream": "two",
             "rewrite": {"regex": "^/items/([0-9]+)$", "replace": r"/echo?item=\1"}},
            {"name": "wild", "match": {"host": ["*.example.test"], "path": "/"}, "upstream": "two",
             "host_header": "upstream"},
            {"name": "exact-host", "match": {"host": ["www.example.test"], "path": "/"}, "upstream": "one",
             "host_header": "backend.internal"},
            {"name": "post-only", "match": {"path": "/form", "methods": ["POST"]}, "upstream": "two"},
            {"name": "beta", "match": {"path": "/", "headers": {"X-Beta": "1"}}, "upstream": "two"},
            {"name": "old", "match": {"path": "/old"}, "strip_prefix": True,
             "redirect": {"status": 308, "location": "https://$host/new$path$query"}},
            {"name": "health", "match": {"path": {"exact": "/healthz"}},
             "respond": {"status": 200, "body": "ok\n", "headers": {"Cache-Control": "no-store"}}},
        ],
    }
    p = start_edge(cfg, workers=2, work_dir=str(tmp_path_factory.mktemp("edge")))
    yield p
    p.stop()


def get(edge, path, host=None, **kw):
    headers = kw.pop("headers", {})
    if host:
        headers["Host"] = host
    return requests.request(kw.pop("method", "GET"), f"{edge.url}{path}", headers=headers, allow_redirects=False, **kw)


def sent_headers(r) -> dict:
    return {k.lower(): v for k, v in json.loads(r.content)["headers"]}


def test_longer_prefix_and_exact_win(edge):
    assert get(edge, "/x").headers["X-Origin"] == "o1"
    assert get(edge, "/api/x").headers["X-Origin"] == "o2"        # /api beats /
    assert get(edge, "/api/echo").headers["X-Origin"] == "o1"      # exact beats prefix


def test_regex_route_with_rewrite(edge):
    r = get(edge, "/items/42")
    assert r.headers["X-Origin"] == "o2"
    assert json.loads(r.content)["path"] == "/echo?item=42"
    assert get(edge, "/items/abc").headers["X-Origin"] == "o1"      # no match: falls back to /


def test_host_routing_and_host_header_modes(edge, origin, origin2):
    r = get(edge, "/echo", host="shop.example.test")
    assert r.headers["X-Origin"] == "o2"
    assert sent_headers(r)["host"] == f"127.0.0.1:{origin2.port}"   # host_header: upstream
    r = get(edge, "/echo", host="www.example.test:8080")
    assert r.headers["X-Origin"] == "o1"                             # exact host beats the wildcard
    assert sent_headers(r)["host"] == "backend.internal"             # literal host_header
    assert sent_headers(r)["x-forwarded-host"] == "www.example.test:8080"
    assert get(edge, "/echo", host="example.test").headers["X-Origin"] == "o1"  # bare domain: not *.example.test


def test_method_and_header_conditions(edge):
    assert get(edge, "/form", method="POST").headers["X-Origin"] == "o2"
    assert get(edge, "/form").headers["X-Origin"] == "o1"
    assert get(edge, "/x", headers={"X-Beta": "1"}).headers["X-Origin"] == "o2"


def test_redirect_route(edge):
    r = get(edge, "/old/page?a=1", host="site.test")
    assert r.status_code == 308
    assert r.headers["Location"] == "https://site.test/new/page?a=1"


def test_fixed_response_route(edge):
    r = get(edge, "/healthz")
    assert r.status_code == 200 and r.text == "ok\n"
    assert r.headers["Cache-Control"] == "no-store"
