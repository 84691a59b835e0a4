"""What the cache writes on the Store, encoded compactly (pure: no I/O, no clock).

Theory of operation
-------------------
Three kinds of record live under a URL key (``edge.cache.keys``), told apart by a tag:

- ``StoredObject`` (``"o"``): one stored response: status, reason, the header list as it
  goes to clients (Age and framing fields excepted), the policy's ``StoredFacts`` (what
  RFC 9111 needs later: times, freshness lifetime, validators, directives), the URL and
  surrogate keys (for purges), and the body: inline in the same record when it is small
  (one store round trip per hit), else the version token and count of its chunks;
- ``VaryIndex`` (``"v"``): the URL's response varies (RFC 9111 §4.1): the ``Vary`` names,
  the generation under which its variants are stored, the time of the last soft purge,
  and the entity tag of the variant it was created with (``edge.cache.validators``);
- ``PASS`` (``"p"``): hit-for-pass, a short-lived mark that the last response for this URL
  could not be stored, so concurrent misses do not queue behind one another for nothing;
- ``FILLING``: the fill marker, a lock token (``Tokens.fill()``, not marshal: the stores'
  ``release_lock`` compares the raw value with the token) that the one request fetching a
  missing URL ``add``s in place of the record; the object (or a Vary index, or a pass
  mark) written there later replaces it, so the commit releases the lock in the same write.

The encoding is ``marshal`` of a flat tuple: measured (docs/cache.md) it decodes a typical
1 KiB object record several times faster than ``json`` (and ``msgpack`` is not a
dependency); marshal's format is stable within one Python version, and a record written by
another version (or any record that does not decode) is treated as a miss, never an error.
Records are only read back from the store edge itself writes to.

``StoredFacts`` is the policy's frozen dataclass; it is flattened field by field, nested
frozen dataclasses and enums of the policy module included, and rebuilt only from types
registered here (``register``), so a record cannot name an arbitrary class.
"""

from __future__ import annotations

import dataclasses
import enum
import itertools
import marshal
import operator
import secrets
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

FORMAT = 2  # bumped whenever the tuple layout changes; older records read as misses

_DC = "\x00dc"
_ENUM = "\x00en"
_MAP = "\x00mp"

_FLAT = "\x00fl"

_TYPES: dict[str, type] = {}
# dataclasses whose fields are plain values (StoredFacts): written as one tuple of their
# field values and rebuilt with one call, the per-hit decode path (no per-field walk)
_FLAT_FIELDS: dict[type, Any] = {}   # type -> attrgetter of every field: one C call builds the tuple


def register(*types: type, flat: bool = False) -> None:
    """Allow these dataclasses / enums to be rebuilt from records; ``flat``: their fields hold
    only values marshal takes as they are (str, bytes, numbers, bools, None, tuples of those)."""
    for t in types:
        _TYPES[t.__qualname__] = t
        if flat:
            names = tuple(f.name for f in dataclasses.fields(t))
            # attrgetter of several names returns a tuple, of one name the bare value
            _FLAT_FIELDS[t] = operator.attrgetter(*names) if len(names) > 1 else (lambda v, n=names: (getattr(v, n[0]),))


def _flatten(v: Any) -> Any:
    if v is None or isinstance(v, (str, bytes, bool, int, float)):
        return v
    fields = _FLAT_FIELDS.get(type(v))
    if fields is not None:
        return (_FLAT, type(v).__qualname__, fields(v))
    if isinstance(v, enum.Enum):
        return (_ENUM, type(v).__qualname__, v.value)
    if dataclasses.is_dataclass(v):
        return (_DC, type(v).__qualname__, *(_flatten(getattr(v, f.name)) for f in dataclasses.fields(v)))
    if isinstance(v, (dict, MappingProxyType)):
        return (_MAP, tuple((_flatten(k), _flatten(x)) for k, x in v.items()))
    if isinstance(v, frozenset):
        return frozenset(_flatten(x) for x in v)
    if isinstance(v, (tuple, list)):
        return tuple(_flatten(x) for x in v)
    raise TypeError(f"cannot store a {type(v).__name__} in a cache record")


def _rebuild(v: Any) -> Any:
    if type(v) is not tuple:
        if type(v) is frozenset:
            return frozenset(_rebuild(x) for x in v)
        return v
    if v and v[0] == _FLAT:
        return _TYPES[v[1]](*v[2])
    if v and v[0] == _DC:
        cls = _TYPES[v[1]]
        return cls(*(_rebuild(x) for x in v[2:]))
    if v and v[0] == _ENUM:
        return _TYPES[v[1]](v[2])
    if v and v[0] == _MAP:
        return MappingProxyType({_rebuild(k): _rebuild(x) for k, x in v[1]})
    return tuple(_rebuild(x) for x in v)


@dataclass(slots=True)
class StoredObject:
    status: int
    reason: str
    headers: tuple[tuple[str, str], ...]
    facts: Any
    stored_at: float          # wall clock when stored (ban rules compare it)
    url: str                  # primary cache key
    tags: tuple[str, ...]     # surrogate keys
    soft_purged: bool         # a soft purge marked it: revalidate before use
    body: bytes | None        # inline body, or None when chunked
    version: str              # the body's token: its chunks and encoded variants are stored under it
    chunks: int               # number of chunks
    length: int               # body length in bytes
    expires_at: float         # wall clock when the store drops it (and its chunks)

    def encode(self) -> bytes:
        return marshal.dumps((
            FORMAT, "o", self.status, self.reason, self.headers, _flatten(self.facts), self.stored_at, self.url,
            self.tags, self.soft_purged, self.body, self.version, self.chunks, self.length, self.expires_at,
        ))


@dataclass(frozen=True, slots=True)
class VaryIndex:
    names: tuple[str, ...]    # lower-cased Vary field names ("*" included if present)
    generation: str
    purged_at: float = 0.0    # soft purge: variants stored before this are stale
    # (entity tag, record key, stored at) of the variant the index was created with
    # (edge.cache.validators: written with the index, so a first variant costs no extra write)
    tags: tuple[tuple[str, str, float], ...] = ()

    def encode(self) -> bytes:
        if self.tags:  # a sixth member: versions before it read the first five and ignore it
            return marshal.dumps((FORMAT, "v", self.names, self.generation, self.purged_at, self.tags))
        return marshal.dumps((FORMAT, "v", self.names, self.generation, self.purged_at))


class _Pass:
    __slots__ = ()

    def __repr__(self) -> str:
        return "PASS"


PASS = _Pass()
PASS_RECORD = marshal.dumps((FORMAT, "p"))


class _Filling:
    __slots__ = ()

    def __repr__(self) -> str:
        return "FILLING"


FILLING = _Filling()
# a NUL first byte is no marshal type code: a fill marker never decodes as a record
_FILL_PREFIX = "\x00fill:"
_FILL_PREFIX_B = _FILL_PREFIX.encode()


class Tokens:
    """Unique tokens for fill markers, body versions and Vary generations.

    They must differ across every worker and node sharing a store (a fill token names the
    lock holder; a version names one body's chunks), not be unguessable: a random prefix
    drawn once, when the worker builds its cache (after the fork), and a counter. One
    ``getrandom`` per miss was measurable on the miss path (two per miss, ~1 µs each)."""

    __slots__ = ("_prefix", "_count")

    def __init__(self) -> None:
        self._prefix = secrets.token_hex(6)
        self._count = itertools.count(1)

    def next(self) -> str:
        """A short token, unique for this store (``<12 hex>.<hex counter>``)."""
        return f"{self._prefix}.{next(self._count):x}"

    def fill(self) -> str:
        """A new fill-marker lock token; its ``.encode()`` is the value stored under the URL key."""
        return _FILL_PREFIX + self.next()


def decode(raw: bytes | None) -> StoredObject | VaryIndex | _Pass | _Filling | None:
    """The record in ``raw``; None when absent or unreadable (a miss, never an error)."""
    if raw is None:
        return None
    if raw[:1] == b"\x00":
        return FILLING if raw.startswith(_FILL_PREFIX_B) else None
    try:
        t = marshal.loads(raw)
        if type(t) is not tuple or not t or t[0] != FORMAT:
            return None
        kind = t[1]
        if kind == "o":
            return StoredObject(t[2], t[3], t[4], _rebuild(t[5]), *t[6:15])
        if kind == "v":
            return VaryIndex(t[2], t[3], t[4], *t[5:6])
        if kind == "p":
            return PASS
    except (ValueError, EOFError, TypeError, KeyError, IndexError):
        return None
    return None
