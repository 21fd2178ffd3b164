"""Request paths: the dialect a request speaks, its normalised route, and the path sent upstream.

Three APIs arrive on one port:

* OpenAI: ``/v1/chat/completions`` or ``/chat/completions`` (the ``/v1`` prefix is optional);
  the route is normalised to ``/v1/...``.
* Anthropic Messages: ``/v1/messages`` and everything under it, and any other path sent with an
  ``anthropic-version`` header (``/v1/models`` from an Anthropic SDK).
* Azure OpenAI: ``/openai/...`` (:mod:`proxy.apis.azure`); the route is the OpenAI twin.

The upstream path depends on the upstream's ``api`` (:func:`upstream_path`). Routing is a pure
function of the (already normalised) path: the upstream URL always comes from ``config.yaml``.
"""

from __future__ import annotations

from dataclasses import dataclass

from proxy.apis.azure import AZURE, AZURE_CHAT, AZURE_COMPLETIONS, AZURE_PREFIX, AZURE_RESPONSES, azure_route
from proxy.apis.base import Dialect
from proxy.apis.chat import CHAT
from proxy.apis.completions import COMPLETIONS
from proxy.apis.messages import ANTHROPIC, MESSAGES
from proxy.apis.openai import OPENAI
from proxy.apis.responses import RESPONSES

__all__ = ["Route", "dialect_for", "dialect_of_api", "route_of", "split_path", "upstream_path"]

# Per API: its dialects by route, and the one of its other routes.
_BY_API: dict[str, tuple[dict[str, Dialect], Dialect]] = {
    "openai": ({d.route or "": d for d in (CHAT, RESPONSES, COMPLETIONS)}, OPENAI),
    "anthropic": ({d.route or "": d for d in (MESSAGES,)}, ANTHROPIC),
    "azure": ({d.route or "": d for d in (AZURE_CHAT, AZURE_RESPONSES, AZURE_COMPLETIONS)}, AZURE),
}


def dialect_for(route: str, api: str = "openai") -> Dialect:
    """The dialect of a normalised ``route`` spoken to ``api`` (openai | anthropic | azure)."""
    by_route, other = _BY_API.get(api, _BY_API["openai"])
    return by_route.get(route, other)


def dialect_of_api(api: str) -> Dialect:
    """An API's dialect of routes without a prompt: its key header, upstream paths, error shape."""
    return _BY_API.get(api, _BY_API["openai"])[1]


@dataclass(frozen=True, slots=True)
class Route:
    """What a request path means: ``route`` for policies and metrics, the ``dialect`` it speaks."""

    route: str  # "/v1/chat/completions", "/v1/messages", ...
    dialect: Dialect
    deployment: str | None = None  # Azure: the deployment named in the path

    @property
    def api(self) -> str:
        return self.dialect.api

    @property
    def compressible(self) -> bool:
        """Whether a POST to it carries prompts the rewrite hook may compress."""
        return self.dialect.compressible


def split_path(path: str) -> tuple[str, str]:
    """``(route, upstream_path)``: ``/v1/models`` and ``/models`` both give ``("/v1/models", "/models")``."""
    if path == "/v1" or path.startswith("/v1/"):
        rest = path[3:] or "/"
        return path, rest
    return "/v1" + path, path


def route_of(path: str, *, anthropic_version: bool = False) -> Route:
    """The :class:`Route` of a request path (``anthropic_version``: the header was sent)."""
    if path.startswith(AZURE_PREFIX):
        route, deployment = azure_route(path)
        return Route(route, dialect_for(route, "azure"), deployment)
    route = split_path(path)[0]
    if route == MESSAGES.route or route.startswith("/v1/messages/") or anthropic_version:
        return Route(route, dialect_for(route, "anthropic"))
    return Route(route, dialect_for(route, "openai"))


def upstream_path(raw_path: bytes, upstream_api: str) -> bytes:
    """The path (without query) to append to an upstream's ``base_url``."""
    return dialect_of_api(upstream_api).upstream_path(raw_path)
