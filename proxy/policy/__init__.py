"""The policy engine: policy model and loading, message parts, query planning, the compress-once memo."""
