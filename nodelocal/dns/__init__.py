"""DNS on the wire, below every other package: wire.py scans and builds messages byte by byte (the hot
path's key, the cache's templates, error replies, TCP framing, rcode and flag values, the EDNS size we
advertise); names.py holds the one zone-name rule and the text/label/wire conversions of names."""
