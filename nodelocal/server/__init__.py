"""Where queries come in: UDP and TCP listeners on every local IP (sockets.py binds them).

udp.py's datagram_received is the hot path: a cache hit is answered there, synchronously, from bytes.
Everything else (a miss, TCP, unusual layouts) goes to resolve.Resolver.answer, and the listener counts
what it sent back (metrics.py: coredns_dns_* series).
"""
