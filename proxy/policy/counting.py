"""A request's token counts, as the policy engine takes them: each text through the token memo.

Rules match on a part's tokens and the audit records them, so every request is counted, also
one no rule looks at. The token memo (:mod:`proxy.store.tokens`) keeps what the audit's cache
model reuses: each text of a request is tokenized once. Small bodies are counted on the event
loop; anything larger goes to a thread (tokenizing holds the GIL).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from compressors.tokenizer import Tokenizer, tokenizer_for
from proxy.apis import Block, Dialect, Part, dialect_for
from proxy.exchange import Exchange, Rewrite
from proxy.store.tokens import TokenMemo

__all__ = ["INLINE_COUNT_CHARS", "TokenCounter", "walk"]

INLINE_COUNT_CHARS = 4096  # ~1k tokens: cheaper to count than to hop to a thread


def walk(exchange: Exchange, body: dict[str, Any]) -> tuple[Dialect, tuple[Block, ...], list[Part]]:
    """The route's dialect, the body's blocks (walked once: the audit's cache model reuses them) and parts."""
    dialect = dialect_for(exchange.route, exchange.api)
    blocks = dialect.walk(body)
    exchange.blocks = blocks
    return dialect, blocks, dialect.parts(body, blocks)


class TokenCounter:
    """Counts through ``tokens`` (the memo the audit reads too), one tokenizer per model."""

    def __init__(self, tokens: TokenMemo) -> None:
        self.tokens = tokens
        self._tokenizers: dict[str | None, Tokenizer] = {}

    async def tokenizer(self, model: str | None) -> Tokenizer:
        """The model's tokenizer; the first use of an encoding loads it in a thread (a second of
        pure-Python parsing, behind a lock the warm-up may hold, must not stop the event loop)."""
        tokenizer = self._tokenizers.get(model)
        if tokenizer is None:
            tokenizer = await asyncio.to_thread(tokenizer_for, model)
            if len(self._tokenizers) < 256:  # model names come from clients
                self._tokenizers[model] = tokenizer
        return tokenizer

    def parts(self, tokenizer: Tokenizer, parts: Sequence[Part], team: str) -> list[int]:
        # Through the token memo, per team: the audit's cache model reuses the ids it keeps.
        return self.tokens.counts(team, tokenizer, [part.text for part in parts])

    async def other(
        self,
        dialect: Dialect,
        body: dict[str, Any],
        blocks: Sequence[Block],
        tokenizer: Tokenizer,
        team: str,
    ) -> int | None:
        """Where the counts are estimates (Anthropic): tokens of what is sent besides the parts
        (tools, tool inputs), so the upstream's exact count can calibrate them."""
        if not dialect.estimated_tokens:
            return None
        texts = dialect.other_texts(body, blocks)
        if sum(len(t) for t in texts) < INLINE_COUNT_CHARS:
            return sum(self.tokens.counts(team, tokenizer, texts))
        return sum(await asyncio.to_thread(self.tokens.counts, team, tokenizer, texts))

    async def measured(self, rewrite: Rewrite, exchange: Exchange, body: dict[str, Any]) -> Rewrite:
        """Count the prompt text of a request no rule looks at, so the audit still has
        its tokens (before == after). Small bodies are counted inline, large ones off the loop."""
        model = body.get("model") if isinstance(body.get("model"), str) else exchange.model
        dialect, blocks, parts = walk(exchange, body)
        tokenizer = await self.tokenizer(model)
        team = exchange.team
        if sum(len(p.text) for p in parts) < INLINE_COUNT_CHARS:
            counts = self.parts(tokenizer, parts, team)
        else:
            counts = await asyncio.to_thread(self.parts, tokenizer, parts, team)
        rewrite.tokens_before = rewrite.tokens_after = sum(counts)
        rewrite.tokens_other = await self.other(dialect, body, blocks, tokenizer, team)
        return rewrite
