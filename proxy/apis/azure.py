"""Azure OpenAI: the OpenAI dialects under Azure's paths, keys and pricing.

Requests arrive as ``/openai/deployments/{deployment}/chat/completions``, ``/openai/responses``
or ``/openai/v1/...``; :func:`azure_route` maps them to their OpenAI twin (``/v1/chat/completions``),
so policies and parts treat them alike, and the deployment named in the path prices the request
(the upstream's ``deployments`` map). The body is the OpenAI dialect's; the key goes in ``api-key``;
an Azure upstream's ``base_url`` is the resource root (``/openai/...`` is sent).
"""

from __future__ import annotations

from proxy.apis.chat import ChatDialect
from proxy.apis.completions import CompletionsDialect
from proxy.apis.openai import OpenAIDialect
from proxy.apis.responses import ResponsesDialect

__all__ = [
    "AZURE",
    "AZURE_CHAT",
    "AZURE_COMPLETIONS",
    "AZURE_PREFIX",
    "AZURE_RESPONSES",
    "AzureDialect",
    "azure_route",
]

AZURE_PREFIX = "/openai/"
_DEPLOYMENTS = "/openai/deployments/"


class AzureDialect(OpenAIDialect):
    """What Azure changes in an OpenAI dialect: the key header, the upstream path, pricing.
    Combined with a body dialect by inheritance (``AzureChat(AzureDialect, ChatDialect)``)."""

    api = "azure"
    by_deployment = True

    def key_header(self, key: bytes) -> tuple[bytes, bytes]:
        return (b"api-key", key)

    def upstream_path(self, raw_path: bytes) -> bytes:
        """The resource root gets Azure's paths as sent, and OpenAI's under Azure's v1 API."""
        if raw_path.startswith(AZURE_PREFIX.encode()):
            return raw_path
        with_v1 = raw_path if raw_path.startswith(b"/v1/") or raw_path == b"/v1" else b"/v1" + raw_path
        return b"/openai" + with_v1

    def accepts_upstream(self, upstream_api: str) -> bool:
        return upstream_api == self.api  # Azure's paths mean nothing to another API


class AzureChat(AzureDialect, ChatDialect):
    pass


class AzureResponses(AzureDialect, ResponsesDialect):
    pass


class AzureCompletions(AzureDialect, CompletionsDialect):
    pass


AZURE = AzureDialect()
AZURE_CHAT = AzureChat()
AZURE_RESPONSES = AzureResponses()
AZURE_COMPLETIONS = AzureCompletions()


def azure_route(path: str) -> tuple[str, str | None]:
    """``(OpenAI twin route, deployment)`` of an Azure path (it starts with ``/openai/``)."""
    if path.startswith(_DEPLOYMENTS):
        deployment, sep, rest = path[len(_DEPLOYMENTS) :].partition("/")
        if deployment and sep:
            return "/v1/" + rest, deployment
    elif path.startswith("/openai/v1/"):
        return path[len("/openai") :], None
    return "/v1/" + path[len(AZURE_PREFIX) :], None  # /openai/responses -> /v1/responses
