"""What an entry of the local store really costs in LMDB pages (pure; no lmdb import).

Theory of operation
-------------------
``edge.store.local`` bounds its size by the sum of ``entry_footprint`` over its
entries, so that ``store.max_bytes`` means pages of the map (memory and disk)
within a small factor, and the map it opens (``map_size``) never fills. Counting
bytes of keys and values does not: a 1.5 KB value costs a whole 4 KiB leaf page
(issue 10: a cache "full" at 64 MiB of keys and values used 31,334 leaf pages,
and its 144 MiB map filled up; every write then failed).

The LMDB facts this model uses (``mdb.c`` of LMDB 0.9, which python ``lmdb``
bundles; page size ``psize`` from ``env.stat()["psize"]``, usually 4096):

- a page has a 16-byte header (``PAGEHDRSZ``); a leaf node is an 8-byte header
  (``NODESIZE``) + key + value, rounded up to an even size, plus a 2-byte slot
  pointer (``mdb_leaf_size``: ``EVEN(LEAFSIZE(key, data) + sizeof(indx_t))``);
- a node whose ``8 + key + value`` exceeds ``nodemax`` =
  ``(((psize - 16) / 2) & -2) - 2`` (2038 for 4 KiB pages; at least two nodes fit
  a page) keeps only its key and an 8-byte page number in the leaf, and its value
  on ``OVPAGES(value) = (16 - 1 + value) / psize + 1`` overflow pages of its own;
- a branch node is an 8-byte header + the key (``INDXSIZE``) plus its slot, one per
  child page;
- a page is split in two when a node does not fit, and merged with a neighbour
  only when it falls under a quarter full (``FILL_THRESHOLD`` 250 per mille). So a
  B-tree of random keys under churn (inserts, and evictions of other random keys)
  holds pages about half full on average, never less than one node a page.

``LEAF_FILL_PCT`` is that average, measured (issue 10) on the local store with
random cache-like keys, random expiries and eviction running (six times the
bound written): nodes a page over ``(psize - 16) // node`` (the most that fit)
were 45-55% for nodes of 150-1000 bytes, and pages of two 1.5 KB nodes held 1.1
to 1.3 of them. 47% makes the estimate a little high for most sizes, which is
the safe side. A page never holds less than one node, hence the ``max(1, ...)``.

Each entry is two rows: ``data`` (key -> 8-byte expiry header + value) and the
``expiry`` index (8-byte expiry + key -> its 8-byte footprint); both count, and
so do the branch pages above their leaves (one branch node per leaf page).

The worst case, which ``map_size`` must cover: leaves at the merge threshold
(25% full, i.e. about 2x the estimate), plus the pages a write transaction
copies (copy-on-write), the free list, the pages freed by the last two
transactions (LMDB reuses them only when no snapshot can see them), and
overflow runs that find no contiguous free pages. Hence ``MAP_FACTOR`` x
``max_bytes`` + ``MAP_SLACK_BYTES``. The map is address space over a sparse
file (``writemap``: the file is truncated to the map size, but only pages ever
written take disk or memory), so headroom costs nothing until used.
"""

from __future__ import annotations

PAGE_HEADER = 16  # PAGEHDRSZ
NODE_HEADER = 8  # NODESIZE
SLOT = 2  # sizeof(indx_t): the node's offset in the page's pointer array
PGNO = 8  # sizeof(pgno_t) on 64-bit builds: an overflow node's value
VALUE_HEADER = 8  # the local store's ``<d expires_at`` before every value
EXPIRY_KEY_PREFIX = 8  # the ``>Q expires_at_us`` before the key in the expiry index
EXPIRY_ROW_VALUE = 8  # the expiry index row's value: the entry's footprint (``<Q``)
LEAF_FILL_PCT = 47  # average page fill under churn (see the module docstring)
MAP_FACTOR = 4  # map_size = MAP_FACTOR * max_bytes + MAP_SLACK_BYTES
MAP_SLACK_BYTES = 64 * 1024 * 1024


def node_max(psize: int) -> int:
    """The largest leaf node kept in its page (``me_nodemax``); larger values overflow."""
    return (((psize - PAGE_HEADER) // 2) & -2) - SLOT


def leaf_node(key_len: int, value_len: int, psize: int) -> tuple[int, int]:
    """(bytes the node takes in its leaf page, overflow pages of its value)."""
    size = NODE_HEADER + key_len + value_len
    if size > node_max(psize):
        size = NODE_HEADER + key_len + PGNO
        overflow = (PAGE_HEADER - 1 + value_len) // psize + 1
    else:
        overflow = 0
    return size + (size & 1) + SLOT, overflow


def page_share(node: int, psize: int) -> int:
    """Bytes of pages one node of ``node`` bytes costs in a B-tree under churn."""
    fit = (psize - PAGE_HEADER) // node
    # pages are LEAF_FILL_PCT full on average but hold at least one node
    return psize * 100 // max(100, fit * LEAF_FILL_PCT)


def row_footprint(key_len: int, value_len: int, psize: int) -> int:
    """One row of a B-tree: its share of a leaf page, of the branch page above, overflow pages."""
    node, overflow = leaf_node(key_len, value_len, psize)
    leaf = page_share(node, psize)
    branch_node = NODE_HEADER + key_len
    branch = leaf * page_share(branch_node + (branch_node & 1) + SLOT, psize) // psize
    return leaf + branch + overflow * psize


def entry_footprint(key_len: int, value_len: int, psize: int) -> int:
    """Estimated bytes of the map one local-store entry occupies (its data row and expiry row).

    ``key_len`` is the stored key (with the store's prefix), ``value_len`` the caller's
    value (without the expiry header).
    """
    return (row_footprint(key_len, VALUE_HEADER + value_len, psize)
            + row_footprint(EXPIRY_KEY_PREFIX + key_len, EXPIRY_ROW_VALUE, psize))


def map_size(max_bytes: int) -> int:
    """The LMDB map for a store bounded to ``max_bytes`` of footprints (see the module docstring)."""
    return MAP_FACTOR * max_bytes + MAP_SLACK_BYTES
