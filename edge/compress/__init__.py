"""Response compression: negotiation (``negotiate``, pure), streaming encoders (``codecs``)
and the request-path glue (``compressor.Compressor.apply``). docs/cache.md, "Compression",
says how it works with the cache and why edge encodes on the fly."""
