"""The PROXY protocol, versions 1 and 2 (HAProxy's spec, "The PROXY protocol", 2020/03/05): pure parsing.

Theory of operation. A load balancer that terminates TCP in front of edge (an AWS
NLB, HAProxy in ``mode tcp``, a cloud L4 balancer) loses the client's address: edge's
peer is the balancer. With the PROXY protocol it sends, as the very first bytes of
the connection and before any HTTP (or TLS) byte, one header naming the original
source and destination. ``parse(buf)`` reads that header from the bytes received so
far and answers one of three things:

- ``None``: ``buf`` is a strict prefix of a header that may still be valid; read more;
- a ``ProxyHeader``: the header, with ``length``, the number of bytes it took (what
  follows belongs to HTTP);
- ``ProxyProtocolError``: the bytes cannot be a valid header. ``MissingHeader`` (a
  subclass) says they are not a PROXY header at all, which a listener that does not
  require one may treat as plain HTTP.

It never reads a socket or a clock: ``edge.worker`` does the reading, only from the
sources ``server.proxy_protocol.trusted`` names (a header from anyone else would let
any client pick its own address), within ``server.proxy_protocol.timeout``.

Version 1 (spec §2.1) is one text line of at most 107 bytes, CRLF included::

    PROXY TCP4 192.0.2.1 198.51.100.7 56324 443\\r\\n
    PROXY TCP6 2001:db8::1 2001:db8::2 56324 443\\r\\n
    PROXY UNKNOWN\\r\\n                              (anything may follow UNKNOWN)

Version 2 (spec §2.2) is binary: a 12-byte signature, a version/command byte, a
family/protocol byte, a 16-bit big-endian length of what follows (addresses, then
TLVs, which edge skips). Command ``LOCAL`` (health checks from the balancer itself)
and family ``UNSPEC`` (or ``UNIX``, which carries no IP) mean "use the connection's
own addresses": ``ProxyHeader.local`` is true then.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from edge.errors import ClientError

__all__ = ["ProxyHeader", "ProxyProtocolError", "MissingHeader", "parse", "V1_MAX_BYTES", "V2_SIGNATURE",
           "V2_MAX_BYTES", "MAX_HEADER_BYTES"]

#: spec §2.1: "a 108-byte buffer is always enough to store all the line and a trailing zero"
V1_MAX_BYTES = 107
V1_PREFIX = b"PROXY "
#: spec §2.2: the 12-byte signature, chosen never to start a valid HTTP/1 request or TLS record
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_FIXED_BYTES = 16
#: addresses plus TLVs edge accepts in one v2 header. The spec allows up to 65535; real
#: balancers send the 12/36 address bytes and a few short TLVs (AWS: the VPC endpoint id,
#: ALPN, an authority), so 4 KiB bounds a hostile sender's buffer without refusing them.
V2_MAX_PAYLOAD_BYTES = 4096
V2_MAX_BYTES = V2_FIXED_BYTES + V2_MAX_PAYLOAD_BYTES
#: the most bytes a caller ever needs to buffer before ``parse`` decides
MAX_HEADER_BYTES = V2_MAX_BYTES

# spec §2.2: the address block sizes by family (high nibble of the 14th byte)
_AF_UNSPEC, _AF_INET, _AF_INET6, _AF_UNIX = 0x0, 0x1, 0x2, 0x3
_ADDRESS_BYTES = {_AF_UNSPEC: 0, _AF_INET: 12, _AF_INET6: 36, _AF_UNIX: 216}
_PROTO_UNSPEC, _PROTO_STREAM, _PROTO_DGRAM = 0x0, 0x1, 0x2
_CMD_LOCAL, _CMD_PROXY = 0x0, 0x1


class ProxyProtocolError(ClientError):
    """The connection's first bytes are not a valid PROXY header; the connection is closed."""

    status = 400
    metric = "proxy_protocol"
    public = "bad request"


class MissingHeader(ProxyProtocolError):
    """The first bytes are not a PROXY header at all (a client speaking HTTP or TLS directly)."""

    metric = "proxy_protocol_missing"


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """One parsed PROXY header.

    ``local``: the sender gave no client address (v1 ``UNKNOWN``, v2 ``LOCAL``, v2
    ``UNSPEC``/``UNIX``); the connection's own addresses stand. Otherwise ``src_ip``
    and ``dst_ip`` are canonical address text (``ipaddress``'s ``str``).
    """

    version: int
    length: int
    local: bool
    src_ip: str | None = None
    src_port: int = 0
    dst_ip: str | None = None
    dst_port: int = 0


def parse(buf: bytes) -> ProxyHeader | None:
    """The PROXY header at the start of ``buf``; None when more bytes are needed (see module doc)."""
    if not buf:
        return None
    if buf[0] == 0x0D:  # CR: only version 2 starts with one
        n = min(len(buf), len(V2_SIGNATURE))
        if buf[:n] != V2_SIGNATURE[:n]:
            raise MissingHeader("not a PROXY protocol header")
        return _parse_v2(buf)
    n = min(len(buf), len(V1_PREFIX))
    if buf[:n] != V1_PREFIX[:n]:
        raise MissingHeader("not a PROXY protocol header")
    return _parse_v1(buf)


# ---------------------------------------------------------------------------- version 1


def _parse_v1(buf: bytes) -> ProxyHeader | None:
    nl = buf.find(b"\n", 0, V1_MAX_BYTES)
    if nl < 0:
        if len(buf) >= V1_MAX_BYTES:
            raise ProxyProtocolError(f"PROXY v1 line longer than {V1_MAX_BYTES} bytes")
        return None
    if buf[nl - 1] != 0x0D:
        raise ProxyProtocolError("PROXY v1 line not ended by CRLF")
    line = buf[:nl - 1]
    length = nl + 1
    # spec §2.1: "the protocol ... MUST be exactly one of TCP4, TCP6, UNKNOWN"; single spaces only
    parts = line.split(b" ")
    if len(parts) < 2:
        raise ProxyProtocolError("PROXY v1 line without a protocol")
    proto = parts[1]
    if proto == b"UNKNOWN":
        # "the receiver must ignore anything presented before the CRLF is found"
        return ProxyHeader(1, length, True)
    if proto not in (b"TCP4", b"TCP6"):
        raise ProxyProtocolError(f"PROXY v1 protocol must be TCP4, TCP6 or UNKNOWN (got {proto[:16]!r})")
    if len(parts) != 6:
        raise ProxyProtocolError("PROXY v1 line must have 6 fields separated by single spaces")
    version = 4 if proto == b"TCP4" else 6
    src = _v1_address(parts[2], version)
    dst = _v1_address(parts[3], version)
    return ProxyHeader(1, length, False, src, _v1_port(parts[4]), dst, _v1_port(parts[5]))


def _v1_address(raw: bytes, version: int) -> str:
    try:
        text = raw.decode("ascii")
        addr = ipaddress.IPv4Address(text) if version == 4 else ipaddress.IPv6Address(text)
    except (UnicodeDecodeError, ValueError):
        raise ProxyProtocolError(f"PROXY v1: not an IPv{version} address: {raw[:46]!r}") from None
    return str(addr)


def _v1_port(raw: bytes) -> int:
    # spec §2.1: ports are decimal, 0-65535, "without leading zeroes"
    if not raw.isdigit() or len(raw) > 5 or (len(raw) > 1 and raw[:1] == b"0") or int(raw) > 65535:
        raise ProxyProtocolError(f"PROXY v1: invalid port {raw[:8]!r}")
    return int(raw)


# ---------------------------------------------------------------------------- version 2


def _parse_v2(buf: bytes) -> ProxyHeader | None:
    if len(buf) < V2_FIXED_BYTES:
        # the signature so far matched; the version byte is checked as soon as it is there
        if len(buf) > 12 and buf[12] >> 4 != 2:
            raise ProxyProtocolError(f"PROXY v2: version must be 2 (got {buf[12] >> 4})")
        return None
    ver_cmd, fam_proto, payload = struct.unpack_from("!BBH", buf, 12)
    if ver_cmd >> 4 != 2:
        raise ProxyProtocolError(f"PROXY v2: version must be 2 (got {ver_cmd >> 4})")
    command = ver_cmd & 0x0F
    if command not in (_CMD_LOCAL, _CMD_PROXY):
        raise ProxyProtocolError(f"PROXY v2: unknown command {command}")
    family, proto = fam_proto >> 4, fam_proto & 0x0F
    if family not in _ADDRESS_BYTES:
        raise ProxyProtocolError(f"PROXY v2: unknown address family {family}")
    if proto > _PROTO_DGRAM:
        raise ProxyProtocolError(f"PROXY v2: unknown transport protocol {proto}")
    if payload > V2_MAX_PAYLOAD_BYTES:
        raise ProxyProtocolError(f"PROXY v2: {payload} bytes of addresses and TLVs (at most {V2_MAX_PAYLOAD_BYTES})")
    length = V2_FIXED_BYTES + payload
    if len(buf) < length:
        return None
    if command == _CMD_LOCAL:
        # spec §2.2: "the receiver must accept this connection as valid and must use the real
        # connection endpoints and discard the protocol block including the family"
        return ProxyHeader(2, length, True)
    need = _ADDRESS_BYTES[family]
    if payload < need:
        raise ProxyProtocolError(f"PROXY v2: {payload} bytes cannot hold the {need}-byte address block")
    if family in (_AF_UNSPEC, _AF_UNIX):
        # UNSPEC: "the receiver should ... use the real endpoints"; a UNIX path is no IP address
        return ProxyHeader(2, length, True)
    if proto != _PROTO_STREAM:
        raise ProxyProtocolError("PROXY v2: edge serves TCP (STREAM) connections only")
    at = V2_FIXED_BYTES
    if family == _AF_INET:
        src, dst = ipaddress.IPv4Address(buf[at:at + 4]), ipaddress.IPv4Address(buf[at + 4:at + 8])
        sport, dport = struct.unpack_from("!HH", buf, at + 8)
    else:
        src, dst = ipaddress.IPv6Address(buf[at:at + 16]), ipaddress.IPv6Address(buf[at + 16:at + 32])
        sport, dport = struct.unpack_from("!HH", buf, at + 32)
    # TLVs (spec §2.2.7) follow the addresses up to ``length``: skipped, not interpreted
    return ProxyHeader(2, length, False, str(src), sport, str(dst), dport)


def build_v1(src_ip: str, dst_ip: str, src_port: int, dst_port: int) -> bytes:
    """A v1 header (for tests and tools that speak to edge as a balancer would)."""
    proto = "TCP6" if ":" in src_ip else "TCP4"
    return f"PROXY {proto} {src_ip} {dst_ip} {src_port} {dst_port}\r\n".encode("ascii")


def build_v2(src_ip: str | None, dst_ip: str | None = None, src_port: int = 0, dst_port: int = 0,
             tlvs: bytes = b"", local: bool = False) -> bytes:
    """A v2 header (for tests and tools): PROXY over TCP, or LOCAL; ``tlvs`` appended raw."""
    if local or src_ip is None:
        return V2_SIGNATURE + struct.pack("!BBH", 0x20, 0x00, len(tlvs)) + tlvs
    src, dst = ipaddress.ip_address(src_ip), ipaddress.ip_address(dst_ip or src_ip)
    family = _AF_INET if src.version == 4 else _AF_INET6
    block = src.packed + dst.packed + struct.pack("!HH", src_port, dst_port)
    return V2_SIGNATURE + struct.pack("!BBH", 0x21, (family << 4) | _PROTO_STREAM, len(block) + len(tlvs)) + block + tlvs
