"""The auth plugin through a real edge (2 workers) in front of real origins, and a real forward-auth service."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import jwt
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import rsa
from passlib.hash import bcrypt, sha512_crypt

from edge.launch import Process, free_port, wait_for_port

AUTH_SERVICE = Path(__file__).resolve().parents[1] / "fixtures" / "auth_service.py"
API_KEY = "live-" + "7" * 40


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def echo(resp: requests.Response) -> dict[str, str]:
    """Request headers as the origin saw them (first value per lower-cased name)."""
    assert resp.status_code == 200, resp.text
    out: dict[str, str] = {}
    for k, v in resp.json()["headers"]:
        out.setdefault(k.lower(), v)
    return out


def rsa_jwks(path: Path, kid: str) -> rsa.RSAPrivateKey:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    path.write_text(json.dumps({"keys": [{**jwk, "kid": kid, "alg": "RS256"}]}))
    return key


def token(key, kid: str, **claims) -> str:
    body = {"sub": "alice", "aud": "api", "exp": int(time.time()) + 300, **claims}
    return jwt.encode(body, key, algorithm="RS256", headers={"kid": kid})


@pytest.fixture(scope="module")
def auth_service(tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("auth") / "auth.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, str(AUTH_SERVICE), str(port)], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    p = Process(proc, port, log)
    wait_for_port("127.0.0.1", port, proc=proc)
    yield p
    p.stop()


@pytest.fixture
def local_methods(edge_server, tmp_path):
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(f"ann:{bcrypt.using(rounds=5).hash('pw-ann')}\nben:{sha512_crypt.using(rounds=5000).hash('pw-ben')}\n")
    jwks = tmp_path / "jwks.json"
    key = rsa_jwks(jwks, "k1")
    settings = {
        "basic": {"htpasswd": str(htpasswd), "realm": "staff"},
        "api_key": {"keys": [{"consumer": "ci-bot", "sha256": hashlib.sha256(API_KEY.encode()).hexdigest()}]},
        "jwt": {"jwks_file": str(jwks), "audience": ["api"], "claims_to_headers": {"sub": "X-User"}},
        "consumer_header": "X-Consumer",
    }
    routes = [
        {"name": "public", "match": {"path": "/public"}, "upstream": "origin", "strip_prefix": True},
        {"name": "private", "match": {"path": "/"}, "upstream": "origin", "plugins": {"auth": settings}},
    ]
    edge = edge_server(routes=routes, workers=2)
    return edge, key, jwks


def test_basic_api_key_and_jwt_admit_and_name_the_consumer(local_methods):
    edge, key, _ = local_methods
    for headers, consumer in [(basic("ann", "pw-ann"), "ann"), (basic("ben", "pw-ben"), "ben"),
                              ({"X-API-Key": API_KEY}, "ci-bot"), ({"Authorization": f"Bearer {token(key, 'k1')}"}, "alice")]:
        for _ in range(2):  # both workers, and the remembered second check
            seen = echo(requests.get(edge.url + "/echo", headers={**headers, "X-Consumer": "spoofed"}, timeout=10))
            assert seen["x-consumer"] == consumer
            assert "authorization" not in seen and "x-api-key" not in seen
    seen = echo(requests.get(edge.url + "/echo", headers={"Authorization": f"Bearer {token(key, 'k1')}", "X-User": "mallory"}, timeout=10))
    assert seen["x-user"] == "alice"


def test_route_without_the_plugin_is_open(local_methods):
    edge, _, _ = local_methods
    assert requests.get(edge.url + "/public/echo", timeout=10).status_code == 200


@pytest.mark.parametrize("headers", [basic("ann", "wrong"), basic("nobody", "pw-ann"), {"X-API-Key": "guess"}, {}])
def test_bad_or_missing_credentials_get_401_and_never_reach_the_origin(local_methods, headers):
    edge, _, _ = local_methods
    r = requests.get(edge.url + "/echo", headers=headers, timeout=10)
    assert r.status_code == 401
    assert 'Basic realm="staff", charset="UTF-8"' in r.headers.get("WWW-Authenticate", "")
    assert "method" not in r.text  # the origin's echo body never came back


@pytest.mark.parametrize("claims,reason", [
    ({"exp": int(time.time()) - 3600}, "token expired"),
    ({"nbf": int(time.time()) + 3600}, "token not yet valid"),
    ({"aud": "other"}, "wrong audience"),
])
def test_jwt_expired_not_yet_valid_and_wrong_audience(local_methods, claims, reason):
    edge, key, _ = local_methods
    r = requests.get(edge.url + "/echo", headers={"Authorization": f"Bearer {token(key, 'k1', **claims)}"}, timeout=10)
    assert r.status_code == 401
    assert 'error="invalid_token"' in r.headers["WWW-Authenticate"] and reason in r.headers["WWW-Authenticate"]


def test_jwks_rotation_takes_effect_on_hup(local_methods):
    edge, old_key, jwks = local_methods
    old = token(old_key, "k1")
    assert requests.get(edge.url + "/echo", headers={"Authorization": f"Bearer {old}"}, timeout=10).status_code == 200
    new_key = rsa_jwks(jwks, "k2")  # the old key is retired from the file
    edge.reload()
    new = token(new_key, "k2")
    for _ in range(4):  # every new worker
        assert requests.get(edge.url + "/echo", headers={"Authorization": f"Bearer {new}"}, timeout=10).status_code == 200
        assert requests.get(edge.url + "/echo", headers={"Authorization": f"Bearer {old}"}, timeout=10).status_code == 401


def test_changed_htpasswd_takes_effect_on_hup(local_methods, tmp_path):
    edge, _, _ = local_methods
    (tmp_path / "htpasswd").write_text(f"ann:{bcrypt.using(rounds=5).hash('new-pw')}\n")
    edge.reload()
    assert requests.get(edge.url + "/echo", headers=basic("ann", "pw-ann"), timeout=10).status_code == 401
    assert requests.get(edge.url + "/echo", headers=basic("ann", "new-pw"), timeout=10).status_code == 200


def test_broken_htpasswd_refuses_the_reload(local_methods, tmp_path):
    from edge.launch import ReloadRefused

    edge, _, _ = local_methods
    (tmp_path / "htpasswd").write_text("ann:plaintext\n")
    with pytest.raises(ReloadRefused):
        edge.reload()
    assert "unsupported password hash" in edge.log()
    # the running workers keep the file they loaded
    assert requests.get(edge.url + "/echo", headers=basic("ann", "pw-ann"), timeout=10).status_code == 200


# ---------------------------------------------------------------- forward-auth


@pytest.fixture
def forward_edge(edge_server, auth_service):
    settings = {"forward": {"url": f"http://127.0.0.1:{auth_service.port}/check?app=shop", "timeout": "1s",
                            "response_headers": ["X-Auth-User", "X-Auth-Role"], "consumer_header": "X-Auth-User"},
                "consumer_header": "X-Consumer"}
    return edge_server(plugins={"auth": settings}, workers=2)


def seen_by_service(auth_service) -> list[dict[str, str]]:
    rows = requests.get(auth_service.url + "/seen", timeout=5).json()
    return [{k.lower(): v for k, v in row} for row in rows]


def test_forward_auth_2xx_admits_and_copies_headers(forward_edge, auth_service):
    r = requests.get(forward_edge.url + "/echo?x=1", headers={"Authorization": "Bearer good", "X-Auth-Role": "spoofed"}, timeout=10)
    seen = echo(r)
    assert seen["x-auth-user"] == "bob" and seen["x-auth-role"] == "admin" and seen["x-consumer"] == "bob"
    assert "x-other" not in seen
    asked = seen_by_service(auth_service)[-1]
    assert asked["authorization"] == "Bearer good"
    assert asked["x-forwarded-method"] == "GET" and asked["x-forwarded-uri"] == "/echo?x=1"
    assert asked["x-forwarded-proto"] == "http" and asked["x-forwarded-for"] == "127.0.0.1"
    assert asked["x-forwarded-host"].startswith("127.0.0.1")


def test_forward_auth_refusals_are_returned_as_the_service_sent_them(forward_edge):
    r = requests.get(forward_edge.url + "/echo", headers={"Authorization": "Bearer nope"}, timeout=10)
    assert r.status_code == 401 and r.text == "denied by the auth service\n"
    assert r.headers["WWW-Authenticate"] == 'Bearer realm="sso"'
    r = requests.get(forward_edge.url + "/cart?id=3", headers={"Authorization": "Bearer redirect"}, allow_redirects=False, timeout=10)
    assert r.status_code == 302 and r.headers["Location"] == "https://login.example/?next=/cart?id=3"
    assert r.headers["Set-Cookie"] == "sso_state=abc; Path=/"


def test_forward_auth_service_down_or_slow_is_503(edge_server, auth_service):
    port = free_port()  # nothing listens here
    edge = edge_server(plugins={"auth": {"forward": {"url": f"http://127.0.0.1:{port}/check", "timeout": "1s"}}})
    r = requests.get(edge.url + "/echo", headers={"Authorization": "Bearer good"}, timeout=10)
    assert r.status_code == 503 and "authentication service unavailable" in r.text
    edge = edge_server(plugins={"auth": {"forward": {"url": f"http://127.0.0.1:{auth_service.port}/check", "timeout": "0.3s"}}})
    r = requests.get(edge.url + "/echo", headers={"Authorization": "Bearer slow"}, timeout=10)
    assert r.status_code == 503


def test_consumer_feeds_ratelimit_keys(edge_server, tmp_path):
    key_sha = hashlib.sha256(API_KEY.encode()).hexdigest()
    plugins = {"auth": {"api_key": {"keys": [{"consumer": "ci-bot", "sha256": key_sha}]}},
               "ratelimit": {"limits": [{"name": "per-consumer", "rate": "3/m", "burst": 3}], "key": ["fact:consumer"]}}
    edge = edge_server(plugins=plugins)
    codes = [requests.get(edge.url + "/", headers={"X-API-Key": API_KEY}, timeout=10).status_code for _ in range(5)]
    assert codes == [200, 200, 200, 429, 429]
