"""The miss path, in the order a query takes it: resolver.py (the pipeline: checks, cache, coalescing of
identical queries in flight) -> router.py (longest zone suffix picks the chain) -> forward.py (groups
in fallthrough order, servers by policy) -> upstream.py (UDP from a fresh port, pooled pipelined TCP,
every reply validated) -> back into cache/. loop.py finds upstreams that send our queries back to us;
probe.py is the independent readiness probe (c-ares). metrics.py: coredns_forward_*, nodelocal_upstream_*.
"""
