"""Who is calling: the team and key id of a request, and the Authorization the upstream gets.

``auth: keys``: the client's proxy key (``Authorization: Bearer``, ``api-key``
or ``x-api-key``, as the OpenAI, Azure and Anthropic SDKs send it) is hashed with
SHA-256 and looked up in the config; the upstream receives the key from the
upstream's ``api_key_env`` instead, in the header its API reads (``Authorization:
Bearer`` for OpenAI, ``x-api-key`` for Anthropic, ``api-key`` for Azure).
``auth: passthrough``: the client's own credentials go upstream unchanged; the team
comes from ``X-Tersegate-Team`` or ``default_team``.

Keys are never stored, logged or echoed: only their SHA-256 and a 12-hex key id.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

from proxy.apis import Dialect, dialect_of_api
from proxy.config.model import Config
from proxy.errors import forbidden, unauthorized

__all__ = ["KEY_HEADERS", "TEAM_HEADER", "Authenticator", "Credentials", "Identity", "key_id_of"]

# Request headers that carry a client key.
KEY_HEADERS = frozenset({b"authorization", b"api-key", b"x-api-key"})
TEAM_HEADER = b"x-tersegate-team"


def key_id_of(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:12]


@dataclass(slots=True)
class Credentials:
    """The key-bearing headers of one request, collected during the header pass."""

    authorization: bytes | None = None
    api_key: bytes | None = None  # api-key or x-api-key
    team: bytes | None = None

    def key(self) -> str | None:
        if self.authorization is not None:
            scheme, _, token = self.authorization.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            return None
        if self.api_key is not None and self.api_key.strip():
            return self.api_key.decode("latin-1").strip()
        return None


@dataclass(frozen=True, slots=True)
class Identity:
    team: str
    key_id: str | None
    # (name, value) headers carrying credentials to the upstream.
    upstream_auth: tuple[tuple[bytes, bytes], ...]


def _upstream_key(key: str | None, api: str) -> tuple[tuple[bytes, bytes], ...]:
    # A key with line breaks would inject headers; it is not used (config check reports unset keys).
    if not key or any(c in key for c in "\r\n\0"):
        return ()
    return (dialect_of_api(api).key_header(key.strip().encode("latin-1", "replace")),)


class Authenticator:
    """Built once per config (and on reload); ``identify`` is called per request."""

    def __init__(self, config: Config) -> None:
        self._config = config
        self._keys_mode = config.auth == "keys"
        # Upstream keys are read here, at load/reload, not per request.
        self._upstream_auth: dict[str, tuple[tuple[bytes, bytes], ...]] = {
            name: _upstream_key(os.environ.get(up.api_key_env) if up.api_key_env else None, up.api)
            for name, up in config.upstreams.items()
        }

    @property
    def strips_client_keys(self) -> bool:
        """In keys mode the client's key headers must not reach the upstream."""
        return self._keys_mode

    def identify(self, creds: Credentials, dialect: Dialect) -> Identity:
        """Raise :class:`ProxyError` (401 bad key, 403 unknown team) when the request may not pass;
        ``dialect`` is the route's."""
        return self._by_key(creds, dialect) if self._keys_mode else self._passthrough(creds)

    def _by_key(self, creds: Credentials, dialect: Dialect) -> Identity:
        key = creds.key()
        if key is None:
            raise unauthorized(f"Missing API key: send your tersegate key as {dialect.key_hint}.")
        digest = hashlib.sha256(key.encode()).hexdigest()
        team = self._config.team_for_key_hash(digest)
        if team is None:
            raise unauthorized(f"Incorrect API key provided (key id {digest[:12]}).")
        upstream = self._config.upstream_for(team, dialect.api)
        return Identity(team=team, key_id=digest[:12], upstream_auth=self._upstream_auth[upstream.name])

    def _passthrough(self, creds: Credentials) -> Identity:
        team = self._config.default_team
        if creds.team is not None:
            team = creds.team.decode("latin-1").strip()
            if team not in self._config.teams:
                shown = team[:64]
                raise forbidden(
                    f"Unknown team {shown!r} in the X-Tersegate-Team header; "
                    "the proxy's config.yaml lists the teams.",
                    code="unknown_team",
                )
        key = creds.key()
        return Identity(team=team, key_id=key_id_of(key) if key else None, upstream_auth=())
