"""Header rules between client and backend (pure: no sockets, no clock).

Theory of operation. A proxy is two HTTP connections glued together, so every
field that describes one *connection* rather than the *message* must stop at edge
(RFC 9110 §7.6.1: "a proxy or gateway MUST parse a received Connection header field
before a message is forwarded and, for each connection-option in this field, remove
any header or trailer field(s) from the message with the same name as the
connection-option, and then remove the Connection header field itself"). Framing
(Content-Length / Transfer-Encoding) is decided anew for each side by the request
path, so both are always removed here and re-added by whoever serialises.

X-Forwarded-For is appended to, never overwritten; what it says is only believed
(for the client address edge logs, limits and routes by) from peers in
``trusted_proxies``: it is a list that each proxy appends to, so taking its first
element would let any client pick its own address. The single-valued claims
(X-Forwarded-Proto/-Host/-Port, Forwarded) are replaced by edge's own unless the
peer is trusted.

Host (RFC 9110 §7.2) is read by one parser, ``parse_host``, for the whole code base:
a DNS-style name or an IP literal and an optional port, nothing else, so that a
Host value cannot carry list separators into the fields edge builds from it. Those
fields are also serialised by their grammar: every RFC 7239 ``Forwarded`` value is a
token or a quoted-string (``host="example.com:8080"``).

``Upgrade`` is forwarded only for the protocols the route allows (``websocket`` by
default); ``h2c`` and anything else are removed, with ``HTTP2-Settings``.

Header names arrive from gunicorn upper-cased; ``canonical_name`` gives them back
their usual spelling once, through a bounded cache, so backends and clients see
``Content-Type`` rather than ``CONTENT-TYPE``.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Collection, Iterable, Sequence

from edge.fields import is_token

# RFC 9110 §7.6.1 plus the de-facto ones nginx and HAProxy also strip.
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "te", "trailer", "transfer-encoding", "upgrade",
    "proxy-connection", "proxy-authorization", "proxy-authenticate", "http2-settings",
})
# Framing is recomputed per side; Expect is answered by edge itself (it sends the
# 100 Continue when it starts reading the body), so the backend never waits for one.
_REQUEST_DROP = HOP_BY_HOP | {"content-length", "expect", "host"}
_RESPONSE_DROP = HOP_BY_HOP | {"content-length"}
# The fields the framing step owns (edge.framing): the writer derives them for each side,
# so a reply head built by the config or a plugin never carries them (a second
# Content-Length or a Transfer-Encoding beside edge's own would desynchronise every
# cache and proxy downstream: RFC 9112 §6.3).
FRAMING_FIELDS = _RESPONSE_DROP

_CANON_MAX = 2048
_canon_cache: dict[str, str] = {}


def canonical_name(name: str) -> str:
    """``CONTENT-TYPE`` -> ``Content-Type``; cached (bounded) because the same few names recur."""
    c = _canon_cache.get(name)
    if c is None:
        c = "-".join(p[:1].upper() + p[1:].lower() for p in name.split("-"))
        if name.lower() == "www-authenticate":
            c = "WWW-Authenticate"
        elif name.lower() in ("te", "etag"):
            c = {"te": "TE", "etag": "ETag"}[name.lower()]
        if len(_canon_cache) < _CANON_MAX:
            _canon_cache[name] = c
    return c


def connection_options(values: Iterable[str]) -> set[str]:
    """Lower-cased tokens of every Connection field value."""
    out: set[str] = set()
    for v in values:
        for token in v.split(","):
            token = token.strip().lower()
            if token:
                out.add(token)
    return out


class TrustedProxies:
    """The set of networks whose forwarding headers are believed (compiled once)."""

    __slots__ = ("_nets", "_exact", "_seen")

    #: addresses remembered with their answer, so a CIDR list costs one dict lookup per request
    MEMO_SIZE = 4096

    def __init__(self, cidrs: Sequence[str]) -> None:
        nets = [ipaddress.ip_network(c, strict=False) for c in cidrs]
        self._nets = tuple(nets)
        # Single addresses are the common case (a load balancer); a set lookup is cheaper than CIDR tests.
        self._exact = frozenset(str(n.network_address) for n in nets if n.num_addresses == 1)
        self._seen: dict[str, bool] = {}

    def __bool__(self) -> bool:
        return bool(self._nets)

    def __contains__(self, ip: str) -> bool:
        if not self._nets:
            return False
        if ip in self._exact:
            return True
        seen = self._seen
        known = seen.get(ip)
        if known is not None:
            return known
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        if addr.version == 6 and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        answer = any(addr in n for n in self._nets)
        if len(seen) >= self.MEMO_SIZE:
            del seen[next(iter(seen))]
        seen[ip] = answer
        return answer


def resolve_client_ip(peer_ip: str, xff_values: Sequence[str], trusted: TrustedProxies) -> str:
    """The client address: walk X-Forwarded-For from the right while the hop is trusted.

    Only a trusted peer's header is read at all; within it, the rightmost address that
    is not itself a trusted proxy is the client (what nginx's ``real_ip_recursive on`` does).
    The answer is always an IP address: a hop that is not one (``unknown``, an obfuscated
    RFC 7239 identifier, garbage) ends the walk, and the last address that vouched for it
    (the nearest trusted hop, or the peer itself) is the client, as nginx keeps the
    connection's address when the header's value is invalid.
    """
    if not xff_values or peer_ip not in trusted:
        return peer_ip
    last = peer_ip
    for v in reversed(xff_values):
        for hop in reversed(v.split(",")):
            hop = hop.strip()
            if not hop:
                continue
            ip = _hop_ip(hop)
            if ip is None:
                return last
            if ip not in trusted:
                return ip
            last = ip
    return last


def _hop_ip(hop: str) -> str | None:
    """The IP address of one X-Forwarded-For element (``192.0.2.1``, ``192.0.2.1:4711``,
    ``[2001:db8::1]:4711``, ``2001:db8::1``) in its canonical text, or None when it is not one."""
    if hop.count(":") > 1 and hop[0] != "[":
        name = hop  # a bare IPv6 address
    else:
        try:
            name, _port = parse_host(hop)
        except ValueError:
            return None
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        return None


# RFC 3986 §3.2.2: host = IP-literal / IPv4address / reg-name. A reg-name may hold
# sub-delims and pct-encoded octets, but no DNS name does and several of them
# (",", ";", "=", '"') are the separators of Forwarded and other list fields: edge
# accepts the DNS subset (letters, digits, "-", and "_", which some internal names
# carry, in dot-separated non-empty labels, with an optional final dot), as nginx
# does in practice.
_REG_NAME = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*\.?")
_MAX_HOST_NAME = 255  # RFC 1035 §2.3.4: names are 255 octets or less
# Host values repeat (a site has a few names): parsed ones are kept, bounded like
# canonical_name's cache so that a client sending many names cannot grow it.
_HOST_CACHE_MAX = 1024
_host_cache: dict[str, tuple[str, int | None]] = {}


def parse_host(value: str) -> tuple[str, int | None]:
    """``uri-host [ ":" port ]`` (RFC 9110 §7.2) -> (host, port or None): the one host:port parser.

    The host is lower-cased and an IPv6 literal loses its brackets (``[::1]:8080`` ->
    ``("::1", 8080)``). Raises ValueError with the reason for anything else: a reg-name
    outside letters, digits, ``-``, ``_`` in non-empty dot-separated labels; a bracketed
    literal that is not an IPv6 address (RFC 3986 §3.2.2; IPvFuture and zone ids are
    refused); a port that is not 1-65535 in ASCII digits (RFC 3986 §3.2.3; an empty
    port means the scheme's default and gives None).
    """
    parsed = _host_cache.get(value)
    if parsed is None:
        parsed = _parse_host(value)
        if len(_host_cache) < _HOST_CACHE_MAX:
            _host_cache[value] = parsed
    return parsed


def _parse_host(value: str) -> tuple[str, int | None]:
    if value[:1] == "[":
        end = value.find("]")
        if end < 0:
            raise ValueError(f"unterminated IPv6 literal in host {value[:80]!r}")
        name, rest = value[1:end], value[end + 1:]
        if rest and rest[0] != ":":
            raise ValueError(f"unexpected characters after IPv6 literal in host {value[:80]!r}")
        try:
            if "%" in name or ipaddress.ip_address(name).version != 6:
                raise ValueError
        except ValueError:
            raise ValueError(f"not an IPv6 address in host {value[:80]!r}") from None
        port = rest[1:] if rest else None
    else:
        name, sep, port = value.partition(":")
        if not sep:
            port = None
        if len(name) > _MAX_HOST_NAME or _REG_NAME.fullmatch(name) is None:
            raise ValueError(f"invalid host name in {value[:80]!r}")
    if not port:
        return name.lower(), None
    if len(port) > 5 or not port.isascii() or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"port must be 1-65535 in host {value[:80]!r}")
    return name.lower(), int(port)


def split_host_port(host: str, default_port: int) -> tuple[str, int]:
    """``example.com:8080`` -> (``example.com``, 8080); ``[::1]`` -> (``::1``, default_port). See parse_host."""
    name, port = parse_host(host)
    return name, default_port if port is None else port


def valid_host(host: str) -> bool:
    """RFC 9112 §3.2: Host is ``uri-host [ ":" port ]``; see parse_host for what is accepted."""
    try:
        parse_host(host)
    except ValueError:
        return False
    return True


def _forwarded_value(value: str) -> str:
    """RFC 7239 §4: ``value = token / quoted-string``; a value that is not a token (a host
    with a port, an IPv6 node) is quoted, with ``\\`` and ``"`` escaped (RFC 9110 §5.6.4)."""
    if is_token(value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _forwarded_node(ip: str) -> str:
    # RFC 7239 §6: IPv6 nodes are quoted and bracketed.
    return f'"[{ip}]"' if ":" in ip else ip


def upstream_request_headers(
    headers: Iterable[tuple[str, str]],
    *,
    peer_ip: str,
    scheme: str,
    client_host: str,
    client_port: int,
    peer_trusted: bool,
    upgrade_protocols: Collection[str] = frozenset(),
    x_forwarded: bool = True,
    forwarded: bool = False,
    via: str | None = "1.1 edge",
) -> list[tuple[str, str]]:
    """The header list sent to a backend for one request.

    ``headers`` are the client's fields (any case). Host is not included: the client
    writes it first (it may depend on the server picked). Returns canonical-cased
    pairs, forwarding fields last.

    ``upgrade_protocols`` holds the lower-cased protocol names the route lets through
    (``websocket``). When the client asked for an upgrade (``Upgrade`` listed in
    ``Connection``, RFC 9110 §7.8), the offered protocols whose name is in it are sent
    as ``Upgrade`` with ``Connection: upgrade``; the others (``h2c``, anything the
    route does not allow) are dropped, and the whole field when none remains, so a
    backend never switches to a protocol edge was not told to carry. ``HTTP2-Settings``
    (RFC 7540 §3.2.1, the companion of ``h2c``) is always dropped with the hop-by-hop fields.
    """
    items = headers if isinstance(headers, list) else list(headers)
    conn_opts: set[str] = set()
    for k, v in items:
        if k.lower() == "connection":
            conn_opts |= connection_options((v,))
    drop = _REQUEST_DROP | conn_opts if conn_opts else _REQUEST_DROP
    out: list[tuple[str, str]] = []
    xff: list[str] = []
    xfp = xfh = xfport = fwd = None
    upgrade: list[str] = []
    for k, v in items:
        lk = k.lower()
        if lk in drop:
            if lk == "upgrade":
                upgrade.append(v)
            continue
        if lk == "x-forwarded-for":
            xff.append(v)
            continue
        if "_" in lk:
            # CGI-style backends map X_Forwarded_For and X-Forwarded-For to the same variable:
            # an underscore name could smuggle a claim past the rules above (nginx drops them too).
            continue
        if lk in ("x-forwarded-proto", "x-forwarded-host", "x-forwarded-port", "forwarded"):
            # Believed (kept) only from a trusted proxy; otherwise a client could claim https.
            if peer_trusted:
                if lk == "x-forwarded-proto":
                    xfp = v
                elif lk == "x-forwarded-host":
                    xfh = v
                elif lk == "x-forwarded-port":
                    xfport = v
                else:
                    fwd = v if fwd is None else f"{fwd}, {v}"
            continue
        out.append((canonical_name(k), v))
    if upgrade_protocols and upgrade and "upgrade" in conn_opts:
        offered = allowed_upgrades(upgrade, upgrade_protocols)
        if offered:
            out.append(("Upgrade", offered))
            out.append(("Connection", "upgrade"))
    if x_forwarded:
        # Appended, never overwritten (as nginx's $proxy_add_x_forwarded_for): a backend reads it
        # from the right, and the entry edge adds is the only one it can trust.
        prior = ", ".join(xff) if xff else ""
        out.append(("X-Forwarded-For", f"{prior}, {peer_ip}" if prior else peer_ip))
        out.append(("X-Forwarded-Proto", xfp or scheme))
        if xfh or client_host:  # an HTTP/1.0 request may have no Host: no empty claim then
            out.append(("X-Forwarded-Host", xfh or client_host))
        out.append(("X-Forwarded-Port", xfport or str(client_port)))
    if forwarded:
        # RFC 7239 §4: each value is a token or a quoted-string; client_host passed
        # valid_host, so it holds no '"' or '\\', but "example.com:8080" must still be quoted.
        # An empty host= is no valid value: without a Host (HTTP/1.0) the parameter is left out.
        host_param = f";host={_forwarded_value(client_host)}" if client_host else ""
        element = f"for={_forwarded_node(peer_ip)}{host_param};proto={scheme}"
        out.append(("Forwarded", f"{fwd}, {element}" if fwd else element))
    if via:
        out.append(("Via", via))
    return out


def allowed_upgrades(values: Iterable[str], allowed: Collection[str]) -> str | None:
    """The ``Upgrade`` value to forward: the offered protocols whose name is allowed, in the
    client's order, or None. RFC 9110 §7.8: ``Upgrade = #protocol``, ``protocol =
    protocol-name ["/" protocol-version]``; names compare case-insensitively. An element
    that is not ``token ["/" token]`` is dropped."""
    kept: list[str] = []
    for v in values:
        for item in v.split(","):
            item = item.strip()
            name, _, version = item.partition("/")
            if name.lower() in allowed and is_token(name) and (not version or is_token(version)):
                kept.append(item)
    return ", ".join(kept) if kept else None


def downstream_response_headers(
    headers: Iterable[tuple[str, str]],
    *,
    hide: frozenset[str] = frozenset(),
    via: str | None = "1.1 edge",
    keep_upgrade: bool = False,
) -> list[tuple[str, str]]:
    """The backend's response fields as the client gets them (hop-by-hop and hidden ones removed).

    ``hide`` holds lower-cased names (Server, X-Powered-By). Framing is added by the
    writer. For a 101 answer ``keep_upgrade`` keeps ``Upgrade``/``Connection``.
    """
    items = headers if isinstance(headers, list) else list(headers)
    conn_opts: set[str] = set()
    for k, v in items:
        if k.lower() == "connection":
            conn_opts |= connection_options((v,))
    drop = _RESPONSE_DROP | hide
    if conn_opts:
        drop = drop | conn_opts
    out: list[tuple[str, str]] = []
    for k, v in items:
        lk = k.lower()
        if lk in drop:
            if keep_upgrade and lk in ("upgrade", "connection"):
                out.append((canonical_name(k), v))
            continue
        out.append((k, v))
    if via:
        out.append(("Via", via))
    return out


def framing_field_error(name: str) -> str | None:
    """Why the config or a plugin setting may not set header ``name``, or None when it may."""
    if name.lower() in FRAMING_FIELDS:
        return f"header {name} is connection framing, which edge writes itself (RFC 9112 §6, RFC 9110 §7.6.1)"
    return None


def without_framing(items: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """``items`` without the fields of FRAMING_FIELDS; the same list when it holds none
    (the common case: one pass, no copy). For reply heads a plugin or the config built."""
    for k, _ in items:
        if k.lower() in FRAMING_FIELDS:
            return [(k, v) for k, v in items if k.lower() not in FRAMING_FIELDS]
    return items
