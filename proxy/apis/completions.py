"""OpenAI completions (``/v1/completions``): the ``prompt``, a string or a list of strings, is the
rewritable text (token-id prompts are not text). No tools."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from proxy.apis.base import Block, Part
from proxy.apis.items import Item, parts_of
from proxy.apis.openai import OpenAIDialect, tools_block

__all__ = ["COMPLETIONS", "CompletionsDialect"]


class CompletionsDialect(OpenAIDialect):
    route: str | None = "/v1/completions"
    include_usage = True

    def walk(self, body: Mapping[str, Any]) -> tuple[Block, ...]:
        out = tools_block(body)
        prompt = body.get("prompt")
        if isinstance(prompt, str):
            out.append(Block(("prompt",), "prompt", "user", 0, ((("prompt",), prompt),), node=prompt))
        elif isinstance(prompt, list):
            text = all(isinstance(p, str) for p in prompt)  # else token ids: cached, not rewritable
            for i, p in enumerate(prompt):
                if isinstance(p, str):
                    path = ("prompt", i)
                    out.append(Block(path, "prompt", "user", i, ((path, p),) if text else (), node=p))
        return tuple(out)

    def parts(self, body: Mapping[str, Any], blocks: Sequence[Block] | None = None) -> list[Part]:
        listed = self.walk(body) if blocks is None else blocks
        return parts_of([Item(b.message, "user", b.path, list(b.texts)) for b in listed if b.texts])

    def cache_text(self, block: Block) -> str | None:
        return block.node if block.kind == "prompt" else super().cache_text(block)


COMPLETIONS = CompletionsDialect()
