"""Byte-level DNS message handling."""
