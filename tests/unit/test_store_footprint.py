"""The page model of the local store's entries (edge.store.footprint, issue 10).

Expectations are worked out by hand from LMDB's layout (mdb.c 0.9): 16-byte page
header, 8-byte node header, 2-byte slot, nodes rounded to even sizes, values over
``nodemax`` on ``(15 + len) // psize + 1`` overflow pages, pages about 47% full
under churn and never holding less than one node.
"""

import pytest

from edge.store.footprint import (
    MAP_FACTOR,
    MAP_SLACK_BYTES,
    entry_footprint,
    leaf_node,
    map_size,
    node_max,
    page_share,
    row_footprint,
)


@pytest.mark.parametrize(("psize", "expected"), [
    (4096, 2038),    # ((4080 / 2) & -2) - 2: two nodes of 2038 + 2 slots fill 4080 bytes
    (8192, 4086),
    (16384, 8182),
    (65536, 32758),
])
def test_node_max_is_lmdbs_nodemax(psize, expected):
    assert node_max(psize) == expected


@pytest.mark.parametrize(("key_len", "value_len", "expected"), [
    (36, 100, (8 + 36 + 100 + 2, 0)),
    (36, 101, (8 + 36 + 101 + 1 + 2, 0)),           # rounded up to an even size
    (36, 1994, (2040, 0)),                          # 8 + 36 + 1994 = 2038 = nodemax: stays in the leaf
    (36, 1995, (8 + 36 + 8 + 2, 1)),                # one byte more: key + page number, value overflows
    (36, 4080, (54, 1)),                            # 16-byte header + 4080 fill one overflow page
    (36, 4081, (54, 2)),
    (36, 512 * 1024, (54, 129)),                    # a cache body chunk
    (0, 0, (8 + 2, 0)),
])
def test_leaf_node_size_and_overflow_pages(key_len, value_len, expected):
    assert leaf_node(key_len, value_len, 4096) == expected


@pytest.mark.parametrize(("node", "expected"), [
    (154, 4096 * 100 // (26 * 47)),    # 26 fit a page, 12.2 on average: 335 bytes each
    (62, 4096 * 100 // (65 * 47)),     # an expiry index row: 65 fit, 30.5 on average
    (1050, 4096 * 100 // (3 * 47)),    # 3 fit, 1.41 on average
    (1554, 4096),                      # 2 fit but 0.94 on average: never less than one a page
    (2040, 4096),                      # the largest node: 2 fit
])
def test_page_share_is_a_page_over_the_average_node_count(node, expected):
    assert page_share(node, 4096) == expected


def test_row_footprint_adds_the_branch_share_and_overflow_pages():
    leaf = page_share(54, 4096)
    branch = leaf * page_share(8 + 36 + 2, 4096) // 4096
    assert row_footprint(36, 5008, 4096) == leaf + branch + 2 * 4096


@pytest.mark.parametrize(("key_len", "value_len", "low", "high"), [
    # (measured on LMDB under churn, pages per entry incl. branch and index pages: see the
    # module docstring; the estimate stays within about 10% of it, on the high side)
    (36, 100, 440, 520),       # measured 0.112 pages = 459 bytes
    (36, 1500, 3900, 4400),    # measured 0.96 pages: a 1.5 KB value costs a whole page
    (36, 2000, 4096, 4400),    # overflow: one page of its own, 1.06 measured
    (36, 5000, 8192, 8500),    # two overflow pages, 2.06 measured
])
def test_entry_footprint_is_near_the_measured_pages(key_len, value_len, low, high):
    assert low <= entry_footprint(key_len, value_len, 4096) <= high


@pytest.mark.parametrize("key_len", [1, 36, 200])
def test_entry_footprint_never_counts_less_than_the_bytes_and_grows_with_the_value(key_len):
    previous = 0
    for value_len in range(0, 20000, 37):
        fp = entry_footprint(key_len, value_len, 4096)
        assert fp >= key_len + value_len
        assert fp >= previous
        previous = fp


def test_map_size_covers_the_worst_fill_with_headroom():
    assert (MAP_FACTOR, MAP_SLACK_BYTES) == (4, 64 * 1024 * 1024)
    assert map_size(64 * 1024 * 1024) == 320 * 1024 * 1024
    assert map_size(1) == 4 + 64 * 1024 * 1024
