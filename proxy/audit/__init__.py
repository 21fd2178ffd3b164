"""The cost audit: the hash-chained sink, pricing, the SQLite report index and the report's sums."""
