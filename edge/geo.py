"""Where a client is: country, continent (and city, ASN when the database has them).

Theory of operation. ``GeoDatabase`` reads any MaxMind DB file (GeoLite2/GeoIP2
Country or City, DB-IP, Geoacumen, an ASN database...) with the ``maxminddb``
reader's C extension, memory-mapped (``MODE_MMAP_EXT``): the file's pages are shared
by every worker of the node through the page cache, and a lookup costs a few
microseconds. Recent answers are kept in a small per-worker dict (first in, first
out: cheaper than an LRU's bookkeeping, and scanners that walk address space evict
no worse), so a client's repeated requests cost one dict lookup.

The file is watched: at most every ``check_interval_s`` a lookup ``stat``s it, and
when its inode, size or modification time changed, a new reader is opened and
swapped in (and the memo cleared). Lookups never wait for disk and never see a half
state: the old reader serves until the new one opened completely, and a file that
does not open (half-copied, not a MaxMind DB) is logged once and retried at the next
check while the old reader keeps serving. Replace database files atomically (write
a temporary file, then ``mv`` it over the old one), as ``geoipupdate`` does; a
reload (``kill -HUP``) opens the file afresh in the new workers anyway.

Addresses that cannot be located (private, loopback, link-local, unspecified,
documentation ranges: anything ``ipaddress`` says is not global, and anything the
database does not hold) give ``None``; the caller applies its default.

Continents: Country databases such as Geoacumen hold only ``country.iso_code``, so
when the record has no ``continent.code`` it is derived from the country with
``CONTINENT_OF`` (ISO 3166-1 alpha-2 -> the seven codes MaxMind uses).
"""

from __future__ import annotations

import bisect
import ipaddress
import logging
import os
import socket
import time
from dataclasses import dataclass
from typing import Any, Callable

import maxminddb

log = logging.getLogger("edge.geo")

#: the seven continent codes MaxMind databases use
CONTINENTS = frozenset({"AF", "AN", "AS", "EU", "NA", "OC", "SA"})

_BY_CONTINENT = {
    "AF": "AO BF BI BJ BW CD CF CG CI CM CV DJ DZ EG EH ER ET GA GH GM GN GQ GW KE KM LR LS LY MA MG ML MR MU MW MZ "
          "NA NE NG RE RW SC SD SH SL SN SO SS ST SZ TD TG TN TZ UG YT ZA ZM ZW",
    "AN": "AQ BV GS HM TF",
    "AS": "AE AF AM AZ BD BH BN BT CC CN CX GE HK ID IL IN IO IQ IR JO JP KG KH KP KR KW KZ LA LB LK MM MN MO MV MY "
          "NP OM PH PK PS QA SA SG SY TH TJ TL TM TR TW UZ VN YE",
    "EU": "AD AL AT AX BA BE BG BY CH CY CZ DE DK EE ES FI FO FR GB GG GI GR HR HU IE IM IS IT JE LI LT LU LV MC MD "
          "ME MK MT NL NO PL PT RO RS RU SE SI SJ SK SM UA VA XK",
    "NA": "AG AI AW BB BL BM BQ BS BZ CA CR CU CW DM DO GD GL GP GT HN HT JM KN KY LC MF MQ MS MX NI PA PM PR SV SX "
          "TC TT US VC VG VI",
    "OC": "AS AU CK FJ FM GU KI MH MP NC NF NR NU NZ PF PG PN PW SB TK TO TV UM VU WF WS",
    "SA": "AR BO BR CL CO EC FK GF GY PE PY SR UY VE",
}
#: ISO 3166-1 alpha-2 country -> continent code
CONTINENT_OF: dict[str, str] = {c: cont for cont, codes in _BY_CONTINENT.items() for c in codes.split()}

#: how many recent addresses a worker remembers
DEFAULT_MEMO_SIZE = 4096


@dataclass(frozen=True, slots=True)
class Location:
    country: str | None         # ISO 3166-1 alpha-2, upper case
    continent: str | None       # AF AN AS EU NA OC SA
    city: str | None = None     # English name, when the database has cities
    asn: int | None = None      # autonomous system number, when the database has them
    as_org: str | None = None


def location_of(record: Any) -> Location | None:
    """A database record -> ``Location`` (pure); None when it names no country and no ASN."""
    if not isinstance(record, dict):
        return None
    country = _code(record.get("country")) or _code(record.get("registered_country"))
    continent = _code(record.get("continent")) if isinstance(record.get("continent"), dict) else None
    if continent is None and country is not None:
        continent = CONTINENT_OF.get(country)
    city = None
    names = (record.get("city") or {}).get("names") if isinstance(record.get("city"), dict) else None
    if isinstance(names, dict):
        city = names.get("en") or next(iter(names.values()), None)
    asn = record.get("autonomous_system_number")
    as_org = record.get("autonomous_system_organization")
    if country is None and asn is None:
        return None
    return Location(country, continent, city if isinstance(city, str) else None,
                    asn if isinstance(asn, int) else None, as_org if isinstance(as_org, str) else None)


def _code(section: Any) -> str | None:
    if not isinstance(section, dict):
        return None
    code = section.get("iso_code") or section.get("code")
    return code.upper() if isinstance(code, str) and len(code) == 2 and code.isascii() and code.isalpha() else None


# IPv4 ranges that are not global (RFC 6890's special-purpose registry, as ``ipaddress`` has
# them), as sorted integer (first, last) pairs: a bisect instead of ipaddress objects per request.
_V4_NOT_GLOBAL = sorted(
    (int(n.network_address), int(n.broadcast_address))
    for n in map(ipaddress.IPv4Network, (
        "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
        "192.0.0.0/24", "192.0.2.0/24", "192.168.0.0/16", "198.18.0.0/15", "198.51.100.0/24",
        "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4",
    ))
)
_V4_STARTS = [first for first, _ in _V4_NOT_GLOBAL]


def locatable(ip: str) -> bool:
    """False for addresses no database locates: private, loopback, link-local, reserved... (pure)."""
    if ":" not in ip:
        try:
            n = int.from_bytes(socket.inet_pton(socket.AF_INET, ip), "big")
        except (OSError, ValueError):
            return False
        i = bisect.bisect_right(_V4_STARTS, n) - 1
        return i < 0 or n > _V4_NOT_GLOBAL[i][1]
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return False
    if addr.version == 6 and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_global


def _unmapped(ip: str) -> str:
    """``::ffff:a.b.c.d`` -> ``a.b.c.d``: databases hold IPv4 ranges under IPv4, not under the mapped prefix."""
    try:
        mapped = ipaddress.IPv6Address(ip.split("%", 1)[0]).ipv4_mapped
    except ValueError:
        return ip
    return str(mapped) if mapped is not None else ip


def open_reader(path: str) -> Any:
    """The memory-mapped C reader; ValueError (with the reason) for a file that is not a MaxMind DB."""
    try:
        return maxminddb.open_database(path, maxminddb.MODE_MMAP_EXT)
    except (OSError, ValueError, maxminddb.InvalidDatabaseError) as e:
        raise ValueError(f"{path}: not a readable MaxMind DB: {e}") from None


def _signature(path: str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


class GeoDatabase:
    """One worker's reader of one database file; see the module docstring."""

    __slots__ = ("path", "_reader", "_signature", "_memo", "_memo_size", "_next_check", "_interval", "_clock",
                 "_failed_signature", "reloads")

    def __init__(self, path: str, check_interval_s: float = 1.0, memo_size: int = DEFAULT_MEMO_SIZE,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self._signature = _signature(path)
        self._reader = open_reader(path)
        self._memo: dict[str, Location | None] = {}
        self._memo_size = memo_size
        self._interval = check_interval_s
        self._clock = clock
        self._next_check = clock() + check_interval_s
        self._failed_signature: tuple | None = None
        self.reloads = 0

    def lookup(self, ip: str) -> Location | None:
        if self._interval and self._clock() >= self._next_check:
            self._check()
        memo = self._memo
        try:
            return memo[ip]
        except KeyError:
            pass
        found = None
        if locatable(ip):
            try:
                found = location_of(self._reader.get(_unmapped(ip) if ":" in ip else ip))
            except ValueError:  # not an address the database's IP version holds
                found = None
        if self._memo_size:
            if len(memo) >= self._memo_size:
                del memo[next(iter(memo))]
            memo[ip] = found
        return found

    def _check(self) -> None:
        self._next_check = self._clock() + self._interval
        sig = _signature(self.path)
        if sig is None or sig == self._signature or sig == self._failed_signature:
            return
        try:
            reader = open_reader(self.path)
        except ValueError as e:
            self._failed_signature = sig
            log.error("geo database %s changed but cannot be opened (keeping the previous one): %s", self.path, e)
            return
        old, self._reader = self._reader, reader
        self._signature, self._failed_signature = sig, None
        self._memo = {}
        self.reloads += 1
        log.info("geo database %s reopened (%s)", self.path, reader.metadata().database_type)
        old.close()

    def metadata(self) -> Any:
        return self._reader.metadata()

    def close(self) -> None:
        self._reader.close()
