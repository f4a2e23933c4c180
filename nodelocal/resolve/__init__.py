"""Miss path: zone routing, in-flight coalescing, upstream transports and failover."""
