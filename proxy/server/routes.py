"""Request paths: which API a request speaks, its normalised route, and the path sent upstream.

Three APIs arrive on one port:

* OpenAI: ``/v1/chat/completions`` or ``/chat/completions`` (the ``/v1`` prefix is optional);
  the route is normalised to ``/v1/...``.
* Anthropic Messages: ``/v1/messages`` and everything under it, and any other path sent with an
  ``anthropic-version`` header (``/v1/models`` from an Anthropic SDK).
* Azure OpenAI: ``/openai/deployments/{deployment}/chat/completions``, ``/openai/responses`` and
  ``/openai/v1/...``;
  the route is the OpenAI twin (``/v1/chat/completions``), so policies and parts treat it alike.

The upstream path depends on the upstream's ``api``: an OpenAI ``base_url`` already ends in
``/v1`` (the path after the prefix is sent), an Anthropic one is the API root (``/v1/...`` is
sent), an Azure one is the resource root (``/openai/...`` is sent). Routing is a pure function
of the (already normalised) path: the upstream URL always comes from ``config.yaml``.
"""

from __future__ import annotations

from dataclasses import dataclass

from proxy.exchange import COMPRESSIBLE_ROUTES

__all__ = ["COMPRESSIBLE", "KNOWN", "Route", "metric_route", "route_of", "split_path", "upstream_path"]

OPENAI, ANTHROPIC, AZURE = "openai", "anthropic", "azure"

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

_AZURE_PREFIX = "/openai/"
_DEPLOYMENTS = "/openai/deployments/"


@dataclass(frozen=True, slots=True)
class Route:
    """What a request path means: ``route`` for policies and metrics, ``api`` it speaks."""

    route: str  # "/v1/chat/completions", "/v1/messages", ...
    api: str  # openai | anthropic | azure
    deployment: str | None = None  # Azure: the deployment named in the path

    @property
    def compressible(self) -> bool:
        """Whether a POST to it carries prompts the rewrite hook may compress."""
        return self.route in COMPRESSIBLE and (self.route == "/v1/messages") == (self.api == ANTHROPIC)


def split_path(path: str) -> tuple[str, str]:
    """``(route, upstream_path)``: ``/v1/models`` and ``/models`` both give ``("/v1/models", "/models")``."""
    if path == "/v1" or path.startswith("/v1/"):
        rest = path[3:] or "/"
        return path, rest
    return "/v1" + path, path


def route_of(path: str, *, anthropic_version: bool = False) -> Route:
    """The :class:`Route` of a request path (``anthropic_version``: the header was sent)."""
    if path.startswith(_AZURE_PREFIX):
        return _azure_route(path)
    route = split_path(path)[0]
    if route == "/v1/messages" or route.startswith("/v1/messages/") or anthropic_version:
        return Route(route, ANTHROPIC)
    return Route(route, OPENAI)


def _azure_route(path: str) -> Route:
    if path.startswith(_DEPLOYMENTS):
        deployment, sep, rest = path[len(_DEPLOYMENTS) :].partition("/")
        if deployment and sep:
            return Route("/v1/" + rest, AZURE, deployment)
    elif path.startswith("/openai/v1/"):
        return Route(path[len("/openai") :], AZURE)
    return Route("/v1/" + path[len(_AZURE_PREFIX) :], AZURE)  # /openai/responses -> /v1/responses


def upstream_path(raw_path: bytes, upstream_api: str) -> bytes:
    """The path (without query) to append to an upstream's ``base_url``."""
    azure = raw_path.startswith(b"/openai/")
    if upstream_api == AZURE:
        return raw_path if azure else b"/openai" + _with_v1(raw_path)  # Azure's v1 API
    if upstream_api == ANTHROPIC:
        return _with_v1(raw_path)
    if raw_path.startswith(b"/v1/") or raw_path == b"/v1":
        return raw_path[3:] or b"/"
    return raw_path


def _with_v1(raw_path: bytes) -> bytes:
    return raw_path if raw_path.startswith(b"/v1/") or raw_path == b"/v1" else b"/v1" + raw_path


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
