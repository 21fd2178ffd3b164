"""The one interface every shared-state backend implements.

Values are opaque bytes under a ``namespace`` (who may see them: e.g. ``memo:<team>`` or
``cache:<team>:<model>``) and a ``key`` (a digest, never text). Writes are first-writer-wins
(``put_if_absent`` returns what won, so every process forwards the same form) or last-writer-wins
(``put``, for timestamps that are refreshed). Every call is batched: one round trip per request,
or per :data:`SLICE_KEYS` keys for a huge one (between slices, other requests get the event loop).
Backends bound themselves by size and age; a value may vanish at any time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

__all__ = ["SLICE_KEYS", "SharedStore", "StoreUnavailable"]

# Keys handled in one piece: the cache model of a 6 MB prompt reads and writes ~24,000 keys; in
# slices, no other request waits for more than one slice's work on the event loop.
SLICE_KEYS = 2048


class StoreUnavailable(Exception):
    """The backend cannot be reached; callers fail open (serve from their own memory, or uncompressed)."""


class SharedStore(Protocol):
    async def get_many(self, namespace: str, keys: Sequence[str]) -> list[bytes | None]:
        """The value of each key, or None where absent or expired, in the order of ``keys``."""
        ...

    async def put_if_absent(
        self, namespace: str, items: Sequence[tuple[str, bytes]], *, ttl_s: float | None = None
    ) -> list[bytes]:
        """Store each value unless its key exists; return the value that won for each key (first writer wins)."""
        ...

    async def put(
        self, namespace: str, items: Sequence[tuple[str, bytes]], *, ttl_s: float | None = None
    ) -> None:
        """Store each value, replacing what was there (last writer wins)."""
        ...

    async def aclose(self) -> None: ...
