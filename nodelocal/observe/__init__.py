"""Counters, Prometheus exposition and the health/readiness endpoints."""
