"""The ``perplexity`` scorer: a causal LM's surprise at each word, LLMLingua style.

The text is read in windows of ``segment_tokens`` model tokens. Each window is
scored conditioned on what was kept of the windows before it (the model sees
the compressed prefix, as the target LLM will), and the most surprising
``keep_ratio`` of the window's units are kept as context for the next one.
Unit scores are the pooled per-token losses. Greedy, no sampling, float32.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from compressors.llmlingua2 import load_local, pool, sentence_ranges, token_units
from compressors.words import Unit

__all__ = ["Perplexity"]


@dataclass(frozen=True, slots=True)
class Perplexity:
    """Per-unit loss from a causal LM over iterative windows."""

    model: str
    device: str = "cpu"
    pooling: str = "mean"
    segment_tokens: int = 512

    def scores(
        self, text: str, units: Sequence[Unit], query: str | None, *, keep_ratio: float
    ) -> list[float]:
        del query  # the LM reads the text as given; the question-aware path is selfinfo
        if not units:
            return []
        tokenizer, network = load_local("AutoModelForCausalLM", self.model, self.device)
        encoded = token_units(tokenizer, text, units, sentence_ranges(text, units))
        ids = [token for sentence in encoded for token in sentence[0]]
        owners = [owner for sentence in encoded for owner in sentence[1]]
        max_positions = int(getattr(network.config, "max_position_embeddings", 0) or 1024)
        window = min(self.segment_tokens, max_positions // 2)
        values: dict[int, list[float]] = {}
        context: list[int] = [] if tokenizer.bos_token_id is None else [tokenizer.bos_token_id]
        start = 0
        while start < len(ids):
            end = _window_end(owners, start, window)
            losses = _losses(network, context, ids[start:end], self.device)
            for owner, loss in zip(owners[start:end], losses, strict=True):
                values.setdefault(owner, []).append(loss)
            kept = _keep_for_context(owners[start:end], losses, keep_ratio)
            context = (context + [t for t, keep in zip(ids[start:end], kept, strict=True) if keep])[
                -(max_positions - window) :
            ]
            start = end
        return pool(values, len(units), self.pooling)


def _window_end(owners: Sequence[int], start: int, window: int) -> int:
    """End of a window of at most ``window`` tokens that does not split a unit (unless it must)."""
    end = min(len(owners), start + window)
    if end == len(owners):
        return end
    cut = end
    while cut > start + 1 and owners[cut] == owners[cut - 1]:
        cut -= 1
    return cut if cut > start + 1 else end


def _losses(network: Any, context: list[int], window: list[int], device: str) -> list[float]:
    """Negative log-likelihood of each window token given the context and the window before it."""
    import torch

    inputs = torch.tensor([context + window], device=device)
    with torch.inference_mode():
        logits = network(input_ids=inputs).logits[0].float()
    log_probs = torch.log_softmax(logits, dim=-1)
    losses: list[float] = []
    for position in range(len(context), len(context) + len(window)):
        if position == 0:
            losses.append(float("inf"))  # nothing to predict the very first token from: keep it
            continue
        losses.append(-float(log_probs[position - 1, inputs[0, position]]))
    return losses


def _keep_for_context(owners: Sequence[int], losses: Sequence[float], keep_ratio: float) -> list[bool]:
    """Tokens of the window's most surprising units, about ``keep_ratio`` of the tokens."""
    by_unit: dict[int, list[float]] = {}
    for owner, loss in zip(owners, losses, strict=True):
        by_unit.setdefault(owner, []).append(loss)
    ranked = sorted(by_unit, key=lambda u: (-max(by_unit[u]), u))
    room = max(1, round(len(owners) * keep_ratio))
    chosen: set[int] = set()
    for unit in ranked:
        if room <= 0:
            break
        chosen.add(unit)
        room -= len(by_unit[unit])
    return [owner in chosen for owner in owners]
