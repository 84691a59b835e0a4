"""ipfilter: allow and deny client networks (IPv4 and IPv6), inline or from files.

Theory of operation
-------------------
**Decision.** Every network in ``allow``/``allow_files`` and ``deny``/``deny_files``
is one entry of a table; a client address is decided by the *most specific* entry
that contains it (longest prefix match, as a routing table): with ``allow:
[10.0.0.0/8]`` and ``deny: [10.66.0.0/16]`` the /16 is refused and the rest of the
/8 admitted; with ``deny: [0.0.0.0/0]`` and ``allow: [192.0.2.7]`` only that host
passes. The same network in both lists is denied. An address no entry contains is
admitted when there is no allow entry, and refused when there is one (an allow
list means "only these").

**Addresses.** IPv4-mapped IPv6 addresses (``::ffff:192.0.2.1``, what a dual-stack
listener reports for an IPv4 client) are matched as the IPv4 address they carry,
and a mapped network in the configuration (``::ffff:10.0.0.0/104``) as its IPv4
network, so one IPv4 rule covers both ways a client can arrive. A peer that is
not an IP address (a Unix socket) matches no entry.

**Lookup** is O(prefix length), not a scan: per IP version, one dict per prefix
length present, from the masked network number (an ``int``) to allow/deny; a
lookup tries the lengths present from the longest down, so at most 33 (IPv4) or
129 (IPv6) dict probes, in practice as many as there are distinct lengths in the
lists. 10,000 networks cost the same per request as ten of the same lengths
(docs/benchmarks.md, "ipfilter"). Decisions are remembered per address in a
bounded dict (``MEMO_MAX``), since a client sends many requests.

**Where it decides.** ``on_request`` matches ``ctx.client_ip``: the address after
``server.trusted_proxies`` resolution (X-Forwarded-For from a trusted proxy) and
after the PROXY protocol (``server.proxy_protocol``), per route with per-route
settings. ``on_connect`` (``connect: true``, the default) matches the connection's
peer (the PROXY source when the listener reads one) before a byte of HTTP is
parsed, so a denied scanner costs no parsing; it only runs for the global plugin
(no route is known yet) and stays out of the way when the peer is a trusted proxy,
since the client is then only known from its headers. Because it decides before
any route is known, the *global* lists apply to every connection there, even on a
route that overrides or disables ``ipfilter``: set ``connect: false`` when a route
must admit addresses the global lists refuse.

**Files** hold one network (or address) per line; ``#`` starts a comment; blank
lines are skipped. They are read while the settings are validated, which the master
does at start, on ``edge check`` and on every reload (so a bad line refuses them,
naming file and line), and the workers it forks build their tables from the
validated settings, file contents included (docs/plugins.md, "Settings that name a
file"). Edit the file, send HUP. A file broken in between refuses the reload, and
the new workers keep the lists the running configuration was checked with.

Priority 1000: the cheapest refusal, before ``auth`` (900) and ``ratelimit`` (800),
so a denied client costs no credential check and no rate-limit token.
"""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path
from typing import Iterable

from pydantic import Field, PrivateAttr, field_validator, model_validator

from edge.context import RequestContext, Response
from edge.plugins import Plugin, PluginConfig, Services

M_DENIED = "plugin.ipfilter.denied"
M_DROPPED = "plugin.ipfilter.dropped_on_connect"
#: decisions remembered per address (a keep-alive client asks again and again): a dict hit
#: costs ~0.05 µs, a lookup ~0.1 µs per distinct prefix length in the lists
MEMO_MAX = 65536

_MAPPED_PREFIX = 0xFFFF  # ::ffff:0:0/96 — the upper 96 bits of an IPv4-mapped address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_network(text: str) -> Network:
    """A network (``10.0.0.0/8``) or a single address (``192.0.2.7``); host bits are masked off.
    An IPv4-mapped IPv6 network becomes its IPv4 network."""
    net = ipaddress.ip_network(text.strip(), strict=False)
    if net.version == 6 and net.prefixlen >= 96 and int(net.network_address) >> 32 == _MAPPED_PREFIX:
        return ipaddress.IPv4Network((int(net.network_address) & 0xFFFFFFFF, net.prefixlen - 96))
    return net


def read_network_file(path: str) -> list[Network]:
    """The networks of one file: one per line, ``#`` comments, blank lines skipped.
    ``ValueError`` naming the file and line on the first bad one."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read {path}: {e}") from None
    nets = []
    for lineno, line in enumerate(text.splitlines(), 1):
        item = line.split("#", 1)[0].strip()
        if not item:
            continue
        try:
            nets.append(parse_network(item))
        except ValueError:
            raise ValueError(f"{path}:{lineno}: not an IP network or address: {item[:60]!r}") from None
    return nets


def address_int(ip: str) -> tuple[int, int] | None:
    """``(version, integer)`` of an address in text; an IPv4-mapped IPv6 address as IPv4; None if not one."""
    try:
        if ":" not in ip:
            return 4, int.from_bytes(socket.inet_pton(socket.AF_INET, ip), "big")
        n = int.from_bytes(socket.inet_pton(socket.AF_INET6, ip.split("%", 1)[0]), "big")
    except (OSError, ValueError):
        return None
    if n >> 32 == _MAPPED_PREFIX:
        return 4, n & 0xFFFFFFFF
    return 6, n


class NetworkTable:
    """Longest-prefix match over allow/deny entries (see the module docstring). Built once, read only."""

    __slots__ = ("_v4", "_v6", "size")

    def __init__(self, entries: Iterable[tuple[Network, bool]]) -> None:
        tables: dict[int, dict[int, dict[int, bool]]] = {4: {}, 6: {}}
        self.size = 0
        for net, allow in entries:
            bits = net.max_prefixlen
            by_len = tables[net.version].setdefault(net.prefixlen, {})
            key = int(net.network_address) >> (bits - net.prefixlen)
            # the same network in both lists: deny wins
            by_len[key] = by_len.get(key, True) and allow
            self.size += 1
        # longest first: (shift, dict) pairs, the first hit is the most specific entry
        self._v4 = tuple((32 - plen, tables[4][plen]) for plen in sorted(tables[4], reverse=True))
        self._v6 = tuple((128 - plen, tables[6][plen]) for plen in sorted(tables[6], reverse=True))

    def lookup(self, ip: str) -> bool | None:
        """True (allow) or False (deny) from the most specific entry containing ``ip``; None if none does."""
        parsed = address_int(ip)
        if parsed is None:
            return None
        version, n = parsed
        for shift, by_key in (self._v4 if version == 4 else self._v6):
            hit = by_key.get(n >> shift)
            if hit is not None:
                return hit
        return None


class IpFilter(Plugin):
    """Allow/deny by client address (after trusted-proxy resolution and the PROXY protocol)."""

    name = "ipfilter"
    priority = 1000

    class Config(PluginConfig):
        allow: tuple[str, ...] = Field((), description="networks (`10.0.0.0/8`, `2001:db8::/32`) or addresses "
                                                       "admitted; when any allow entry exists, unlisted clients are refused")
        deny: tuple[str, ...] = Field((), description="networks or addresses refused; the most specific entry "
                                                      "(allow or deny) containing the client decides")
        allow_files: tuple[str, ...] = Field((), description="files of allow entries, one per line, `#` comments; "
                                                             "re-read by new workers on reload")
        deny_files: tuple[str, ...] = Field((), description="files of deny entries, as `allow_files`")
        status: int = Field(403, ge=400, le=599, description="status sent to refused clients")
        message: str = Field("forbidden", max_length=200, description="text of the refusal body")
        connect: bool = Field(True, description="also refuse at connect, before parsing, on the peer address "
                                                "(global plugin only; not for trusted proxies)")

        @field_validator("allow", "deny")
        @classmethod
        def _networks(cls, v: tuple[str, ...]) -> tuple[str, ...]:
            for item in v:
                try:
                    parse_network(item)
                except ValueError:
                    raise ValueError(f"not an IP network or address: {item!r}") from None
            return v

        # the files' entries as the master read them while validating (see the module docstring)
        _file_entries: tuple[tuple[Network, bool], ...] = PrivateAttr(())

        @model_validator(mode="after")
        def _read_files(self) -> "IpFilter.Config":
            entries = []
            for allow, key, files in ((True, "allow_files", self.allow_files), (False, "deny_files", self.deny_files)):
                for path in files:
                    try:
                        entries += [(net, allow) for net in read_network_file(path)]
                    except ValueError as e:  # it names the file and the line; say which setting named the file
                        raise ValueError(f"{key}: {e}") from None
            self._file_entries = tuple(entries)
            return self

        @field_validator("message")
        @classmethod
        def _message(cls, v: str) -> str:
            if not v.isprintable():
                raise ValueError("must be printable text")
            return v

    def __init__(self, config: Config, services: Services) -> None:
        entries: list[tuple[Network, bool]] = []
        for allow, inline in ((True, config.allow), (False, config.deny)):
            entries += [(parse_network(item), allow) for item in inline]
        entries += config._file_entries
        self.table = NetworkTable(entries)
        self._default = not any(allow for _, allow in entries)   # unlisted: admitted unless there is an allow list
        self._status = config.status
        self._message = config.message
        self._connect = config.connect
        self._memo: dict[str, bool] = {}
        self._metrics = services.metrics
        if services.logger is not None:
            services.logger.info("ipfilter: %d networks (%d inline)", self.table.size, len(config.allow) + len(config.deny))

    def admits(self, ip: str) -> bool:
        decision = self._memo.get(ip)
        if decision is None:
            hit = self.table.lookup(ip)
            decision = self._default if hit is None else hit
            if len(self._memo) >= MEMO_MAX:
                self._memo.clear()  # bounded: a client cycling through addresses cannot grow it
            self._memo[ip] = decision
        return decision

    def on_connect(self, conn) -> Response | None:
        if not self._connect or conn.trusted_proxy or self.admits(conn.peer_ip):
            return None
        if self._metrics is not None:
            self._metrics.incr(M_DROPPED)
        return Response.error(self._status, self._message)

    def on_request(self, ctx: RequestContext) -> Response | None:
        if self.admits(ctx.client_ip):
            return None
        if self._metrics is not None:
            self._metrics.incr(M_DENIED)
        return Response.error(self._status, self._message, ctx.request_id)
