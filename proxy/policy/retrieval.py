"""A retrieve policy's request (``retrieve: true``): whether it is offered ``tersegate_expand``,
and the originals store bound to its scope for compaction (docs/design.md, "Nothing lost for
good")."""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from proxy.apis import Part
from proxy.policy.originals import Originals

__all__ = ["ScopedOriginals", "offers"]

_RETRIEVABLE = re.compile(r"; hash=[0-9a-f]{24}\]")  # a marker whose original can be got back


def offers(
    parts: Sequence[Part], texts: Mapping[tuple[str | int, ...], str], stubbed: Collection[object] = ()
) -> bool:
    """Whether a retrieve policy's request is offered ``tersegate_expand``: once a marker with
    ``hash=`` (something to get back) is in a part of the first request with a tool output, or in a
    compaction stub. The tool's definition comes first in the prompt, so adding it to a
    conversation re-sends the whole cached prefix: it is added only where that costs next to
    nothing, the first tool output (nothing much cached yet) or a batch (which re-sends from its
    first stub anyway, and counts the rest: proxy/policy/compactor.py). A later output's marker
    waits for the next batch. Before any, the definition would only be tokens billed every turn.
    Markers and stubs are re-sent on every later turn: once offered, it stays offered."""
    return any(
        _RETRIEVABLE.search(texts.get(p.path, p.text)) for p in parts if p.turn <= 1 or p.path in stubbed
    )


@dataclass(frozen=True, slots=True)
class ScopedOriginals:
    """The originals store bound to one request's scope: compaction's :class:`Retrieval`."""

    originals: Originals
    scope: str

    async def refs(self, texts: Sequence[str]) -> list[str | None]:
        return await self.originals.refs(self.scope, texts)

    async def keep_referenced(self, items: Sequence[tuple[str, str, str]]) -> int:
        return await self.originals.keep_referenced(self.scope, items)
