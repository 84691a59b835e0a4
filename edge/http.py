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

Header names arrive from gunicorn upper-cased; ``canonical_name`` gives them back
their usual spelling once, through a bounded cache, so backends and clients see
``Content-Type`` rather than ``CONTENT-TYPE``.
"""

from __future__ import annotations

import ipaddress
from typing import Iterable, Sequence

# RFC 9110 §7.6.1 plus the de-facto ones nginx and HAProxy also strip.
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "te", "trailer", "transfer-encoding", "upgrade",
    "proxy-connection", "proxy-authorization", "proxy-authenticate", "http2-settings",
})
# Framing is recomputed per side; Expect is answered by edge itself (it sends the
# 100 Continue when it starts reading the body), so the backend never waits for one.
_REQUEST_DROP = HOP_BY_HOP | {"content-length", "expect", "host"}
_RESPONSE_DROP = HOP_BY_HOP | {"content-length"}

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

    __slots__ = ("_nets", "_exact")

    def __init__(self, cidrs: Sequence[str]) -> None:
        nets = [ipaddress.ip_network(c, strict=False) for c in cidrs]
        self._nets = tuple(nets)
        # Single addresses are the common case (a load balancer); a set lookup is cheaper than CIDR tests.
        self._exact = frozenset(str(n.network_address) for n in nets if n.num_addresses == 1)

    def __bool__(self) -> bool:
        return bool(self._nets)

    def __contains__(self, ip: str) -> bool:
        if not self._nets:
            return False
        if ip in self._exact:
            return True
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        if addr.version == 6 and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        return any(addr in n for n in self._nets)


def resolve_client_ip(peer_ip: str, xff_values: Sequence[str], trusted: TrustedProxies) -> str:
    """The client address: walk X-Forwarded-For from the right while the hop is trusted.

    Only a trusted peer's header is read at all; within it, the rightmost address that
    is not itself a trusted proxy is the client (what nginx's ``real_ip_recursive on`` does).
    """
    if not xff_values or peer_ip not in trusted:
        return peer_ip
    hops = [h.strip() for v in xff_values for h in v.split(",") if h.strip()]
    for hop in reversed(hops):
        if hop not in trusted:
            return _strip_port(hop)
    return _strip_port(hops[0]) if hops else peer_ip


def _strip_port(hop: str) -> str:
    if hop.startswith("["):  # "[2001:db8::1]:4711"
        return hop[1:hop.find("]")] if "]" in hop else hop
    if hop.count(":") == 1:  # "192.0.2.1:4711"
        return hop.split(":", 1)[0]
    return hop


def split_host_port(host: str, default_port: int) -> tuple[str, int]:
    """``example.com:8080`` -> (``example.com``, 8080); handles ``[::1]:8080``. Host is lower-cased."""
    host = host.strip()
    if host.startswith("["):
        end = host.find("]")
        if end < 0:
            raise ValueError(f"bad host {host!r}")
        name, rest = host[1:end], host[end + 1:]
        if rest and not rest.startswith(":"):
            raise ValueError(f"bad host {host!r}")
        port = rest[1:]
    elif host.count(":") == 1:
        name, port = host.split(":", 1)
    elif ":" in host:
        raise ValueError(f"bad host {host!r}")
    else:
        name, port = host, ""
    if port:
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"bad port in host {host!r}")
        return name.lower(), int(port)
    return name.lower(), default_port


_HOST_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,;=:[]%")


def valid_host(host: str) -> bool:
    """RFC 9112 §3.2: Host is ``uri-host [ ":" port ]``; refuse spaces, slashes, '@' and the like."""
    return bool(host) and all(c in _HOST_CHARS for c in host)


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
    allow_upgrade: bool,
    x_forwarded: bool = True,
    forwarded: bool = False,
    via: str | None = "1.1 edge",
) -> list[tuple[str, str]]:
    """The header list sent to a backend for one request.

    ``headers`` are the client's fields (any case). Host is not included: the client
    writes it first (it may depend on the server picked). Returns canonical-cased
    pairs, forwarding fields last. When
    ``allow_upgrade`` and the client asked for an upgrade, ``Upgrade`` and
    ``Connection: upgrade`` are kept (WebSocket).
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
    upgrade = None
    for k, v in items:
        lk = k.lower()
        if lk in drop:
            if lk == "upgrade":
                upgrade = v
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
    if allow_upgrade and upgrade is not None and "upgrade" in conn_opts:
        out.append(("Upgrade", upgrade))
        out.append(("Connection", "upgrade"))
    if x_forwarded:
        # Appended, never overwritten (as nginx's $proxy_add_x_forwarded_for): a backend reads it
        # from the right, and the entry edge adds is the only one it can trust.
        prior = ", ".join(xff) if xff else ""
        out.append(("X-Forwarded-For", f"{prior}, {peer_ip}" if prior else peer_ip))
        out.append(("X-Forwarded-Proto", xfp or scheme))
        out.append(("X-Forwarded-Host", xfh or client_host))
        out.append(("X-Forwarded-Port", xfport or str(client_port)))
    if forwarded:
        element = f"for={_forwarded_node(peer_ip)};host={client_host};proto={scheme}"
        out.append(("Forwarded", f"{fwd}, {element}" if fwd else element))
    if via:
        out.append(("Via", via))
    return out


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


def response_has_body(method: str, status: int) -> bool:
    """RFC 9110 §6.4.1: HEAD answers, 1xx, 204 and 304 never carry content."""
    return not (method == "HEAD" or status < 200 or status == 204 or status == 304)

