"""geo: route by the client's country and continent, keep countries out or in.

Theory of operation
-------------------
**Where the client is.** The client address is ``ctx.client_ip`` (after
``server.trusted_proxies`` resolution, so an address a trusted load balancer put in
``X-Forwarded-For`` counts, and one a client made up does not). It is looked up in a
MaxMind-format database (``edge.geo.GeoDatabase``: memory-mapped C reader, a small
per-worker memo, the file reopened when it changes). Private, loopback and other
non-global addresses, and addresses the database does not hold, get
``default_country`` (``null``: unknown). Optionally, ``country_header`` (e.g.
Cloudflare's ``CF-IPCountry``) is believed instead of the database, but only when the
connection's peer is one of ``trusted_proxies``: from anyone else the header is
ignored (and removed), so it cannot be spoofed.

**Which pool.** ``countries`` maps country codes, ``continents`` continent codes (AF,
AN, AS, EU, NA, OC, SA), to upstream pools; the country wins over the continent, then
``default_pool``, then the route's own ``upstream``. ``fallbacks`` lists, per pool,
the pools to use in order when that pool has no server available (all down by the
health checks, ejected or drained; see docs/upstreams.md): the first available one
is chosen. If none is, the chosen pool stays, and its 503 tells the client.

**Policy.** ``allow_countries`` (only these) or ``deny_countries`` (all but these)
answer ``status`` (451 Unavailable For Legal Reasons, RFC 7725, by default; 403 if
you prefer not to say why) with ``message``. A client whose country is unknown is
refused by an allow list unless ``allow_unknown`` is set, and passes a deny list.

**What others see.** ``ctx.facts`` gets ``country``, ``continent`` and ``geo_pool``
(for ``ratelimit`` keys such as ``fact:country``, logs and metrics), and ``city``
and ``asn`` when the database has them. The backend gets ``headers`` (default
``X-Geo-Country`` and ``X-Geo-Continent``; city and ASN headers when configured);
the same headers sent by the client are always removed first.

**Database.** ``database: default`` is the Geoacumen country database shipped by the
``python-geoacumen`` package (installed by ``make install``; see docs/geo.md for its
provenance and licence); any other value is a path to a MaxMind DB file (GeoLite2 /
GeoIP2 Country or City, DB-IP, ...). The master opens it once while validating the
settings, so a missing or broken file refuses the start or the reload; each worker
then opens it itself (memory-mapped pages are shared).

Priority 500: after the security plugins have admitted the request, before
``headers`` (100).
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from edge.config import Duration, HeaderName
from edge.context import Response
from edge.geo import CONTINENT_OF, CONTINENTS, GeoDatabase, open_reader
from edge.plugins import Plugin, PluginConfig, Services, UpstreamName

#: ``database: default`` -> this file of the python-geoacumen package
DEFAULT_DATABASE = "default"


def default_database_path() -> str:
    spec = importlib.util.find_spec("geoacumen")
    if spec is None or not spec.origin:
        raise ValueError("the default geo database is not installed (pip install --no-deps python-geoacumen; "
                         "`make install` does it), or set database to a MaxMind DB file")
    return os.path.join(os.path.dirname(spec.origin), "db", "Geoacumen-Country.mmdb")


def _country(code: str) -> str:
    code = code.strip().upper()
    if len(code) != 2 or not code.isascii() or not code.isalpha():
        raise ValueError(f"not an ISO 3166-1 alpha-2 country code: {code!r}")
    return code


class GeoHeaders(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    country: HeaderName | None = Field("X-Geo-Country", description="header with the country code (null: none)")
    continent: HeaderName | None = Field("X-Geo-Continent", description="header with the continent code (null: none)")
    city: HeaderName | None = Field(None, description="header with the city name, when the database has cities")
    asn: HeaderName | None = Field(None, description="header with the autonomous system number, when the database has them")



class Geo(Plugin):
    """Country-aware pools with fallbacks, country allow/deny lists, geo headers and facts."""

    name = "geo"
    priority = 500

    class Config(PluginConfig):
        database: str = Field(DEFAULT_DATABASE, description="MaxMind DB file, or `default` (the shipped Geoacumen country database)")
        check_interval: Duration = Field(1.0, description="how often a worker checks whether the file changed (0: never)")
        memo_size: int = Field(4096, ge=0, le=1_000_000, description="recent addresses remembered per worker")
        default_country: str | None = Field(None, description="country of private, loopback and unknown addresses (null: unknown)")
        country_header: HeaderName | None = Field(None, description="a header with the country set by a trusted proxy or CDN "
                                           "(e.g. CF-IPCountry); believed only from server.trusted_proxies")
        countries: dict[str, UpstreamName] = Field({}, description="country code -> upstream pool")
        continents: dict[str, UpstreamName] = Field({}, description="continent code (AF AN AS EU NA OC SA) -> upstream pool")
        default_pool: UpstreamName | None = Field(None, description="pool when neither map matches (null: the route's upstream)")
        fallbacks: dict[UpstreamName, tuple[UpstreamName, ...]] = Field(
            {}, description="pool -> pools to use, in order, when it has no available server")
        allow_countries: tuple[str, ...] = Field((), description="only these countries are served")
        deny_countries: tuple[str, ...] = Field((), description="these countries are refused")
        allow_unknown: bool = Field(False, description="with allow_countries: serve clients whose country is unknown")
        status: Literal[403, 451] = Field(451, description="status of a refused country (451: RFC 7725)")
        message: str = Field("not available in your region", max_length=200, description="body of the refusal")
        headers: GeoHeaders = Field(GeoHeaders(), description="headers sent to the backend")
        _path: str = PrivateAttr("")

        @field_validator("countries")
        @classmethod
        def _countries(cls, v: dict[str, str]) -> dict[str, str]:
            return {_country(k): pool for k, pool in v.items()}

        @field_validator("continents")
        @classmethod
        def _continents(cls, v: dict[str, str]) -> dict[str, str]:
            out = {}
            for k, pool in v.items():
                code = k.strip().upper()
                if code not in CONTINENTS:
                    raise ValueError(f"unknown continent code {k!r} (one of {', '.join(sorted(CONTINENTS))})")
                out[code] = pool
            return out

        @field_validator("allow_countries", "deny_countries")
        @classmethod
        def _codes(cls, v: tuple[str, ...]) -> tuple[str, ...]:
            return tuple(_country(c) for c in v)

        @field_validator("default_country")
        @classmethod
        def _default(cls, v: str | None) -> str | None:
            return _country(v) if v is not None else None

        @field_validator("message")
        @classmethod
        def _message(cls, v: str) -> str:
            if not v.isprintable():
                raise ValueError("must be printable text")
            return v

        @model_validator(mode="after")
        def _check(self) -> "Geo.Config":
            if self.allow_countries and self.deny_countries:
                raise ValueError("set allow_countries or deny_countries, not both")
            path = default_database_path() if self.database == DEFAULT_DATABASE else self.database
            open_reader(path).close()  # ValueError names the file and why it is not a MaxMind DB
            self._path = path
            return self

    def __init__(self, config: Config, services: Services) -> None:
        self._db = GeoDatabase(config._path, config.check_interval, config.memo_size)
        self._default_country = config.default_country
        self._countries = dict(config.countries)
        self._continents = dict(config.continents)
        self._default_pool = config.default_pool
        self._fallbacks = {pool: tuple(rest) for pool, rest in config.fallbacks.items()}
        self._routes_by_geo = bool(self._countries or self._continents or self._default_pool)
        self._allow = frozenset(config.allow_countries)
        self._deny = frozenset(config.deny_countries)
        self._allow_unknown = config.allow_unknown
        self._status = config.status
        self._message = config.message
        h = config.headers
        self._h_country, self._h_continent, self._h_city, self._h_asn = h.country, h.continent, h.city, h.asn
        self._set_by_us = tuple(n for n in (h.country, h.continent, h.city, h.asn, config.country_header) if n)
        self._owned_lower = frozenset(n.lower() for n in self._set_by_us)
        self._country_header = config.country_header
        trusted = services.extras.get("trusted_proxies")
        self._trusted = trusted if trusted else None
        # pool -> has an available server; absent while edge check builds the plugin (no pools there)
        self._available = services.extras.get("upstream_available")
        self._continent_of = CONTINENT_OF

    def on_request(self, ctx: Any) -> Response | None:
        headers = ctx.headers
        claimed = headers.get(self._country_header) if self._country_header else None
        # one scan of the request's fields; the list is rebuilt only when a client sent one of ours
        owned = self._owned_lower
        for k, _ in headers.items():
            if k.lower() in owned:
                for name in self._set_by_us:
                    headers.remove(name)
                break
        country = continent = None
        loc = None
        if claimed is not None and self._trusted is not None and ctx.peer_ip in self._trusted:
            try:
                country = _country(claimed)
            except ValueError:
                country = None
            continent = self._continent_of.get(country) if country else None
        else:
            loc = self._db.lookup(ctx.client_ip)
            if loc is not None:
                country, continent = loc.country, loc.continent
        if country is None and self._default_country is not None:
            country = self._default_country
            continent = self._continent_of.get(country)
        facts = ctx.facts
        facts["country"] = country
        facts["continent"] = continent
        if loc is not None:
            if loc.city is not None:
                facts["city"] = loc.city
            if loc.asn is not None:
                facts["asn"] = loc.asn
        if self._allow:
            if (country is None and not self._allow_unknown) or (country is not None and country not in self._allow):
                return Response.error(self._status, self._message, ctx.request_id)
        elif country is not None and country in self._deny:
            return Response.error(self._status, self._message, ctx.request_id)
        if self._routes_by_geo and ctx.upstream is not None:
            pool = self._countries.get(country) if country else None
            if pool is None and continent:
                pool = self._continents.get(continent)
            if pool is None:
                pool = self._default_pool or ctx.upstream
            pool = self._first_available(pool)
            ctx.upstream = pool
            facts["geo_pool"] = pool
        # the client's own fields of these names were removed above: adding cannot duplicate one
        if country is not None and self._h_country:
            headers.add(self._h_country, country)
        if continent is not None and self._h_continent:
            headers.add(self._h_continent, continent)
        if loc is not None:
            if loc.city is not None and self._h_city and loc.city.isprintable() and loc.city.isascii():
                headers.add(self._h_city, loc.city)
            if loc.asn is not None and self._h_asn:
                headers.add(self._h_asn, str(loc.asn))
        return None

    def _first_available(self, pool: str) -> str:
        available = self._available
        if available is None or available(pool):
            return pool
        for other in self._fallbacks.get(pool, ()):
            if available(other):
                return other
        return pool
