"""Client-facing UDP and TCP listeners."""
