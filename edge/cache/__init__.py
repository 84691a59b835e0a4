"""edge's shared HTTP cache (issue 10).

- ``policy``: pure RFC 9111 decisions (what to store, what to serve, how to revalidate);
- ``keys``: cache keys and the store keys derived from them (pure);
- ``records``: the compact encoding of stored objects, URL records and ban rules (pure);
- ``purge``: ban rules for prefix and tag purges, and the purge operations on a Store;
- ``cache``: lookup, tee/commit, revalidation, coalescing and stale serving over a Store.
"""
