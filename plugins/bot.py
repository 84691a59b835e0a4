"""bot: block, rate-limit or tag automated clients by User-Agent and by forged or missing headers.

Theory of operation
-------------------
**Signals**, checked in this order; the first that fires is the request's *reason*:

=======================  ==========================================================
``allow``                a User-Agent matching one of ``allow`` (RE2) passes untouched,
                         whatever follows (your own monitoring, a partner's crawler)
``scanner:<token>``      the User-Agent contains a token of the shipped list
                         ``plugins/bot_scanners.txt`` (sqlmap, nikto, nmap, nuclei...),
                         read once per worker at start and on each reload
``user_agent``           the User-Agent matches one of ``user_agents`` (RE2)
``missing_user_agent``   no User-Agent at all (``missing_user_agent: true``); every
                         browser and honest library sends one
``browser_headers``      a User-Agent that claims a browser (``Mozilla/``) without
                         ``Accept`` or ``Accept-Language``: browsers send both on every
                         navigation and fetch, scripts that copy a browser's UA seldom do
``fake_crawler``         a User-Agent claiming a search engine's crawler (Googlebot,
                         bingbot ...) from an address whose reverse DNS does not end in
                         that engine's domain, or whose name does not resolve back to the
                         address (``verify_crawlers: true``, off by default: DNS is I/O)
=======================  ==========================================================

**Actions** (``action``; each signal may have its own in ``actions``): ``block``
answers ``status`` (403); ``ratelimit`` admits the client's requests with that reason
at ``rate`` through the store's atomic ``ratelimit_step`` (the same machinery as the
``ratelimit`` plugin: one step per request, key ``bot:<reason>:<client ip>``), then
answers 429 with ``Retry-After``; ``tag`` only sets the fact. Every flagged request
gets ``ctx.facts["bot"]`` (a ``BotVerdict``), so the ``ratelimit`` plugin can key on
``fact:bot`` and a log plugin can record it; ``str(verdict)`` is the reason.
Decisions are counted as ``plugin.bot.<action>.<reason class>`` and logged at most
once per 10 s per reason (scanners send thousands of requests).

**Crawler verification** caches each address's answer (``crawler_cache_s``, bounded),
so one lookup per address per hour at most; a lookup that fails or times out counts as
not verified for a short while only (``CRAWLER_FAILURE_TTL_S``), and costs the request
at most ``dns_timeout``. The hook's own budget (the plugin's ``timeout``) must outlast
that: with ``verify_crawlers`` it defaults to ``2 * dns_timeout + DNS_TIMEOUT_MARGIN_S``
and a smaller one is refused at load. Otherwise a slow resolver would have the plugin
chain cut the hook first (503, fail-closed) before anything was cached, and every
request would wait for the resolver again; should the hook be cut all the same, the
address is still remembered as unverified for the short TTL. With a store that is down, ``ratelimit`` admits (counted as
``plugin.bot.store_error``): a bot filter must not take the site down with the store.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

import gevent
from pydantic import Field, field_validator, model_validator

from edge.config import Duration
from edge.context import RequestContext, Response
from edge.errors import StoreUnavailable
from edge.logs import ThrottledLog
from edge.pattern import compile_client_pattern
from edge.plugins import Plugin, PluginConfig, Services
from edge.ratelimit import Limit

__all__ = ["Bot", "BotVerdict", "load_scanners", "SCANNERS_FILE", "CRAWLERS"]

SCANNERS_FILE = Path(__file__).resolve().parent / "bot_scanners.txt"

#: claimed crawler (lower-case UA token) -> domains its reverse DNS name must end in
CRAWLERS: dict[str, tuple[str, ...]] = {
    "googlebot": (".googlebot.com", ".google.com", ".googleusercontent.com"),
    "bingbot": (".search.msn.com",),
    "applebot": (".applebot.apple.com",),
    "duckduckbot": (".duckduckgo.com",),
    "yandexbot": (".yandex.ru", ".yandex.net", ".yandex.com"),
    "baiduspider": (".baidu.com", ".baidu.jp"),
}
#: a failed lookup is remembered this long (a resolver blip must not stick for an hour)
CRAWLER_FAILURE_TTL_S = 60.0
#: addresses remembered per worker; the cache is cleared when full
CRAWLER_CACHE_SIZE = 10000
#: with ``verify_crawlers`` the plugin's ``timeout`` is at least ``2 * dns_timeout`` plus this:
#: the verification's own deadline must fire first (and its "unverified" be cached), with room
#: for a late timer on a busy worker and for the rest of the hook (the ``ratelimit`` step)
DNS_TIMEOUT_MARGIN_S = 0.25
LOG_INTERVAL_S = 10.0

Reason = Literal["scanner", "user_agent", "missing_user_agent", "browser_headers", "fake_crawler"]
Action = Literal["block", "ratelimit", "tag"]


def load_scanners(path: Path = SCANNERS_FILE) -> tuple[str, ...]:
    """The scanner tokens of ``path`` (lower case), comments and blank lines left out."""
    tokens = []
    for line in path.read_text(encoding="utf-8").splitlines():
        token = line.strip().lower()
        if token and not token.startswith("#"):
            tokens.append(token)
    return tuple(tokens)


@dataclass(frozen=True, slots=True)
class BotVerdict:
    """Why a request was taken for a bot (``ctx.facts["bot"]``) and what was done."""

    reason: str          # scanner, user_agent, missing_user_agent, browser_headers, fake_crawler
    detail: str          # the scanner token, the pattern, the claimed crawler ...
    action: str          # block, ratelimit, tag

    def __str__(self) -> str:
        return self.reason


def _reverse_dns(ip: str) -> tuple[str, tuple[str, ...]]:
    """``(name, addresses of that name)``; raises OSError when either lookup fails."""
    name = socket.gethostbyaddr(ip)[0].lower().rstrip(".")
    infos = socket.getaddrinfo(name, None)
    return name, tuple(sorted({info[4][0] for info in infos}))


class Bot(Plugin):
    """Block, rate-limit or tag scanners and clients with forged or missing headers."""

    name = "bot"
    priority = 950   # after ipfilter (1000), before auth (900), waf (850) and ratelimit (800)

    class Config(PluginConfig):
        action: Action = Field("block", description="what happens to a flagged request: `block` (answer `status`), "
                                                    "`ratelimit` (at `rate`), `tag` (set ctx.facts[\"bot\"] only)")
        actions: dict[Reason, Action] = Field({}, description="per-reason action overriding `action` "
                                                               "(e.g. `{browser_headers: tag}`)")
        status: int = Field(403, ge=400, le=599, description="status of a blocked request")
        rate: str = Field("30/m", description="with `ratelimit`: requests admitted per client and reason")
        scanners: bool = Field(True, description="match the shipped scanner list (plugins/bot_scanners.txt)")
        user_agents: tuple[str, ...] = Field((), description="further User-Agent patterns (RE2, searched)")
        allow: tuple[str, ...] = Field((), description="User-Agent patterns (RE2, searched) never flagged")
        missing_user_agent: bool = Field(True, description="flag requests without a User-Agent")
        browser_headers: bool = Field(True, description="flag a browser User-Agent without Accept or Accept-Language")
        verify_crawlers: bool = Field(False, description="check claimed search-engine crawlers by reverse and "
                                                         "forward DNS (I/O, cached)")
        crawler_cache_s: Duration = Field(3600.0, description="how long a crawler verification is remembered")
        dns_timeout: Duration = Field(0.5, description="longest wait for one crawler verification (the reverse and "
                                                        "the forward lookup together); with `verify_crawlers` the "
                                                        "plugin's `timeout` defaults to 2 x this + 0.25 s, and a "
                                                        "smaller one is refused")

        @field_validator("user_agents", "allow")
        @classmethod
        def _patterns(cls, v: tuple[str, ...]) -> tuple[str, ...]:
            for p in v:
                compile_client_pattern(p)   # ValueError with RE2's reason
            return v

        @field_validator("rate")
        @classmethod
        def _rate(cls, v: str) -> str:
            Limit.parse(v)
            return v

        @model_validator(mode="after")
        def _dns_budget(self) -> "Bot.Config":
            if not self.verify_crawlers:
                return self
            need = 2 * self.dns_timeout + DNS_TIMEOUT_MARGIN_S
            if "timeout" in self.model_fields_set:
                if self.timeout < need:
                    raise ValueError(f"timeout {self.timeout:g}s cannot hold a crawler verification: with "
                                     f"verify_crawlers it must be at least 2 x dns_timeout + "
                                     f"{DNS_TIMEOUT_MARGIN_S:g}s = {need:g}s")
            elif self.timeout < need:
                object.__setattr__(self, "timeout", need)   # the default follows dns_timeout (frozen model)
            return self

    def __init__(self, config: Config, services: Services) -> None:
        self._store = services.store
        self._log = services.logger or logging.getLogger("edge.plugin.bot")
        metrics = services.metrics
        self._incr: Callable[[str], None] = metrics.incr if metrics is not None else (lambda name: None)
        self._scanners = load_scanners() if config.scanners else ()
        # one RE2 search answers "a scanner?"; the token is looked up only on a hit
        self._scanner_re = (compile_client_pattern("(?i)" + "|".join(_literal(t) for t in self._scanners))
                            if self._scanners else None)
        self._patterns = tuple((p, compile_client_pattern(p)) for p in config.user_agents)
        self._allow = compile_client_pattern("|".join(f"(?:{p})" for p in config.allow)) if config.allow else None
        self._action = config.action
        self._actions = dict(config.actions)
        self._status = config.status
        self._limit = Limit.parse(config.rate)
        self._missing = config.missing_user_agent
        self._browser = config.browser_headers
        self._verify = config.verify_crawlers
        self._cache_s = config.crawler_cache_s
        self._dns_timeout_s = config.dns_timeout
        self._crawlers = compile_client_pattern("(?i)" + "|".join(CRAWLERS))
        self._verified: dict[str, tuple[bool, float]] = {}   # ip -> (genuine, expires at)
        self._resolve: Callable[[str], tuple[str, tuple[str, ...]]] = _reverse_dns   # tests inject one
        self._clock: Callable[[], float] = time.monotonic
        self._throttle = ThrottledLog(LOG_INTERVAL_S, 1, self._closing_line)
        self.flagged = 0

    # -- signals (pure apart from crawler verification) ----------------------------------

    def classify(self, ctx: RequestContext) -> BotVerdict | None:
        """The first signal that fires for ``ctx``, or None."""
        headers = ctx.headers
        ua = headers.get("User-Agent")
        if ua is None or not ua.strip():
            return self._verdict("missing_user_agent", "") if self._missing else None
        if self._allow is not None and self._allow.search(ua):
            return None
        if self._scanner_re is not None and self._scanner_re.search(ua):
            low = ua.lower()
            token = next((t for t in self._scanners if t in low), "?")
            return self._verdict("scanner", token)
        for pattern, compiled in self._patterns:
            if compiled.search(ua):
                return self._verdict("user_agent", pattern)
        if self._browser and ua.startswith("Mozilla/") and ("Accept" not in headers or "Accept-Language" not in headers):
            if not self._crawlers.search(ua):   # crawlers send no Accept-Language; verified below
                return self._verdict("browser_headers", "no Accept" if "Accept" not in headers else
                                     "no Accept-Language")
        if self._verify and self._crawlers.search(ua):
            low = ua.lower()
            claimed = next(c for c in CRAWLERS if c in low)
            if not self._genuine(ctx.client_ip, claimed):
                return self._verdict("fake_crawler", claimed)
        return None

    def _verdict(self, reason: str, detail: str) -> BotVerdict:
        return BotVerdict(reason, detail, self._actions.get(reason, self._action))  # type: ignore[arg-type]

    def _genuine(self, ip: str, claimed: str) -> bool:
        ip = _canonical_ip(ip)
        now = self._clock()
        hit = self._verified.get(ip)
        if hit is not None and hit[1] > now:
            return hit[0]
        ok = False
        ttl = CRAWLER_FAILURE_TTL_S
        try:
            with gevent.Timeout(self._dns_timeout_s):
                name, addresses = self._resolve(ip)
        except (OSError, gevent.Timeout, UnicodeError):
            pass   # no PTR, NXDOMAIN, a resolver timeout: not verified, for a short while (see above)
        except BaseException:
            # cut from outside (the plugin's timeout, a worker stopping): still remembered as
            # unverified for the short TTL, so a slow resolver costs one lookup per TTL, not one per request
            self._remember(ip, False, now + CRAWLER_FAILURE_TTL_S)
            raise
        else:
            ok = name.endswith(CRAWLERS[claimed]) and ip in {_canonical_ip(a) for a in addresses}
            ttl = self._cache_s
        self._remember(ip, ok, now + ttl)
        return ok

    def _remember(self, ip: str, genuine: bool, until: float) -> None:
        if len(self._verified) >= CRAWLER_CACHE_SIZE:
            self._verified.clear()
        self._verified[ip] = (genuine, until)

    # -- hooks ----------------------------------------------------------------------------

    def on_request(self, ctx: RequestContext) -> Response | None:
        verdict = self.classify(ctx)
        if verdict is None:
            return None
        ctx.facts["bot"] = verdict
        self.flagged += 1
        action = verdict.action
        self._incr(f"plugin.bot.{action}.{verdict.reason}")
        self._throttle.emit(verdict.reason, lambda suppressed: self._log.info(
            "bot %s (%s) -> %s: %s %s from %s UA %.120r", verdict.reason, verdict.detail, action, ctx.method,
            ctx.path[:200], ctx.client_ip, ctx.headers.get("User-Agent")))
        if action == "tag":
            return None
        if action == "block":
            return _answer(self._status, "forbidden", ctx.request_id)
        return self._rate_limited(ctx, verdict)

    def _rate_limited(self, ctx: RequestContext, verdict: BotVerdict) -> Response | None:
        limit = self._limit
        key = f"bot:{verdict.reason}:{limit.count:g}/{limit.period_s:g}:{ctx.client_ip}"
        try:
            d = self._store.ratelimit_step(key, limit)
        except StoreUnavailable:
            self._incr("plugin.bot.store_error")
            return None
        if d.allowed:
            return None
        answer = _answer(429, "too many requests", ctx.request_id)
        answer.headers.add("Retry-After", str(max(1, math.ceil(min(d.retry_after_s, 86400)))))
        return answer

    def _closing_line(self, reason: Any, count: int) -> None:
        self._log.info("bot %s: %d more requests flagged in the last %gs (not logged one by one)",
                       reason, count, LOG_INTERVAL_S)


def _canonical_ip(ip: str) -> str:
    """One spelling per address: IPv4-mapped IPv6 as IPv4, IPv6 compressed; other text as is."""
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return ip
    if addr.version == 6 and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return str(addr)


def _literal(token: str) -> str:
    """``token`` as an RE2 literal."""
    return "".join("\\" + ch if not ch.isalnum() and ch not in " _-" else ch for ch in token)


def _answer(status: int, message: str, request_id: str | None) -> Response:
    return Response.error(status, message, request_id)
