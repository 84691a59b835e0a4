"""plugins/auth.py through edge.testing: Basic, API keys, JWT (no sockets; forward-auth is in the integration tests)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from passlib.hash import apr_md5_crypt, bcrypt, ldap_salted_sha1, ldap_sha1, sha256_crypt, sha512_crypt

from edge.errors import ConfigError
from edge.plugins import SHIPPED_DIR, load_plugin_file
from edge.testing import make_ctx, make_plugin, run_plugin

Auth = load_plugin_file(SHIPPED_DIR / "auth.py")
_mod = __import__(Auth.__module__)

HASHERS = {
    "bcrypt": lambda pw: bcrypt.using(rounds=4).hash(pw),
    "bcrypt-2y": lambda pw: bcrypt.using(rounds=4, ident="2y").hash(pw),
    "sha512": lambda pw: sha512_crypt.using(rounds=1000).hash(pw),
    "sha256": lambda pw: sha256_crypt.using(rounds=1000).hash(pw),
    "apr1": apr_md5_crypt.hash,
    "sha1": ldap_sha1.hash,
    "ssha": ldap_salted_sha1.hash,
}


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@pytest.fixture
def htpasswd(tmp_path):
    path = tmp_path / "htpasswd"
    path.write_text("# users\n" + "".join(f"{name}:{h('secret-' + name)}\n" for name, h in HASHERS.items()))
    return str(path)


# ---------------------------------------------------------------- Basic


@pytest.mark.parametrize("user", sorted(HASHERS))
def test_basic_accepts_each_hash_scheme(htpasswd, user):
    run = run_plugin(Auth, {"basic": {"htpasswd": htpasswd}}, ctx=make_ctx(headers=basic(user, f"secret-{user}")))
    assert run.answered is None
    assert run.ctx.facts["consumer"] == user and run.ctx.facts["auth_method"] == "basic"
    assert "Authorization" not in run.request_headers  # stripped before the backend


@pytest.mark.parametrize("user,password", [("bcrypt", "wrong"), ("nobody", "secret-bcrypt"), ("sha1", ""), ("apr1", "secret-bcrypt")])
def test_basic_refuses_wrong_password_or_user_with_a_challenge(htpasswd, user, password):
    run = run_plugin(Auth, {"basic": {"htpasswd": htpasswd, "realm": "staff"}}, ctx=make_ctx(headers=basic(user, password)))
    assert run.status == 401
    assert run.headers.get("WWW-Authenticate") == 'Basic realm="staff", charset="UTF-8"'
    assert "consumer" not in run.ctx.facts


@pytest.mark.parametrize("value", ["Basic", "Basic !!!notbase64", "Basic " + base64.b64encode(b"nocolon").decode(),
                                   "Basic " + base64.b64encode(b":emptyuser").decode()])
def test_basic_malformed_credentials_are_401(htpasswd, value):
    run = run_plugin(Auth, {"basic": {"htpasswd": htpasswd}}, ctx=make_ctx(headers={"Authorization": value}))
    assert run.status == 401


def test_no_credentials_gets_a_challenge_for_each_method(htpasswd, tmp_path):
    run = run_plugin(Auth, {"basic": {"htpasswd": htpasswd}, "jwt": {"algorithms": ["HS256"], "secret": "s" * 32}}, ctx=make_ctx())
    assert run.status == 401
    assert run.ctx.response_headers is None or True
    challenges = [v for k, v in run.headers if k.lower() == "www-authenticate"]
    assert challenges == ['Basic realm="edge", charset="UTF-8"', 'Bearer realm="edge"']


def test_basic_success_is_remembered_without_keeping_the_password(htpasswd):
    plugin = make_plugin(Auth, {"basic": {"htpasswd": htpasswd}})
    checker = plugin._basic
    calls = []
    real = _mod.__dict__["_verify_password"]

    def counting(password, hashed):
        calls.append(1)
        return real(password, hashed)

    _mod.__dict__["_verify_password"] = counting
    try:
        for _ in range(3):
            assert checker.check(basic("sha512", "secret-sha512")["Authorization"][6:]).consumer == "sha512"
        assert checker.check(basic("sha512", "bad")["Authorization"][6:]).consumer is None
    finally:
        _mod.__dict__["_verify_password"] = real
    assert len(calls) == 2  # one verification for the good pair, one for the bad
    assert all(b"secret-sha512" not in repr(k).encode() for k in checker._seen._items)


def test_strip_credentials_false_keeps_authorization(htpasswd):
    run = run_plugin(Auth, {"basic": {"htpasswd": htpasswd}, "strip_credentials": False},
                     ctx=make_ctx(headers=basic("bcrypt", "secret-bcrypt")))
    assert run.answered is None and run.request_headers.get("Authorization", "").startswith("Basic ")


@pytest.mark.parametrize("content,reason", [
    ("alice\n", "line 1: expected user:hash"),
    ("alice:plaintext\n", "line 1: user 'alice': unsupported password hash"),
    ("alice:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\nalice:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n", "line 2: user 'alice' appears twice"),
])
def test_bad_htpasswd_is_refused_with_file_and_line(tmp_path, content, reason):
    path = tmp_path / "htpasswd"
    path.write_text(content)
    with pytest.raises(ConfigError) as e:
        make_plugin(Auth, {"basic": {"htpasswd": str(path)}})
    assert str(path) in str(e.value) and reason in str(e.value)


def test_missing_htpasswd_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        make_plugin(Auth, {"basic": {"htpasswd": str(tmp_path / "nope")}})


def test_parse_basic_is_utf8():
    value = base64.b64encode("jösé:pä:ss".encode()).decode()
    assert _mod.parse_basic(value) == ("jösé", "pä:ss")


# ---------------------------------------------------------------- API keys

KEY = "k3y-" + "a" * 40
KEY_SHA = hashlib.sha256(KEY.encode()).hexdigest()


def test_api_key_in_header_names_the_consumer_and_is_stripped():
    run = run_plugin(Auth, {"api_key": {"keys": [{"consumer": "ci", "sha256": KEY_SHA}]}, "consumer_header": "X-Consumer"},
                     ctx=make_ctx(headers={"X-API-Key": KEY, "X-Consumer": "spoofed"}))
    assert run.answered is None and run.ctx.facts["consumer"] == "ci"
    assert "X-API-Key" not in run.request_headers
    assert run.request_headers.get_all("X-Consumer") == ["ci"]


def test_api_key_in_query_is_removed_from_the_query_only():
    run = run_plugin(Auth, {"api_key": {"header": None, "query": "api_key", "keys": [{"consumer": "ci", "sha256": KEY_SHA}]}},
                     ctx=make_ctx(path=f"/x?a=1&api_key={KEY}&b=%20"))
    assert run.answered is None and run.ctx.facts["consumer"] == "ci"
    assert run.ctx.query == "a=1&b=%20"


def test_api_key_stripped_from_header_and_query_whichever_was_used():
    run = run_plugin(Auth, {"api_key": {"query": "api_key", "keys": [{"consumer": "ci", "sha256": KEY_SHA}]}},
                     ctx=make_ctx(path=f"/x?api_key={KEY}&a=1", headers={"X-API-Key": KEY}))
    assert run.answered is None and "X-API-Key" not in run.request_headers and run.ctx.query == "a=1"


def test_unknown_api_key_is_401():
    run = run_plugin(Auth, {"api_key": {"keys": [{"consumer": "ci", "sha256": KEY_SHA}]}}, ctx=make_ctx(headers={"X-API-Key": "guess"}))
    assert run.status == 401


def test_api_keys_from_a_file(tmp_path):
    path = tmp_path / "keys"
    path.write_text(f"# consumer:sha256\nbilling:{KEY_SHA.upper()}\n")
    run = run_plugin(Auth, {"api_key": {"file": str(path)}}, ctx=make_ctx(headers={"X-API-Key": KEY}))
    assert run.ctx.facts["consumer"] == "billing"
    path.write_text("billing:not-a-digest\n")
    with pytest.raises(ConfigError, match="line 1: expected consumer:sha256-hex"):
        make_plugin(Auth, {"api_key": {"file": str(path)}})


@pytest.mark.parametrize("settings,message", [
    ({}, "configure at least one of basic, api_key, jwt, forward"),
    ({"api_key": {"keys": [{"consumer": "x", "sha256": "abc"}]}}, "must be 64 hex digits"),
    ({"api_key": {"header": None, "keys": [{"consumer": "x", "sha256": KEY_SHA}]}}, "set header or query"),
    ({"jwt": {"algorithms": ["RS256"]}}, "need public_keys or jwks_file"),
    ({"jwt": {"algorithms": ["HS256"]}}, "need secret or secret_file"),
    ({"jwt": {"algorithms": ["none"], "secret": "x"}}, "algorithms"),
    ({"jwt": {"algorithms": ["HS256"], "secret": "too-short"}}, "at least 32 bytes"),
    ({"forward": {"url": "https://auth:443/check"}}, "expected http://host:port/path"),
    ({"consumer_header": "X Bad"}, "must be a token"),
])
def test_bad_settings_are_refused_at_load(settings, message):
    with pytest.raises((ConfigError, ValueError)) as e:
        make_plugin(Auth, settings)
    assert message in str(e.value)


# ---------------------------------------------------------------- JWT


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("jwt")
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = d / "rsa.pub"
    pem.write_bytes(rsa_key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    jwks = d / "jwks.json"
    jwk_rsa = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key.public_key()))
    jwk_ec = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(ec_key.public_key()))
    jwks.write_text(json.dumps({"keys": [{**jwk_rsa, "kid": "r1", "use": "sig"}, {**jwk_ec, "kid": "e1"}]}))
    return {"rsa": rsa_key, "ec": ec_key, "other": other, "pem": str(pem), "jwks": str(jwks),
            "pem_bytes": pem.read_bytes()}


def token(key, alg="RS256", kid=None, **claims):
    now = int(time.time())
    body = {"sub": "alice", "exp": now + 300, **claims}
    body = {k: v for k, v in body.items() if v is not None}
    return jwt.encode(body, key, algorithm=alg, headers={"kid": kid} if kid else None)


def bearer(t):
    return {"Authorization": f"Bearer {t}"}


def jwt_run(settings, t, **ctx):
    return run_plugin(Auth, {"jwt": settings}, ctx=make_ctx(headers=bearer(t), **ctx))


def test_jwt_rs256_from_pem_admits_and_maps_claims(keys):
    settings = {"public_keys": [keys["pem"]], "claims_to_headers": {"sub": "X-User", "roles": "X-Roles"}}
    run = run_plugin(Auth, {"jwt": settings}, ctx=make_ctx(headers={**bearer(token(keys["rsa"], roles=["a", "b"])), "X-User": "mallory"}))
    assert run.answered is None and run.ctx.facts["consumer"] == "alice"
    assert run.request_headers.get_all("X-User") == ["alice"]
    assert run.request_headers.get("X-Roles") == '["a","b"]'
    assert "Authorization" not in run.request_headers


def test_jwt_keys_from_jwks_by_kid(keys):
    settings = {"algorithms": ["RS256", "ES256"], "jwks_file": keys["jwks"]}
    assert jwt_run(settings, token(keys["rsa"], kid="r1")).answered is None
    assert jwt_run(settings, token(keys["ec"], "ES256", kid="e1")).answered is None
    assert jwt_run(settings, token(keys["rsa"], kid="nope")).status == 401
    # a key that exists but of the wrong kind for the algorithm
    assert jwt_run(settings, token(keys["ec"], "ES256", kid="r1")).status == 401


def test_jwt_hs256(keys):
    settings = {"algorithms": ["HS256"], "secret": "s3cret-s3cret-s3cret-s3cret-s3cret"}
    assert jwt_run(settings, token("s3cret-s3cret-s3cret-s3cret-s3cret", "HS256")).answered is None
    assert jwt_run(settings, token("another-secret-another-secret-xx", "HS256")).status == 401


@pytest.mark.parametrize("claims,reason", [
    ({"exp": int(time.time()) - 3600}, "token expired"),
    ({"nbf": int(time.time()) + 3600}, "token not yet valid"),
    ({"aud": "someone-else"}, "wrong audience"),
    ({"iss": "https://evil"}, "wrong issuer"),
    ({"exp": None}, "invalid token"),
])
def test_jwt_claim_checks(keys, claims, reason):
    settings = {"public_keys": [keys["pem"]], "issuer": "https://idp", "audience": ["api"]}
    base = {"aud": "api", "iss": "https://idp"}
    run = jwt_run(settings, token(keys["rsa"], **{**base, **claims}))
    assert run.status == 401
    challenge = run.headers.get("WWW-Authenticate")
    assert challenge.startswith('Bearer realm="edge", error="invalid_token"') and reason in challenge


def test_jwt_leeway_accepts_small_skew(keys):
    settings = {"public_keys": [keys["pem"]], "leeway": "60s"}
    assert jwt_run(settings, token(keys["rsa"], exp=int(time.time()) - 30)).answered is None


def test_jwt_wrong_signature_and_garbage(keys):
    settings = {"public_keys": [keys["pem"]]}
    assert jwt_run(settings, token(keys["other"])).status == 401
    assert jwt_run(settings, "not.a.token").status == 401
    unsigned = jwt.encode({"sub": "alice", "exp": int(time.time()) + 60}, None, algorithm="none")
    assert jwt_run(settings, unsigned).status == 401


def test_jwt_algorithm_confusion_is_refused(keys):
    # an HS256 token "signed" with the RSA public key as the HMAC secret must not pass, even with HS256 allowed
    def b64(data: bytes) -> bytes:
        return base64.urlsafe_b64encode(data).rstrip(b"=")

    signing_input = b64(b'{"alg":"HS256","typ":"JWT"}') + b"." + b64(json.dumps({"sub": "admin", "exp": int(time.time()) + 60}).encode())
    forged = (signing_input + b"." + b64(hmac.new(keys["pem_bytes"], signing_input, hashlib.sha256).digest())).decode()
    settings = {"algorithms": ["RS256", "HS256"], "public_keys": [keys["pem"]], "secret": "the-real-hmac-secret-0123456789ab"}
    assert jwt_run(settings, forged).status == 401


def test_jwt_verified_once_then_cached_until_expiry(keys):
    plugin = make_plugin(Auth, {"jwt": {"public_keys": [keys["pem"]]}})
    t = token(keys["rsa"], exp=int(time.time()) + 100)
    now = time.time()
    assert plugin._jwt.check(t, now).consumer == "alice"
    assert len(plugin._jwt._seen._items) == 1
    assert plugin._jwt.check(t, now + 1).consumer == "alice"
    assert plugin._jwt._seen.get(t, now + 129) is not None
    assert plugin._jwt._seen.get(t, now + 1000) is None  # past exp + leeway: forgotten, so verified again


def test_jwt_from_cookie(keys):
    settings = {"public_keys": [keys["pem"]], "cookie": "session"}
    run = run_plugin(Auth, {"jwt": settings}, ctx=make_ctx(headers={"Cookie": f"a=b; session={token(keys['rsa'])}"}))
    assert run.answered is None and run.ctx.facts["consumer"] == "alice"
    assert run.request_headers.get_all("Cookie") == ["a=b"]  # the credential is stripped, the rest kept


def test_bearer_without_jwt_configured_falls_to_the_challenge(htpasswd):
    run = run_plugin(Auth, {"basic": {"htpasswd": htpasswd}}, ctx=make_ctx(headers=bearer("x.y.z")))
    assert run.status == 401 and run.headers.get("WWW-Authenticate").startswith("Basic ")


def test_unusable_jwks_is_refused(tmp_path):
    bad = tmp_path / "jwks.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not a usable JWKS"):
        make_plugin(Auth, {"jwt": {"jwks_file": str(bad)}})


def test_unknown_user_is_checked_against_a_real_entrys_hash(htpasswd):
    # timing: a miss must cost what a wrong password costs for the file's scheme and cost
    plugin = make_plugin(Auth, {"basic": {"htpasswd": htpasswd}})
    checker = plugin._basic
    seen = []
    real = _mod.__dict__["_verify_password"]

    def recording(password, hashed):
        seen.append(hashed)
        return real(password, hashed)

    _mod.__dict__["_verify_password"] = recording
    try:
        assert checker.check(basic("nobody", "x")["Authorization"][6:]).consumer is None
    finally:
        _mod.__dict__["_verify_password"] = real
    assert seen == [next(iter(checker._users.values()))]
