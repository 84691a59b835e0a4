"""auth: who is calling. HTTP Basic, API keys, JWT and forward-auth, per route.

Theory of operation
-------------------
A route enables ``auth`` with one or more *methods*. Each local method recognises
its own credential on the request:

- ``basic``: ``Authorization: Basic ...`` (RFC 7617), checked against an htpasswd
  file (bcrypt ``$2y$``/``$2b$``, SHA-512/256-crypt ``$6$``/``$5$``, ``{SHA}``,
  ``{SSHA}``, Apache MD5 ``$apr1$``; through libpass). Password hashes are slow on
  purpose (bcrypt: tens of milliseconds), so the hash runs in gevent's thread pool
  (the worker keeps serving meanwhile) and a success is remembered for
  ``cache_ttl`` under an HMAC of user, password and stored hash with a per-worker
  random key, never the password itself. An unknown user is checked against the first
  entry's hash, so a miss takes as long as a wrong password for that entry's scheme and
  cost (a file that mixes schemes or costs still lets timing tell them apart: keep one).
- ``api_key``: a key in a header or a query parameter. Keys are kept *hashed at
  rest*: the configuration and key files hold SHA-256 digests
  (``printf %s "$KEY" | sha256sum``), and a request's key is hashed and looked up.
  API keys are long random strings, so a fast hash is the right one (as for GitHub
  tokens); a slow password hash would only cost CPU.
- ``jwt``: ``Authorization: Bearer <token>`` (RFC 6750) verified with PyJWT:
  HS256/384/512 with a shared secret, RS256/384/512, PS256, ES256/384 with PEM public
  keys or a local JWKS file (chosen by ``kid``). The algorithm must be one the
  operator listed *and* match the key's kind, so an RS256 public key can never be
  used as an HMAC secret (the classic algorithm-confusion attack). ``exp`` and
  ``nbf`` are checked with ``leeway``, ``iss`` and ``aud`` when configured, and
  ``required_claims`` must be present. Verified tokens are remembered until their
  ``exp`` (bounded LRU), so a busy client costs one signature check.

The first local method whose credential is *present* decides: a valid one admits,
an invalid one is 401 with a ``WWW-Authenticate`` challenge (RFC 9110 §11.6.1). When
no local credential is present, ``forward`` (if configured) asks an auth service,
as nginx ``auth_request`` and Traefik ForwardAuth do: edge sends a sub-request with
the client's ``Authorization`` and ``Cookie`` (configurable) and the original
method, scheme, host, URI and address in ``X-Forwarded-*``; a 2xx admits (copying
``response_headers`` of the answer into the request to the backend); any other
answer is returned to the client as the auth service sent it (status, headers,
body up to ``max_body``), so its login redirects and challenges work. An auth
service that cannot be reached is 503. Without forward-auth and without a
credential: 401 with a challenge for every configured method.

After a success ``ctx.facts["consumer"]`` names the caller (the user, the key's
consumer, the token's ``consumer_claim``, or the auth service's
``consumer_header``) for rate-limit keys (``fact:consumer``) and logs, and
``ctx.facts["auth_method"]`` says how. ``strip_credentials`` (default on) removes
the credential a local method used before the request goes to the backend
(``Authorization``, the API-key header or query parameter). Headers this plugin
sets for the backend (``consumer_header``, ``claims_to_headers``, the forward
``response_headers``) are first removed from the client's request on every
request, so a client cannot send its own ``X-User``.

Files (htpasswd, key files, PEM keys, JWKS) are read while the settings are
validated, which the master does at start and on every reload (``kill -HUP``),
and their contents travel inside the validated configuration that workers
inherit. So a reload picks up a rotated key or a changed password file, and a
file that is missing or malformed refuses the start or the reload with file,
line and reason, while the running workers, and the ones gunicorn starts after
the refused reload, keep the contents they had: a worker never reads a file the
master did not validate. Relative paths are relative to edge's working directory.

Priority 900: after ``ipfilter`` (1000), before ``ratelimit`` (800) so that limits
can be per consumer.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import time
from collections import OrderedDict
from typing import Any, Literal
from urllib.parse import unquote_plus, urlsplit

import gevent
from passlib.context import CryptContext
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from edge.config import Duration, HeaderName, Size
from edge.context import Response
from edge.cookies import get_cookie, remove_cookie
from edge.errors import UpstreamError
from edge.fields import is_field_value
from edge.http import HOP_BY_HOP, without_framing
from edge.plugins import Plugin, PluginConfig, Services

#: password hashes accepted in an htpasswd file (libpass names)
_HTPASSWD_SCHEMES = ("bcrypt", "sha512_crypt", "sha256_crypt", "apr_md5_crypt", "ldap_sha1", "ldap_salted_sha1")
_PASSWORDS = CryptContext(schemes=list(_HTPASSWD_SCHEMES))
#: what an unknown user's password is checked against when the file has no entry at all
_DUMMY_HASH = "$2b$10$" + "N9qo8uLOickgx2ZMRZoMye" + "IjZAgcfl7p92ldGxad68LJZdL17lhWy"

_HMAC_ALGS = ("HS256", "HS384", "HS512")
_PUBLIC_ALGS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
JwtAlgorithm = Literal["HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
                       "ES256", "ES384", "ES512", "EdDSA"]

#: verified tokens and passwords remembered per worker
CACHE_ENTRIES = 4096
#: the shortest HMAC secret accepted (RFC 7518 §3.2, for HS256)
MIN_HMAC_SECRET_BYTES = 32
#: longer tokens are verified every time rather than kept (bounds the cache's memory)
MAX_CACHED_TOKEN_CHARS = 4096

M_OK = "plugin.auth.{}.ok"
M_DENIED = "plugin.auth.{}.denied"
M_FORWARD_ERROR = "plugin.auth.forward.error"


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class BasicSettings(_Section):
    htpasswd: str = Field(description="htpasswd file: `user:hash` per line (bcrypt, SHA-crypt, {SHA}, {SSHA}, $apr1$)")
    realm: str = Field("edge", description="realm named in the Basic challenge")
    cache_ttl: Duration = Field(60.0, description="how long a verified user/password pair is remembered (0: never)")

    _users: dict[str, str] = PrivateAttr(default_factory=dict)

    @field_validator("realm")
    @classmethod
    def _realm(cls, v: str) -> str:
        if '"' in v or "\\" in v or not is_field_value(v):
            raise ValueError("must be printable text without quotes or backslashes")
        return v

    @model_validator(mode="after")
    def _load(self) -> "BasicSettings":
        self._users = load_htpasswd(self.htpasswd)
        return self


class ApiKeyEntry(_Section):
    consumer: str = Field(description="who the key belongs to (ctx.facts['consumer'])")
    sha256: str = Field(description="hex SHA-256 digest of the key (`printf %s KEY | sha256sum`)")

    @field_validator("sha256")
    @classmethod
    def _digest(cls, v: str) -> str:
        v = v.strip().lower()
        if len(v) != 64 or any(c not in "0123456789abcdef" for c in v):
            raise ValueError("must be 64 hex digits (a SHA-256 digest)")
        return v


class ApiKeySettings(_Section):
    header: HeaderName | None = Field("X-API-Key", description="request header carrying the key (null: none)")
    query: str | None = Field(None, description="query parameter carrying the key (null: none)")
    keys: tuple[ApiKeyEntry, ...] = Field((), description="keys, as {consumer, sha256}")
    file: str | None = Field(None, description="file of `consumer:sha256-hex` lines (# comments)")

    _file_digests: dict[str, str] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _some_source(self) -> "ApiKeySettings":
        if self.header is None and self.query is None:
            raise ValueError("set header or query (where the key is sent)")
        if not self.keys and self.file is None:
            raise ValueError("set keys or file")
        if self.file is not None:
            self._file_digests = load_key_file(self.file)
        return self


class JwtSettings(_Section):
    algorithms: tuple[JwtAlgorithm, ...] = Field(("RS256",), min_length=1, description="accepted signature algorithms")
    secret: str | None = Field(None, description="shared secret for HS* algorithms")
    secret_file: str | None = Field(None, description="file holding the shared secret (trailing newline ignored)")
    public_keys: tuple[str, ...] = Field((), description="PEM public key files for RS*/PS*/ES*/EdDSA")
    jwks_file: str | None = Field(None, description="local JWKS file (RFC 7517); keys chosen by `kid`")
    issuer: str | None = Field(None, description="required `iss`")
    audience: tuple[str, ...] = Field((), description="accepted `aud` values (one must match); empty: not checked")
    leeway: Duration = Field(30.0, description="clock skew allowed on exp/nbf/iat")
    required_claims: tuple[str, ...] = Field(("exp",), description="claims that must be present")
    consumer_claim: str = Field("sub", description="claim naming the consumer")
    claims_to_headers: dict[str, HeaderName] = Field({}, description="claim -> request header for the backend")
    cookie: str | None = Field(None, description="also accept the token from this cookie")
    _keys: "JwtKeys" = PrivateAttr(None)

    @model_validator(mode="after")
    def _keys_for_algorithms(self) -> "JwtSettings":
        hmac_wanted = any(a in _HMAC_ALGS for a in self.algorithms)
        public_wanted = any(a in _PUBLIC_ALGS for a in self.algorithms)
        if hmac_wanted and self.secret is None and self.secret_file is None:
            raise ValueError("HS* algorithms need secret or secret_file")
        if public_wanted and not self.public_keys and self.jwks_file is None:
            raise ValueError("RS*/PS*/ES*/EdDSA algorithms need public_keys or jwks_file")
        self._keys = load_jwt_keys(self)
        return self


class ForwardSettings(_Section):
    url: str = Field(description="auth service, `http://host:port/path`")
    method: str = Field("GET", description="method of the sub-request")
    timeout: Duration = Field(2.0, description="connect and read timeout of the sub-request")
    request_headers: tuple[HeaderName, ...] = Field(("Authorization", "Cookie"), description="client headers sent to the auth service")
    response_headers: tuple[HeaderName, ...] = Field((), description="auth-service headers copied into the request to the backend on 2xx")
    consumer_header: HeaderName | None = Field(None, description="auth-service response header naming the consumer")
    max_body: Size = Field(65536, description="largest refusal body passed back to the client")

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme != "http" or not parts.hostname or parts.port is None:
            raise ValueError(f"expected http://host:port/path (got {v!r})")
        return v


class AuthError(ValueError):
    """A credential file that cannot be used; the message names the file and line."""


class Auth(Plugin):
    """Authenticate callers (Basic, API key, JWT, forward-auth) and name them in ctx.facts['consumer']."""

    name = "auth"
    priority = 900

    class Config(PluginConfig):
        timeout: Duration = Field(5.0, description="time budget of each hook call (password hashing, the forward-auth call)")
        basic: BasicSettings | None = Field(None, description="HTTP Basic against an htpasswd file")
        api_key: ApiKeySettings | None = Field(None, description="API keys in a header or query parameter")
        jwt: JwtSettings | None = Field(None, description="JSON Web Tokens (Bearer)")
        forward: ForwardSettings | None = Field(None, description="ask an auth service (nginx auth_request, Traefik ForwardAuth)")
        strip_credentials: bool = Field(True, description="remove the credential a local method used before the backend sees the request")
        consumer_header: HeaderName | None = Field(None, description="request header telling the backend who the consumer is")

        @model_validator(mode="after")
        def _some_method(self) -> "Auth.Config":
            if not (self.basic or self.api_key or self.jwt or self.forward):
                raise ValueError("configure at least one of basic, api_key, jwt, forward")
            return self

    def __init__(self, config: Config, services: Services) -> None:
        self._strip = config.strip_credentials
        self._metrics = services.metrics
        self._log = services.logger
        self._consumer_header = config.consumer_header
        self._basic = BasicAuth(config.basic) if config.basic else None
        self._keys = ApiKeys(config.api_key) if config.api_key else None
        self._jwt = JwtAuth(config.jwt) if config.jwt else None
        self._forward = ForwardAuth(config.forward) if config.forward else None
        # headers only this plugin may set: never believed from the client
        owned = []
        if config.consumer_header:
            owned.append(config.consumer_header)
        if config.jwt:
            owned.extend(config.jwt.claims_to_headers.values())
        if config.forward:
            owned.extend(config.forward.response_headers)
        self._owned = tuple(owned)
        self._owned_lower = frozenset(n.lower() for n in owned)
        challenges = []
        if self._basic:
            challenges.append(("WWW-Authenticate", f'Basic realm="{config.basic.realm}", charset="UTF-8"'))
        if self._jwt:
            challenges.append(("WWW-Authenticate", 'Bearer realm="edge"'))
        self._challenges = tuple(challenges)

    # ------------------------------------------------------------------ request

    def on_request(self, ctx: Any) -> Response | None:
        headers = ctx.headers
        if self._owned:
            # one scan of the fields; the list is rebuilt only when a client sent one of ours
            owned = self._owned_lower
            for k, _ in headers.items():
                if k.lower() in owned:
                    for name in self._owned:
                        headers.remove(name)
                    break
        authorization = headers.get("Authorization")
        scheme, _, credentials = (authorization or "").strip().partition(" ")
        scheme = scheme.lower()
        if self._basic is not None and scheme == "basic":
            return self._decide(ctx, "basic", self._basic.check(credentials.strip()), ("Authorization",))
        if self._jwt is not None:
            from_cookie = scheme != "bearer"
            token = self._jwt.cookie_token(ctx) if from_cookie else credentials.strip()
            if token:
                result = self._jwt.check(token, time.time())
                if result.consumer is not None:
                    for name, value in self._jwt.claim_headers(result.claims):
                        headers.set(name, value)
                    if from_cookie and self._strip:
                        remove_cookie(headers, self._jwt.cookie)
                return self._decide(ctx, "jwt", result, () if from_cookie else ("Authorization",))
        if self._keys is not None:
            found = self._keys.find(ctx)
            if found is not None:
                where, key = found
                result = self._keys.check(key)
                answer = self._decide(ctx, "api_key", result, ())
                if answer is None and self._strip:
                    self._keys.strip(ctx)
                return answer
        if self._forward is not None:
            return self._forwarded(ctx)
        self._count(M_DENIED, "none")
        return self._challenge(ctx, "authentication required")

    def _decide(self, ctx: Any, method: str, result: "Verdict", strip: tuple[str, ...]) -> Response | None:
        if result.consumer is None:
            self._count(M_DENIED, method)
            self._log.info("auth %s refused for %s: %s", method, ctx.client_ip, result.reason)
            if method == "jwt":
                return self._bearer_error(ctx, result.reason)
            return self._challenge(ctx, "invalid credentials")
        self._admit(ctx, method, result.consumer)
        if self._strip:
            for name in strip:
                ctx.headers.remove(name)
        return None

    def _admit(self, ctx: Any, method: str, consumer: str) -> None:
        self._count(M_OK, method)
        ctx.facts["consumer"] = consumer
        ctx.facts["auth_method"] = method
        if self._consumer_header is not None and is_field_value(consumer):
            ctx.headers.set(self._consumer_header, consumer)

    def _forwarded(self, ctx: Any) -> Response | None:
        try:
            outcome = self._forward.ask(ctx)
        except UpstreamError as e:
            self._count(M_FORWARD_ERROR, None)
            self._log.warning("auth service %s failed: %s", self._forward.url, e)
            return Response.error(503, "authentication service unavailable", ctx.request_id)
        if outcome.admitted:
            for name, value in outcome.copy:
                ctx.headers.set(name, value)
            self._admit(ctx, "forward", outcome.consumer or "")
            return None
        self._count(M_DENIED, "forward")
        return outcome.refusal

    def _challenge(self, ctx: Any, message: str) -> Response:
        resp = Response.error(401, message, ctx.request_id)
        for name, value in self._challenges:
            resp.headers.add(name, value)
        return resp

    def _bearer_error(self, ctx: Any, reason: str) -> Response:
        # RFC 6750 §3: error="invalid_token"; the description is ours (no quotes or backslashes in it)
        resp = Response.error(401, "invalid token", ctx.request_id)
        desc = reason.replace('"', "'").replace("\\", "/")[:120]
        value = f'Bearer realm="edge", error="invalid_token", error_description="{desc}"'
        resp.headers.add("WWW-Authenticate", value if is_field_value(value) else 'Bearer realm="edge", error="invalid_token"')
        if self._basic is not None:
            resp.headers.add(*self._challenges[0])
        return resp

    def _count(self, template: str, method: str | None) -> None:
        if self._metrics is not None:
            self._metrics.incr(template.format(method) if method else template)


# --------------------------------------------------------------------------- methods


class Verdict:
    """A credential check: ``consumer`` when it passed, else None and ``reason``."""

    __slots__ = ("consumer", "reason", "claims")

    def __init__(self, consumer: str | None, reason: str = "", claims: dict | None = None) -> None:
        self.consumer, self.reason, self.claims = consumer, reason, claims


class _Expiring:
    """A bounded LRU of key -> (value, expires at)."""

    __slots__ = ("_items", "_max")

    def __init__(self, max_entries: int = CACHE_ENTRIES) -> None:
        self._items: OrderedDict[Any, tuple[Any, float]] = OrderedDict()
        self._max = max_entries

    def get(self, key: Any, now: float) -> Any:
        hit = self._items.get(key)
        if hit is None:
            return None
        if hit[1] <= now:
            del self._items[key]
            return None
        self._items.move_to_end(key)
        return hit[0]

    def put(self, key: Any, value: Any, expires: float) -> None:
        self._items[key] = (value, expires)
        self._items.move_to_end(key)
        while len(self._items) > self._max:
            self._items.popitem(last=False)


def _lines(path: str) -> list[tuple[int, str]]:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise AuthError(f"{path}: cannot read: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise AuthError(f"{path}: not UTF-8 text") from None
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if line and not line.startswith("#"):
            out.append((n, line))
    return out


def load_htpasswd(path: str) -> dict[str, str]:
    """``user:hash`` lines -> {user: hash}; an unknown hash scheme refuses the file (pure apart from the read)."""
    users: dict[str, str] = {}
    for n, line in _lines(path):
        user, sep, hashed = line.partition(":")
        if not sep or not user or not hashed:
            raise AuthError(f"{path}: line {n}: expected user:hash")
        if _PASSWORDS.identify(hashed, required=False) is None:
            raise AuthError(f"{path}: line {n}: user {user!r}: unsupported password hash "
                            "(use bcrypt, SHA-512/256-crypt, {SHA}, {SSHA} or $apr1$)")
        if user in users:
            raise AuthError(f"{path}: line {n}: user {user!r} appears twice")
        users[user] = hashed
    return users


def load_key_file(path: str) -> dict[str, str]:
    """``consumer:sha256-hex`` lines -> {digest: consumer}."""
    digests: dict[str, str] = {}
    for n, line in _lines(path):
        consumer, sep, digest = line.rpartition(":")
        digest = digest.strip().lower()
        if not sep or not consumer.strip() or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise AuthError(f"{path}: line {n}: expected consumer:sha256-hex")
        digests[digest] = consumer.strip()
    return digests


def parse_basic(credentials: str) -> tuple[str, str] | None:
    """RFC 7617 §2: base64 of ``user-id ":" password``; UTF-8 (we announce charset="UTF-8"). None if malformed."""
    try:
        raw = base64.b64decode(credentials, validate=True)
    except (binascii.Error, ValueError):
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    user, sep, password = text.partition(":")
    if not sep or not user:
        return None
    return user, password


def _verify_password(password: str, hashed: str) -> bool:
    return _PASSWORDS.verify(password, hashed)


class BasicAuth:
    def __init__(self, cfg: BasicSettings) -> None:
        self._users = cfg._users
        # An unknown user is checked against a real entry's hash (its scheme and cost), so a miss
        # costs what a wrong password costs and the time does not tell which names exist.
        self._dummy = next(iter(cfg._users.values()), _DUMMY_HASH)
        self._ttl = cfg.cache_ttl
        self._seen = _Expiring()
        self._secret = os.urandom(32)  # per worker: the cache never holds a password or a reusable digest

    def check(self, credentials: str) -> Verdict:
        parsed = parse_basic(credentials)
        if parsed is None:
            return Verdict(None, "malformed Basic credentials")
        user, password = parsed
        hashed = self._users.get(user)
        key = hmac.new(self._secret, f"{user}\0{password}\0{hashed}".encode("utf-8", "surrogatepass"), hashlib.sha256).digest()
        now = time.monotonic()
        if self._ttl and self._seen.get(key, now):
            return Verdict(user)
        # the slow hash runs on a thread, so other connections of this worker keep being served
        ok = gevent.get_hub().threadpool.apply(_verify_password, (password, hashed or self._dummy))
        if not ok or hashed is None:
            return Verdict(None, f"wrong password or unknown user {user[:64]!r}")
        if self._ttl:
            self._seen.put(key, True, now + self._ttl)
        return Verdict(user)


class ApiKeys:
    def __init__(self, cfg: ApiKeySettings) -> None:
        self._header = cfg.header
        self._query = cfg.query
        self._query_prefix = f"{cfg.query}=" if cfg.query else None
        self._digests = {**cfg._file_digests, **{e.sha256: e.consumer for e in cfg.keys}}

    def find(self, ctx: Any) -> tuple[str, str] | None:
        """``(where, key)`` of the key the request carries, or None."""
        if self._header is not None:
            value = ctx.headers.get(self._header)
            if value:
                return "header", value.strip()
        if self._query_prefix is not None and ctx.query:
            for part in ctx.query.split("&"):
                if part.startswith(self._query_prefix):
                    return "query", unquote_plus(part[len(self._query_prefix):])
        return None

    def check(self, key: str) -> Verdict:
        consumer = self._digests.get(hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest())
        return Verdict(consumer) if consumer is not None else Verdict(None, "unknown API key")

    def strip(self, ctx: Any) -> None:
        """Remove the key from both places it may be sent, whichever one was used."""
        if self._header is not None:
            ctx.headers.remove(self._header)
        if self._query_prefix is not None and ctx.query:
            ctx.query = "&".join(p for p in ctx.query.split("&") if not p.startswith(self._query_prefix))


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise AuthError(f"{path}: cannot read: {getattr(e, 'strerror', None) or e}") from None


def _jwt_module():
    """PyJWT, imported on first use: every plugin module is imported by the master, and PyJWT
    imports ``ssl`` names directly (its JWKS client), which makes gevent warn at every worker's
    monkey-patching; a configuration without JWTs should not pay that."""
    import jwt

    return jwt


class JwtKeys:
    """The keys of a ``jwt`` section, read from its files when the configuration is validated."""

    __slots__ = ("secret", "by_kid", "anonymous")

    def __init__(self, secret: bytes | None, by_kid: dict[str, Any], anonymous: list[Any]) -> None:
        self.secret, self.by_kid, self.anonymous = secret, by_kid, anonymous


def load_jwt_keys(cfg: "JwtSettings") -> JwtKeys:
    import jwt  # only where JWTs are configured (see _jwt_module)

    secret: bytes | None = None
    if cfg.secret is not None:
        secret = cfg.secret.encode()
    elif cfg.secret_file is not None:
        secret = _read(cfg.secret_file).rstrip("\r\n").encode()
    if secret is not None and len(secret) < MIN_HMAC_SECRET_BYTES:
        # RFC 7518 §3.2: "A key of the same size as the hash output (for instance, 256 bits for
        # "HS256") or larger MUST be used with this algorithm."
        raise AuthError(f"jwt secret: must be at least {MIN_HMAC_SECRET_BYTES} bytes (RFC 7518 §3.2)")
    by_kid: dict[str, Any] = {}
    anonymous: list[Any] = []
    for path in cfg.public_keys:
        try:
            anonymous.append(jwt.PyJWK.from_dict(_pem_to_jwk(_read(path))))
        except (ValueError, jwt.PyJWKError) as e:
            raise AuthError(f"{path}: not a usable PEM public key: {e}") from None
    if cfg.jwks_file is not None:
        try:
            keyset = jwt.PyJWKSet.from_json(_read(cfg.jwks_file))
        except (ValueError, jwt.PyJWKSetError, jwt.PyJWKError) as e:
            raise AuthError(f"{cfg.jwks_file}: not a usable JWKS: {e}") from None
        for key in keyset.keys:
            if key.key_id:
                by_kid[key.key_id] = key
            else:
                anonymous.append(key)
    return JwtKeys(secret, by_kid, anonymous)


class JwtAuth:
    """Token verification with keys fixed at build: a rotated JWKS file takes effect on reload."""

    def __init__(self, cfg: JwtSettings) -> None:
        self._algorithms = frozenset(cfg.algorithms)
        self._issuer = cfg.issuer
        self._audience = list(cfg.audience) or None
        self._leeway = cfg.leeway
        self._options = {"require": list(cfg.required_claims), "verify_aud": bool(cfg.audience)}
        self._consumer_claim = cfg.consumer_claim
        self._claim_headers = tuple(cfg.claims_to_headers.items())
        self._cookie = cfg.cookie
        self._seen = _Expiring()
        self._module = _jwt_module()
        self._secret = cfg._keys.secret
        self._by_kid = cfg._keys.by_kid
        self._anonymous = cfg._keys.anonymous

    @property
    def cookie(self) -> str | None:
        return self._cookie

    def cookie_token(self, ctx: Any) -> str | None:
        if self._cookie is None:
            return None
        return get_cookie(ctx.headers, self._cookie)

    def check(self, token: str, now: float) -> Verdict:
        jwt = self._module
        hit = self._seen.get(token, now)
        if hit is not None:
            claims, not_before = hit
            if now + self._leeway >= not_before:
                return Verdict(str(claims.get(self._consumer_claim, "")), claims=claims)
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as e:
            return Verdict(None, f"malformed token: {e}")
        alg = header.get("alg")
        if alg not in self._algorithms:
            return Verdict(None, f"algorithm {str(alg)[:16]!r} not accepted")
        key = self._key_for(alg, header.get("kid"))
        if key is None:
            return Verdict(None, "no key for this token")
        try:
            claims = jwt.decode(token, key, algorithms=[alg], audience=self._audience, issuer=self._issuer,
                                leeway=self._leeway, options=self._options)
        except jwt.ExpiredSignatureError:
            return Verdict(None, "token expired")
        except jwt.ImmatureSignatureError:
            return Verdict(None, "token not yet valid")
        except jwt.InvalidAudienceError:
            return Verdict(None, "wrong audience")
        except jwt.InvalidIssuerError:
            return Verdict(None, "wrong issuer")
        except jwt.PyJWTError as e:
            return Verdict(None, f"invalid token: {e}")
        consumer = claims.get(self._consumer_claim)
        if consumer is None:
            return Verdict(None, f"no {self._consumer_claim} claim")
        exp = claims.get("exp")
        if isinstance(exp, (int, float)) and len(token) <= MAX_CACHED_TOKEN_CHARS:
            nbf = claims.get("nbf")
            self._seen.put(token, (claims, nbf if isinstance(nbf, (int, float)) else 0.0), exp + self._leeway)
        return Verdict(str(consumer), claims=claims)

    def _key_for(self, alg: str, kid: Any) -> Any:
        if alg in _HMAC_ALGS:
            return self._secret  # never a public key as an HMAC secret (algorithm confusion)
        if isinstance(kid, str) and kid in self._by_kid:
            candidates = [self._by_kid[kid]]
        else:
            candidates = self._anonymous if kid is None else []
        for key in candidates:
            if _key_fits(key, alg):
                return key
        return None

    def claim_headers(self, claims: dict | None) -> list[tuple[str, str]]:
        out = []
        for claim, header in self._claim_headers:
            value = (claims or {}).get(claim)
            if value is None:
                continue
            text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
            if is_field_value(text):
                out.append((header, text))
        return out


def _key_fits(key: Any, alg: str) -> bool:
    """The JWK's own ``alg`` when it states one; else its key type must suit the algorithm."""
    if key.algorithm_name:
        return key.algorithm_name == alg
    kty = key.key_type
    if alg.startswith(("RS", "PS")):
        return kty == "RSA"
    if alg.startswith("ES"):
        return kty == "EC"
    return alg == "EdDSA" and kty == "OKP"


def _pem_to_jwk(pem: str) -> dict:
    """A PEM public key as a JWK dict (PyJWK carries the key type we check against the algorithm)."""
    jwt = _jwt_module()
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    key = load_pem_public_key(pem.encode())
    if isinstance(key, rsa.RSAPublicKey):
        return json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key))
    if isinstance(key, ec.EllipticCurvePublicKey):
        return json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key))
    if isinstance(key, ed25519.Ed25519PublicKey):
        return json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(key))
    raise ValueError("unsupported key type")


# --------------------------------------------------------------------------- forward-auth


class ForwardOutcome:
    __slots__ = ("admitted", "copy", "consumer", "refusal")

    def __init__(self, admitted: bool, copy=(), consumer: str | None = None, refusal: Response | None = None) -> None:
        self.admitted, self.copy, self.consumer, self.refusal = admitted, copy, consumer, refusal


#: auth-service answer fields never passed back to the client (framing is edge's; hop-by-hop ends here)
_NOT_RETURNED = HOP_BY_HOP | {"content-length", "transfer-encoding", "server", "date"}


class ForwardAuth:
    """The sub-request to the auth service, over edge's own pooled upstream client."""

    def __init__(self, cfg: ForwardSettings) -> None:
        from edge.config import UpstreamConfig
        from edge.upstream.client import UpstreamPool

        parts = urlsplit(cfg.url)
        self.url = cfg.url
        self._target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._method = cfg.method
        self._pass = tuple(cfg.request_headers)
        self._copy = tuple(n.lower() for n in cfg.response_headers)
        self._consumer = cfg.consumer_header.lower() if cfg.consumer_header else None
        self._max_body = cfg.max_body
        pool_cfg = UpstreamConfig(
            servers=[f"{parts.hostname}:{parts.port}" if ":" not in parts.hostname else f"[{parts.hostname}]:{parts.port}"],
            timeouts={"connect": cfg.timeout, "read": cfg.timeout, "send": cfg.timeout, "total": cfg.timeout},
            retries=0,
        )
        self._pool = UpstreamPool("auth", pool_cfg)

    def ask(self, ctx: Any) -> ForwardOutcome:
        headers = []
        for name in self._pass:
            for value in ctx.headers.get_all(name):
                headers.append((name, value))
        uri = ctx.raw_path + (f"?{ctx.query}" if ctx.query else "")
        headers += [
            ("X-Forwarded-Method", ctx.method),
            ("X-Forwarded-Proto", ctx.scheme),
            ("X-Forwarded-Host", ctx.host or ""),
            ("X-Forwarded-Uri", uri),
            ("X-Forwarded-For", ctx.client_ip),
        ]
        headers = [(k, v) for k, v in headers if is_field_value(v)]
        reply = self._pool.exchange(self._method, self._target, None, headers, None, None)
        try:
            body = self._body(reply)
        finally:
            reply.close()
        if 200 <= reply.status < 300:
            copy = [(k, v) for k, v in reply.headers if k.lower() in self._copy]
            consumer = next((v for k, v in reply.headers if k.lower() == self._consumer), None) if self._consumer else None
            return ForwardOutcome(True, copy, consumer)
        kept = [(k, v) for k, v in without_framing(reply.headers) if k.lower() not in _NOT_RETURNED]
        return ForwardOutcome(False, refusal=Response(reply.status, kept, body))

    def _body(self, reply: Any) -> bytes:
        if reply.body is None:
            return b""
        parts, size = [], 0
        for chunk in reply.body:
            size += len(chunk)
            if size > self._max_body:
                return b""  # too large to pass back: the status and headers still say what the service meant
            parts.append(chunk)
        return b"".join(parts)

    def close(self) -> None:
        self._pool.close()
