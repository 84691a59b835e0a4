"""ratelimit: request-rate limits and per-client concurrency caps, shared through the store.

Theory of operation
-------------------
**Keys.** Every request gets a key built from the configured parts, in order,
joined by ``|``: ``client_ip``; ``client_net`` (the client's /24 for IPv4, /64
for IPv6; an IPv4-mapped IPv6 address counts as IPv4); ``header:<Name>`` (e.g.
an API key); ``cookie:<name>``; ``route`` (the matched route's name); and
``fact:<name>`` (``ctx.facts[name]``, set by an earlier plugin such as ``auth``'s
``consumer`` or ``geo``'s ``country``). Header and cookie values are hashed
(BLAKE2b, 96 bits) so secrets never reach the store and keys stay short. When a
part is missing (no such header, cookie or fact), ``missing_key: anonymous``
(default) puts that part to ``~anon``, so all such requests share one bucket (per
value of the other parts); ``skip`` lets them through unlimited.

The store key of a limit is ``rl:<limit name>:<count>/<period><g|w>:<key>``, the
same string on every backend (each backend adds ``store.key_prefix``). Limits
are shared by every route whose plugin settings produce the same key: add
``route`` to ``key`` to give each route its own buckets.

**Several limits** (``20/s burst 40`` and ``5000/h``) are checked in order of
increasing period. Each check is exactly one atomic ``Store.ratelimit_step`` (a
Lua script on Redis, CAS on memcached, one LMDB transaction on ``local``): never
read, decide, then write. The first refusal stops the checks, so a request
refused per second does not spend an hourly token (a request admitted per
second and refused per hour does spend its per-second token).

**Answers.** A refused request gets ``status`` (429) with ``Retry-After``
(whole seconds, rounded up) and the IETF headers of
draft-ietf-httpapi-ratelimit-headers: ``RateLimit-Policy: "<name>";q=<count>;
w=<period s>`` for every limit and ``RateLimit: "<name>";r=<remaining>;t=<s>``
for every limit checked (``t``: seconds until the limit is full again; on the
refused limit, until a request may pass). Admitted responses get the same two
headers in ``on_response`` (``headers: false`` turns them off); the decision
travels in ``ctx.facts["ratelimit"]`` (a ``RateLimitFact``), where a log plugin
can read it too. ``dry_run: true`` checks and counts every limit, logs and
counts what would have been refused, and admits everything without headers.

**When the store fails** (``StoreUnavailable``), ``on_store_error`` decides:
``open`` admits, ``closed`` answers 503 (``Retry-After: 1``), ``local`` enforces
``local_share`` of each limit (e.g. 0.5 on each of two nodes) on the node-local
LMDB store (``services.local_store``, shared by the node's workers; it *is* the
main store when ``store.backend`` is ``local``). Each request decided by the
fallback is counted (``plugin.ratelimit.fallback.<policy>`` and
``RateLimit.fallbacks``); the switch to the fallback and back are logged once
each, per worker. The request whose store call failed is always decided by the
policy; the *switch* (from then on, requests go straight to the fallback for
``STORE_RETRY_S``, 0.5 s, so a store that hangs costs one timeout per half
second, not one per request) happens only once the store has failed for
``STORE_DOWN_AFTER_S`` (0.1 s) with no success in between. One late answer is
not a dead store: a CPU-starved worker (a reload, a busy neighbour) sees a
healthy store time out now and then, and switching at the first failure turned
each such blip into half a second of fallback decisions for every request of the
worker (issue 8: 2,225 fail-open decisions over five reloads). A dead store
fails every call, so the switch follows within 0.1 s. Then the store is tried
again every ``STORE_RETRY_S``; the first success switches back, so a restarted
Redis is used again within about half a second, without restart.

**Concurrency caps** (``concurrency: {max: N}``) live in this plugin rather than
in a separate one because they need the same key parts, the same store and the
same failure policy. ``on_request`` does one atomic ``incr`` of the client's
counter; a result above ``max`` is refused (``concurrency.status``, 429 or 503).
``on_log``, which runs after every request (admitted, refused, failed or
answered by another plugin), does the matching ``incr(-1)``. The counter key
carries the current epoch ``floor(now / slot_ttl)`` and expires after two
epochs, so slots leaked by a killed worker are forgotten at the next epoch
boundary (by default within 60 s). The cost of that: in-flight requests that
started in the previous epoch are not counted in the new one, so for the length
of those requests a client may briefly hold up to ``2 × max``. The rate limits
are checked first (a request they refuse takes no slot), then the cap. With the
``local`` fallback the cap is ``max(1, floor(max × local_share))`` per node.

Priority 800: after ``auth`` (900), so a limit can be per consumer, and after
``ipfilter`` (1000), so denied clients cost no token.
"""

from __future__ import annotations

import enum
import hashlib
import ipaddress
import logging
import math
import re
import time
from typing import Any, Callable, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from edge.config import Duration
from edge.context import RequestContext, Response, UpstreamResponse
from edge.cookies import get_cookie
from edge.errors import StoreUnavailable
from edge.plugins import Plugin, PluginConfig, Services
from edge.store.base import DEFAULT_PLUGIN_TIMEOUT_S
from edge.ratelimit import Algorithm, Decision, Limit

#: after a store failure, how long requests use the fallback before the store is tried again
STORE_RETRY_S = 0.5
#: how long the store must keep failing (no success in between) before requests stop trying it
STORE_DOWN_AFTER_S = 0.1
#: dry-run refusals are logged at most once per this many seconds (with the count since)
DRY_RUN_LOG_INTERVAL_S = 10.0
#: the key part that stands for a missing header, cookie or fact with ``missing_key: anonymous``
ANONYMOUS = "~anon"
#: ``Retry-After`` never says more than a day (a cost above the limit would say "never")
MAX_RETRY_AFTER_S = 86400

# metric names (statsd, under the configured prefix)
M_REFUSED = "plugin.ratelimit.refused"
M_DRY_RUN = "plugin.ratelimit.dry_run_refused"
M_CONC_REFUSED = "plugin.ratelimit.concurrency_refused"
M_FALLBACK = "plugin.ratelimit.fallback."  # + open | closed | local
M_RELEASE_FAILED = "plugin.ratelimit.release_failed"

_KEY_PART = re.compile(r"client_ip|client_net|route|header:[!#$%&'*+\-.^_`|~0-9A-Za-z]+|cookie:[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
                       r"|fact:[A-Za-z0-9_.\-]+")
_POLICY_NAME = re.compile(r"[A-Za-z0-9_.\-]+")
_SAFE_FACT = re.compile(r"[\x21-\x7b\x7d\x7e]{1,64}")  # printable, no '|' (the separator), bounded


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _parts(v: Any) -> tuple[str, ...]:
    parts = (v,) if isinstance(v, str) else tuple(v)
    if not parts:
        raise ValueError("give at least one key part")
    for p in parts:
        if not isinstance(p, str) or not _KEY_PART.fullmatch(p):
            raise ValueError(f"unknown key part {p!r} (client_ip, client_net, route, header:<Name>, cookie:<name>, "
                             "fact:<name>)")
    return parts


class LimitSettings(_Model):
    rate: str = Field(description="requests per period: `20/s`, `5000/h`, `10/5m`")
    burst: int = Field(0, ge=0, description="gcra: requests admitted at once (0: the rate's count)")
    algorithm: Literal["gcra", "window"] | None = Field(None, description="overrides the plugin's `algorithm`")
    name: str | None = Field(None, description="policy name in the RateLimit headers (default `default`, "
                                               "or `default-<i>` with several limits)")

    @field_validator("rate")
    @classmethod
    def _rate(cls, v: str) -> str:
        Limit.parse(v)  # ValueError names the rate
        return v

    @field_validator("name")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        if v is not None and not _POLICY_NAME.fullmatch(v):
            raise ValueError(f"a policy name is letters, digits, '_', '.', '-' (got {v!r})")
        return v


class ConcurrencySettings(_Model):
    max: int = Field(ge=1, description="concurrent requests per key")
    status: Literal[429, 503] = Field(429, description="answer beyond `max`")
    slot_ttl: Duration = Field(60.0, description="epoch of the counters: leaked slots are forgotten after at most this")
    key: Union[str, tuple[str, ...], None] = Field(None, description="key parts (default: the plugin's `key`)")

    @field_validator("key", mode="before")
    @classmethod
    def _key(cls, v: Any) -> Any:
        return None if v is None else _parts(v)

    @field_validator("slot_ttl")
    @classmethod
    def _ttl(cls, v: float) -> float:
        if v < 1:
            raise ValueError(f"must be at least 1s (got {v})")
        return v


class _State(enum.Enum):
    """Whether the shared store is used (UP) or the fallback policy applies (DOWN)."""

    UP = "up"
    DOWN = "down"


class RateLimitFact:
    """What ``on_request`` decided, in ``ctx.facts["ratelimit"]``."""

    __slots__ = ("allowed", "decisions", "header", "fallback")

    def __init__(self, allowed: bool, decisions: tuple[Decision, ...], header: str | None, fallback: str | None) -> None:
        self.allowed = allowed
        self.decisions = decisions    # one per limit checked, in check order
        self.header = header          # the RateLimit field value, or None (dry run, headers off)
        self.fallback = fallback      # None, or the on_store_error policy that decided

    def __repr__(self) -> str:
        return f"RateLimitFact(allowed={self.allowed}, header={self.header!r}, fallback={self.fallback!r})"


class _CompiledLimit:
    __slots__ = ("name", "limit", "local_limit", "prefix", "quoted", "_r")

    def __init__(self, name: str, limit: Limit, local_limit: Limit) -> None:
        self.name = name
        self.limit = limit
        self.local_limit = local_limit
        tag = "g" if limit.algorithm is Algorithm.GCRA else "w"
        self.prefix = f"rl:{name}:{limit.count:g}/{limit.period_s:g}{tag}:"
        self.quoted = f'"{name}"'
        self._r = f'"{name}";r='

    def rate_item(self, d: Decision) -> str:
        """This limit's item of the ``RateLimit`` field for decision ``d``."""
        t = d.reset_after_s if d.allowed else d.retry_after_s
        return f"{self._r}{d.remaining};t={math.ceil(t) if t < MAX_RETRY_AFTER_S else MAX_RETRY_AFTER_S}"


def _hash(value: str) -> str:
    return hashlib.blake2b(value.encode("utf-8", "surrogateescape"), digest_size=12).hexdigest()


_NETS: dict[str, str] = {}


def client_net(ip: str) -> str:
    """The /24 of an IPv4 address, the /64 of an IPv6 one (IPv4-mapped counts as IPv4)."""
    net = _NETS.get(ip)
    if net is not None:
        return net
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return ip  # not an address (a unix socket peer): the value itself
    if addr.version == 6 and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    if addr.version == 4:
        net = str(ipaddress.ip_network(f"{addr}/24", strict=False))
    else:
        net = str(ipaddress.ip_network(f"{addr}/64", strict=False))
    if len(_NETS) > 65536:  # bounded memo: parsing costs ~3 µs, a dict hit ~50 ns
        _NETS.clear()
    _NETS[ip] = net
    return net


def _getter(part: str) -> Callable[[RequestContext], str | None]:
    if part == "client_ip":
        return lambda ctx: ctx.client_ip
    if part == "client_net":
        return lambda ctx: client_net(ctx.client_ip)
    if part == "route":
        return lambda ctx: ctx.route.name if ctx.route is not None else "_none"
    kind, _, name = part.partition(":")
    if kind == "header":
        def header(ctx: RequestContext) -> str | None:
            v = ctx.headers.get(name)
            return _hash(v) if v else None
        return header
    if kind == "cookie":
        def cookie(ctx: RequestContext) -> str | None:
            v = get_cookie(ctx.headers, name)
            return _hash(v) if v else None
        return cookie

    def fact(ctx: RequestContext) -> str | None:
        v = ctx.facts.get(name)
        if v is None or v == "":
            return None
        s = v if isinstance(v, str) else str(v)
        return s if _SAFE_FACT.fullmatch(s) else _hash(s)
    return fact


class _KeyBuilder:
    """Compiled key parts; ``build(ctx)`` is the key, or None (skip) when a part is missing."""

    __slots__ = ("_getters", "_skip")

    def __init__(self, parts: tuple[str, ...], skip_missing: bool) -> None:
        self._getters = tuple(_getter(p) for p in parts)
        self._skip = skip_missing

    def build(self, ctx: RequestContext) -> str | None:
        getters = self._getters
        if len(getters) == 1:
            v = getters[0](ctx)
            if v is None:
                return None if self._skip else ANONYMOUS
            return v
        out = []
        for g in getters:
            v = g(ctx)
            if v is None:
                if self._skip:
                    return None
                v = ANONYMOUS
            out.append(v)
        return "|".join(out)


_RL_FIELDS = frozenset({"ratelimit-policy", "ratelimit"})  # the fields on_response sets
_RL_FIELD_LENGTHS = frozenset(len(f) for f in _RL_FIELDS)

_OPEN = object()  # _step: the fallback policy `open` admitted without a decision
_CLOSED = object()  # _step: the fallback policy `closed` refused


class RateLimit(Plugin):
    """Several rate limits and a concurrency cap per client key, shared through the store."""

    name = "ratelimit"
    priority = 800

    class Config(PluginConfig):
        timeout: Duration = Field(
            DEFAULT_PLUGIN_TIMEOUT_S,
            description="time budget of on_request (default: edge's, which one failing store call at the default "
                        "`store.timeout` cannot outlast; a request makes at most one failing call, then the fallback "
                        "decides). With a larger `store.timeout`, keep it above 4 x `store.timeout` + 50ms")
        limits: tuple[LimitSettings, ...] = Field((), description="the limits; a request must pass all of them")
        algorithm: Literal["gcra", "window"] = Field("gcra", description="`gcra` (token bucket: rate + burst) or "
                                                                         "`window` (sliding window)")
        key: Union[str, tuple[str, ...]] = Field(
            ("client_ip",), description="key part or list of parts: client_ip, client_net, route, header:<Name>, "
                                        "cookie:<name>, fact:<name>")
        missing_key: Literal["anonymous", "skip"] = Field(
            "anonymous", description="a missing header/cookie/fact: share one `anonymous` bucket, or `skip` limiting")
        status: int = Field(429, ge=400, le=599, description="status of a refused request")
        headers: bool = Field(True, description="send RateLimit-Policy and RateLimit on every response")
        dry_run: bool = Field(False, description="count and log refusals but admit every request")
        on_store_error: Literal["open", "closed", "local"] = Field(
            "open", description="when the store fails: admit (`open`), answer 503 (`closed`), or enforce "
                                "`local_share` of each limit on the node-local store (`local`)")
        local_share: float = Field(1.0, gt=0, le=1, description="share of each limit one node enforces with "
                                                                "`on_store_error: local` (0.5 for two nodes)")
        concurrency: ConcurrencySettings | None = Field(None, description="cap on concurrent requests per key")

        @field_validator("key", mode="before")
        @classmethod
        def _key(cls, v: Any) -> Any:
            return _parts(v)

        @model_validator(mode="after")
        def _something(self) -> "RateLimit.Config":
            if not self.limits and self.concurrency is None:
                raise ValueError("give `limits`, `concurrency` or both")
            names = [s.name for s in self.limits if s.name is not None]
            dup = {n for n in names if names.count(n) > 1}
            if dup:
                raise ValueError(f"duplicate limit name {sorted(dup)[0]!r}")
            return self

    def __init__(self, config: Config, services: Services) -> None:
        self._store = services.store
        self._local = services.extras.get("local_store")
        self._log = services.logger or logging.getLogger("edge.plugin.ratelimit")
        metrics = services.metrics
        self._incr: Callable[[str], None] = metrics.incr if metrics is not None else (lambda name: None)
        self._policy = config.on_store_error
        self._m_fallback = M_FALLBACK + config.on_store_error
        if self._policy == "local" and self._local is None:
            # edge.runtime always provides one; a hand-built Services may not
            from edge.store.memory import MemoryStore

            self._local = MemoryStore()
            self._log.warning("ratelimit: no services.local_store; the `local` fallback uses this worker's memory")
        share = config.local_share
        several = len(config.limits) > 1
        compiled = []
        for i, s in enumerate(config.limits):
            limit = Limit.parse(s.rate, s.burst, s.algorithm or config.algorithm)
            local = Limit(limit.count * share, limit.period_s, max(1, math.floor(limit.burst * share)), limit.algorithm)
            name = s.name or (f"default-{i}" if several else "default")
            compiled.append(_CompiledLimit(name, limit, local))
        compiled.sort(key=lambda c: c.limit.period_s)  # stable: config order among equal periods
        self._limits = tuple(compiled)
        self._one = compiled[0] if len(compiled) == 1 else None  # _limit's fast path
        self._key = _KeyBuilder(config.key, config.missing_key == "skip")
        self._status = config.status
        self._dry_run = config.dry_run
        self._headers = config.headers and not config.dry_run
        self._policy_header = ", ".join(
            f"{c.quoted};q={_quota(c.limit.count)};w={max(1, math.ceil(c.limit.period_s))}" for c in self._limits)
        conc = config.concurrency
        if conc is not None:
            self._conc_key = _KeyBuilder(conc.key, config.missing_key == "skip") if conc.key else self._key
            self._conc_max = conc.max
            self._conc_local_max = max(1, math.floor(conc.max * share))
            self._conc_status = conc.status
            self._conc_epoch_s = conc.slot_ttl
            self._conc_ttl_s = 2 * conc.slot_ttl
        self._conc = conc is not None
        # store health as this plugin sees it (per worker); see the module docstring
        self._state = _State.UP
        self._retry_at = 0.0
        self._failing_since: float | None = None  # first failure since the last success
        self._clock: Callable[[], float] = time.monotonic  # of the store-health decisions (tests inject one)
        # counters (per worker), for tests and the status page
        self.fallbacks = 0
        self.refused = 0
        self.dry_run_refused = 0
        self.concurrency_refused = 0
        self._dry_logged_at = -math.inf
        self._dry_unlogged = 0

    # -- store access with the fallback policy --------------------------------------------

    def _down(self, exc: StoreUnavailable) -> None:
        now = self._clock()
        since = self._failing_since
        if since is None:
            self._failing_since = since = now
        if self._state is _State.UP and now - since < STORE_DOWN_AFTER_S:
            return  # perhaps only this worker was late: this request falls back, the next tries again
        self._retry_at = now + STORE_RETRY_S
        if self._state is _State.UP:
            self._state = _State.DOWN
            self._log.warning("ratelimit: store unavailable (%s); on_store_error=%s applies until it is back",
                              exc, self._policy)

    def _up(self) -> None:
        self._state = _State.UP
        self._failing_since = None
        self._log.warning("ratelimit: store available again; limits are shared again (after %d fallback decisions)",
                          self.fallbacks)

    def _use_store(self) -> bool:
        return self._state is _State.UP or self._clock() >= self._retry_at

    def _step(self, c: _CompiledLimit, key: str, try_store: bool = True) -> tuple[Any, bool]:
        """One decision for limit ``c``: ``(Decision | _OPEN | _CLOSED, decided by the fallback)``.
        ``try_store=False``: a store call of this request failed already, so the fallback decides
        (a second call could cost the request a second store timeout)."""
        if try_store and self._use_store():
            try:
                d = self._store.ratelimit_step(c.prefix + key, c.limit)
            except StoreUnavailable as e:
                self._down(e)
            else:
                if self._state is _State.DOWN:
                    self._up()
                self._failing_since = None
                return d, False
        policy = self._policy
        if policy == "open":
            return _OPEN, True
        if policy == "closed":
            return _CLOSED, True
        try:
            return self._local.ratelimit_step(c.prefix + key, c.local_limit), True
        except StoreUnavailable:  # the node store failed too (it is the main store): admit
            return _OPEN, True

    # -- hooks ---------------------------------------------------------------------------

    def on_request(self, ctx: RequestContext) -> Response | None:
        limits = self._limits
        if limits:
            key = self._key.build(ctx)
            if key is not None:
                answer = self._limit(ctx, key)
                if answer is not None:
                    return answer
        if self._conc:
            return self._acquire(ctx)
        return None

    def _limit(self, ctx: RequestContext, key: str) -> Response | None:
        one = self._one
        failed = False
        if one is not None and self._state is _State.UP:
            # the common case, kept lean: one limit, shared store up, request admitted
            try:
                d = self._store.ratelimit_step(one.prefix + key, one.limit)
            except StoreUnavailable as e:
                self._down(e)  # and the fallback decides below, without a second store call
                failed = True
            else:
                self._failing_since = None
                if d.allowed:
                    ctx.facts["ratelimit"] = RateLimitFact(True, (d,), one.rate_item(d) if self._headers else None,
                                                           None)
                    return None
                return self._finish(ctx, key, [one], [d], d, False, False)
        decisions: list[Decision] = []
        checked: list[_CompiledLimit] = []
        refused: Decision | None = None
        closed = fell = False
        for c in self._limits:
            d, fb = self._step(c, key, not failed)
            fell |= fb
            failed |= fb
            if d is _OPEN:
                continue
            if d is _CLOSED:
                closed = True
                break
            decisions.append(d)
            checked.append(c)
            if not d.allowed:
                refused = d
                break
        return self._finish(ctx, key, checked, decisions, refused, closed, fell)

    def _finish(self, ctx: RequestContext, key: str, checked: list[_CompiledLimit], decisions: list[Decision],
                refused: Decision | None, closed: bool, fell: bool) -> Response | None:
        fallback = None
        if fell:
            fallback = self._policy
            self.fallbacks += 1
            self._incr(self._m_fallback)
        if closed:
            ctx.facts["ratelimit"] = RateLimitFact(False, tuple(decisions), None, fallback)
            return Response(503, [("Retry-After", "1"), ("Content-Type", "text/plain; charset=utf-8")],
                            _body(503, "service unavailable", ctx.request_id))
        header = self._rate_header(checked, decisions) if self._headers and decisions else None
        if refused is None:
            ctx.facts["ratelimit"] = RateLimitFact(True, tuple(decisions), header, fallback)
            return None
        if self._dry_run:
            self.dry_run_refused += 1
            self._incr(M_DRY_RUN)
            self._log_dry_run(ctx, key)
            ctx.facts["ratelimit"] = RateLimitFact(True, tuple(decisions), None, fallback)
            return None
        self.refused += 1
        self._incr(M_REFUSED)
        ctx.facts["ratelimit"] = RateLimitFact(False, tuple(decisions), header, fallback)
        retry = refused.retry_after_s
        retry_after = MAX_RETRY_AFTER_S if not retry < MAX_RETRY_AFTER_S else max(1, math.ceil(retry))
        h = [("Retry-After", str(retry_after))]
        if header is not None:
            h.append(("RateLimit-Policy", self._policy_header))
            h.append(("RateLimit", header))
        h.append(("Content-Type", "text/plain; charset=utf-8"))
        return Response(self._status, h, _body(self._status, "too many requests", ctx.request_id))

    @staticmethod
    def _rate_header(checked: list[_CompiledLimit], decisions: list[Decision]) -> str:
        return ", ".join([c.rate_item(d) for c, d in zip(checked, decisions)])

    def _log_dry_run(self, ctx: RequestContext, key: str) -> None:
        now = time.monotonic()
        if now - self._dry_logged_at < DRY_RUN_LOG_INTERVAL_S:
            self._dry_unlogged += 1
            return
        self._log.info("ratelimit dry run: would refuse %s %s (key %s; %d more not logged)",
                       ctx.method, ctx.path, key, self._dry_unlogged)
        self._dry_logged_at = now
        self._dry_unlogged = 0

    def _acquire(self, ctx: RequestContext) -> Response | None:
        key = self._conc_key.build(ctx)
        if key is None:
            return None
        ckey = f"cc:{int(time.time() // self._conc_epoch_s)}:{key}"
        cap = self._conc_max
        store = None
        if self._use_store():
            try:
                n = self._store.incr(ckey, 1, self._conc_ttl_s)
                store = self._store
            except StoreUnavailable as e:
                self._down(e)
            else:
                if self._state is _State.DOWN:
                    self._up()
                self._failing_since = None
        if store is None:
            self.fallbacks += 1
            self._incr(self._m_fallback)
            if self._policy == "open":
                return None
            if self._policy == "closed":
                return Response(503, [("Retry-After", "1"), ("Content-Type", "text/plain; charset=utf-8")],
                                _body(503, "service unavailable", ctx.request_id))
            try:
                n = self._local.incr(ckey, 1, self._conc_ttl_s)
            except StoreUnavailable:
                return None
            store, cap = self._local, self._conc_local_max
        # on_log gives the slot back, whatever happens from here on (refusals included)
        ctx.facts["ratelimit.slot"] = (store, ckey)
        if n <= cap:
            return None
        if self._dry_run:
            self.dry_run_refused += 1
            self._incr(M_DRY_RUN)
            self._log_dry_run(ctx, key)
            return None
        self.concurrency_refused += 1
        self._incr(M_CONC_REFUSED)
        return Response(self._conc_status, [("Retry-After", "1"), ("Content-Type", "text/plain; charset=utf-8")],
                        _body(self._conc_status, "too many concurrent requests", ctx.request_id))

    def on_response(self, ctx: RequestContext, response: UpstreamResponse) -> None:
        if not self._headers:
            return None
        fact = ctx.facts.get("ratelimit")
        if fact is None or fact.header is None:
            return None
        replacement = response.replacement
        headers = replacement.headers if replacement is not None else response.headers
        # Headers.set twice would rebuild the field list twice; an origin seldom sends these
        # fields, so look once (by length first: 9 and 16) and append when it does not
        for name, _ in headers:
            if len(name) in _RL_FIELD_LENGTHS and name.lower() in _RL_FIELDS:
                headers.set("RateLimit-Policy", self._policy_header)
                headers.set("RateLimit", fact.header)
                return None
        headers.add("RateLimit-Policy", self._policy_header)
        headers.add("RateLimit", fact.header)
        return None

    def on_log(self, ctx: RequestContext) -> None:
        if not self._conc:
            return None
        slot = ctx.facts.pop("ratelimit.slot", None)
        if slot is None:
            return None
        store, ckey = slot
        try:
            store.incr(ckey, -1, self._conc_ttl_s)
        except StoreUnavailable:
            # the slot comes back when the counter's epoch ends (see the module docstring)
            self._incr(M_RELEASE_FAILED)
        return None


def _quota(count: float) -> str:
    """``q`` of RateLimit-Policy: an integer (``1000000``, not ``1e+06``); a fraction stays one."""
    return str(int(count)) if count == int(count) else f"{count:g}"


def _body(status: int, message: str, request_id: str | None) -> bytes:
    text = f"{status} {message}\n" if request_id is None else f"{status} {message} (request id {request_id})\n"
    return text.encode()
