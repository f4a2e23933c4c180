"""TTL-aware LRU answer cache and the policy that decides what goes in it."""
