"""Route labels for metrics: known routes as themselves, others folded (ids in paths would give
metrics unbounded cardinality). What a path means (its route and dialect) is :mod:`proxy.apis`'s.
"""

from __future__ import annotations

from proxy.exchange import COMPRESSIBLE_ROUTES

__all__ = ["COMPRESSIBLE", "KNOWN", "metric_route"]

# Endpoints whose request bodies carry prompts the rewrite hook may compress.
COMPRESSIBLE = frozenset(COMPRESSIBLE_ROUTES)

# Routes reported as themselves in metrics; anything else is folded (ids in paths
# would give metrics unbounded cardinality).
KNOWN = COMPRESSIBLE | frozenset(
    {
        "/v1/embeddings",
        "/v1/models",
        "/v1/moderations",
        "/v1/images/generations",
        "/v1/audio/speech",
        "/v1/audio/transcriptions",
        "/v1/audio/translations",
        "/v1/files",
        "/v1/batches",
        "/v1/uploads",
        "/v1/fine_tuning/jobs",
        "/v1/vector_stores",
        "/v1/assistants",
        "/v1/threads",
        "/v1/messages/count_tokens",
        "/v1/messages/batches",
    }
)


def metric_route(route: str) -> str:
    """A bounded label: known routes as themselves, others as ``/v1/<first segment>/*``."""
    if route in KNOWN:
        return route
    parts = route.split("/", 3)  # "", "v1", first, rest
    if len(parts) >= 3 and parts[2]:
        head = "/v1/" + parts[2]
        if head in KNOWN:
            return head + "/*" if len(parts) == 4 else head
    return "other"
