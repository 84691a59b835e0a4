"""bot plugin: scanner list, patterns, allow list, header signals, crawler verification,
actions (block, ratelimit through the store's step, tag) (issue 11)."""

from __future__ import annotations

import sys
from collections import Counter

import pytest

from edge.errors import ConfigError, StoreUnavailable
from edge.plugins import SHIPPED_DIR, load_plugin_file
from edge.store.memory import MemoryStore
from edge.testing import make_ctx, make_plugin, make_services, run_plugin

Bot = load_plugin_file(SHIPPED_DIR / "bot.py")
bot_module = sys.modules[Bot.__module__]

BROWSER = {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
           "Accept": "text/html,*/*", "Accept-Language": "en-GB,en;q=0.8"}


class FakeMetrics:
    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def incr(self, name: str, count: int = 1) -> None:
        self.counts[name] += count


def ctx_with(**headers):
    return make_ctx(headers={k.replace("_", "-"): v for k, v in headers.items()})


def test_shipped_list_has_the_common_scanners():
    tokens = bot_module.load_scanners()
    for name in ("sqlmap", "nikto", "nmap", "masscan", "zgrab", "nuclei", "wpscan", "dirbuster", "gobuster", "ffuf",
                 "acunetix"):
        assert name in tokens
    assert all(t == t.lower() and not t.startswith("#") for t in tokens)


@pytest.mark.parametrize("ua, token", [
    ("sqlmap/1.7.2#stable (https://sqlmap.org)", "sqlmap"),
    ("Mozilla/5.00 (Nikto/2.1.6) (Evasions:None) (Test:000001)", "nikto"),
    ("Mozilla/5.0 (compatible; Nmap Scripting Engine; https://nmap.org/book/nse.html)", "nmap"),
    ("Mozilla/5.0 zgrab/0.x", "zgrab"),
    ("Fuzz Faster U Fool v2.1.0", "fuzz faster u fool"),   # ffuf's default
    ("Mozilla/5.0 (Windows NT 10.0) Nuclei - Open-source project (github.com/projectdiscovery/nuclei)", "nuclei"),
    ("WPScan v3.8.25 (https://wpscan.com/wordpress-security-scanner)", "wpscan"),
    ("gobuster/3.6", "gobuster"),
])
def test_scanners_are_blocked(ua, token):
    run = run_plugin(Bot, {}, ctx=make_ctx(headers={**BROWSER, "User-Agent": ua}))
    assert run.status == 403
    assert run.ctx.facts["bot"].reason == "scanner" and run.ctx.facts["bot"].detail == token


def test_browser_with_its_headers_passes():
    run = run_plugin(Bot, {}, ctx=make_ctx(headers=BROWSER))
    assert run.status == 200 and "bot" not in run.ctx.facts


def test_missing_user_agent():
    assert run_plugin(Bot, {}, ctx=make_ctx()).status == 403
    assert run_plugin(Bot, {}, ctx=make_ctx(headers={"User-Agent": "  "})).status == 403
    assert run_plugin(Bot, {"missing_user_agent": False}, ctx=make_ctx()).status == 200


@pytest.mark.parametrize("drop", ["Accept", "Accept-Language"])
def test_browser_user_agent_without_browser_headers(drop):
    headers = {k: v for k, v in BROWSER.items() if k != drop}
    run = run_plugin(Bot, {}, ctx=make_ctx(headers=headers))
    assert run.status == 403 and run.ctx.facts["bot"].reason == "browser_headers"
    assert run_plugin(Bot, {"browser_headers": False}, ctx=make_ctx(headers=headers)).status == 200


def test_libraries_are_not_browsers():
    assert run_plugin(Bot, {}, ctx=make_ctx(headers={"User-Agent": "curl/8.5.0"})).status == 200


def test_own_patterns_and_allow_list():
    settings = {"user_agents": [r"(?i)python-requests/", r"^Go-http-client"], "allow": [r"^sqlmap-internal-audit"]}
    run = run_plugin(Bot, settings, ctx=make_ctx(headers={"User-Agent": "python-requests/2.31"}))
    assert run.status == 403 and run.ctx.facts["bot"].reason == "user_agent"
    assert run_plugin(Bot, settings, ctx=make_ctx(headers={"User-Agent": "sqlmap-internal-audit/1"})).status == 200


def test_bad_pattern_is_refused():
    with pytest.raises(ConfigError, match="RE2 syntax"):
        make_plugin(Bot, {"user_agents": ["(?=x)"]})


def test_tag_sets_the_fact_and_counts():
    metrics = FakeMetrics()
    run = run_plugin(Bot, {"action": "tag"}, ctx=make_ctx(headers={"User-Agent": "nikto"}),
                     services=make_services(metrics=metrics))
    assert run.status == 200 and str(run.ctx.facts["bot"]) == "scanner"
    assert metrics.counts["plugin.bot.tag.scanner"] == 1


def test_per_reason_actions():
    settings = {"actions": {"browser_headers": "tag"}}
    headers = {k: v for k, v in BROWSER.items() if k != "Accept-Language"}
    assert run_plugin(Bot, settings, ctx=make_ctx(headers=headers)).status == 200
    assert run_plugin(Bot, settings, ctx=make_ctx(headers={"User-Agent": "sqlmap"})).status == 403


def test_ratelimit_uses_the_store_step():
    store = MemoryStore()
    plugin = make_plugin(Bot, {"action": "ratelimit", "rate": "3/m"}, make_services(store=store))
    statuses = []
    for _ in range(5):
        answer = plugin.on_request(make_ctx(headers={"User-Agent": "masscan/1.3"}, client_ip="192.0.2.7"))
        statuses.append(answer.status if answer else 200)
    assert statuses == [200, 200, 200, 429, 429]
    answer = plugin.on_request(make_ctx(headers={"User-Agent": "masscan/1.3"}, client_ip="192.0.2.7"))
    assert int(answer.headers.get("Retry-After")) >= 1
    # another client has its own budget; ordinary clients are not counted at all
    assert plugin.on_request(make_ctx(headers={"User-Agent": "masscan/1.3"}, client_ip="192.0.2.8")) is None
    assert plugin.on_request(make_ctx(headers=BROWSER, client_ip="192.0.2.7")) is None


def test_ratelimit_admits_when_the_store_is_down():
    class Down(MemoryStore):
        def ratelimit_step(self, *a, **k):
            raise StoreUnavailable("down")

    metrics = FakeMetrics()
    plugin = make_plugin(Bot, {"action": "ratelimit"}, make_services(store=Down(), metrics=metrics))
    assert plugin.on_request(make_ctx(headers={"User-Agent": "sqlmap"})) is None
    assert metrics.counts["plugin.bot.store_error"] == 1


GOOGLEBOT = {"User-Agent": "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
             "Accept": "*/*"}


def test_crawler_is_not_a_browser_without_accept_language():
    assert run_plugin(Bot, {}, ctx=make_ctx(headers=GOOGLEBOT)).status == 200


def test_claimed_crawler_verified_by_reverse_and_forward_dns_and_cached():
    plugin = make_plugin(Bot, {"verify_crawlers": True})
    lookups = Counter()
    table = {"66.249.66.1": ("crawl-66-249-66-1.googlebot.com", ("66.249.66.1",)),
             "203.0.113.5": ("evil.example.net", ("203.0.113.5",)),
             "203.0.113.6": ("fake.googlebot.com.evil.example", ("203.0.113.6",)),
             "203.0.113.7": ("crawl.googlebot.com", ("66.249.66.9",))}   # name does not resolve back

    def resolve(ip):
        lookups[ip] += 1
        if ip not in table:
            raise OSError("no PTR")
        return table[ip]

    plugin._resolve = resolve
    assert plugin.on_request(make_ctx(headers=GOOGLEBOT, client_ip="66.249.66.1")) is None
    for ip in ("203.0.113.5", "203.0.113.6", "203.0.113.7", "198.51.100.1"):
        answer = plugin.on_request(make_ctx(headers=GOOGLEBOT, client_ip=ip))
        assert answer is not None and answer.status == 403, ip
    plugin.on_request(make_ctx(headers=GOOGLEBOT, client_ip="66.249.66.1"))
    # the same address seen as IPv4-mapped IPv6 (a dual-stack listener) is the same crawler, from the cache
    assert plugin.on_request(make_ctx(headers=GOOGLEBOT, client_ip="::ffff:66.249.66.1")) is None
    assert lookups["66.249.66.1"] == 1   # cached


def test_failed_lookup_is_forgotten_sooner():
    plugin = make_plugin(Bot, {"verify_crawlers": True})
    now = [1000.0]
    plugin._clock = lambda: now[0]
    answers = iter([OSError("timeout"), ("crawl.googlebot.com", ("66.249.66.1",))])

    def resolve(ip):
        a = next(answers)
        if isinstance(a, Exception):
            raise a
        return a

    plugin._resolve = resolve
    assert plugin.on_request(make_ctx(headers=GOOGLEBOT, client_ip="66.249.66.1")).status == 403
    now[0] += bot_module.CRAWLER_FAILURE_TTL_S + 1
    assert plugin.on_request(make_ctx(headers=GOOGLEBOT, client_ip="66.249.66.1")) is None


def test_verification_is_off_by_default():
    plugin = make_plugin(Bot, {})
    plugin._resolve = lambda ip: pytest.fail("no DNS unless verify_crawlers")
    assert plugin.on_request(make_ctx(headers=GOOGLEBOT, client_ip="203.0.113.5")) is None


# --------------------------------------------------------------------------- slow resolvers (issue 11 review)


def test_plugin_timeout_follows_dns_timeout_and_a_smaller_one_is_refused():
    from edge.plugins import DEFAULT_PLUGIN_TIMEOUT_S
    margin = bot_module.DNS_TIMEOUT_MARGIN_S
    config = lambda settings: Bot.Config.model_validate(settings)   # noqa: E731
    assert config({"verify_crawlers": True}).timeout == pytest.approx(2 * 0.5 + margin)
    assert config({"verify_crawlers": True, "dns_timeout": "2s"}).timeout == pytest.approx(4 + margin)
    assert config({"verify_crawlers": True, "timeout": "3s"}).timeout == 3
    assert config({}).timeout == DEFAULT_PLUGIN_TIMEOUT_S                 # no DNS, no floor
    with pytest.raises(ConfigError, match="timeout"):
        make_plugin(Bot, {"verify_crawlers": True, "timeout": "500ms"})


def test_slow_resolver_costs_one_lookup_per_failure_ttl_and_no_503():
    import gevent
    from edge.plugins import Chain, _Entry
    from edge.testing import _build, _CountingRegistry

    plugin, config = _build(Bot, {"verify_crawlers": True}, None)
    now = [1000.0]
    plugin._clock = lambda: now[0]
    lookups = Counter()

    def slow(ip):
        lookups[ip] += 1
        gevent.sleep(30)   # a resolver that does not answer within dns_timeout

    plugin._resolve = slow
    sink = _CountingRegistry()
    chain = Chain([_Entry("bot", plugin, config, "<test>", "Bot")], sink.record)
    for _ in range(3):
        answer = chain.run_request(make_ctx(headers=GOOGLEBOT, client_ip="66.249.66.1"))
        assert answer is not None and answer.status == 403   # unverified, not a 503 from the chain's timeout
    assert lookups["66.249.66.1"] == 1 and not sink.errors
    now[0] += bot_module.CRAWLER_FAILURE_TTL_S + 1
    chain.run_request(make_ctx(headers=GOOGLEBOT, client_ip="66.249.66.1"))
    assert lookups["66.249.66.1"] == 2


def test_verification_cut_from_outside_is_remembered_as_unverified():
    class Cut(BaseException):
        pass

    plugin = make_plugin(Bot, {"verify_crawlers": True})
    lookups = Counter()

    def resolve(ip):
        lookups[ip] += 1
        raise Cut()   # what the plugin chain throws into a hook that overran its budget

    plugin._resolve = resolve
    with pytest.raises(Cut):
        plugin.on_request(make_ctx(headers=GOOGLEBOT, client_ip="66.249.66.1"))
    assert plugin.on_request(make_ctx(headers=GOOGLEBOT, client_ip="66.249.66.1")).status == 403
    assert lookups["66.249.66.1"] == 1
