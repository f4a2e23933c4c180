"""The answer cache: store.py (one index, LRU partitions per zone and kind, a byte budget; Entry renders a
stored answer for a client) and policy.py (what may be cached and for how long: TTL clamps, RFC 2308
negative caching). metrics.py exports coredns_cache_* from the partitions' own counters."""
