"""The ``llmlingua2`` scorer: a token-classification model rates each word "keep".

As LLMLingua-2 does: text is cut into chunks of at most ``chunk_tokens`` model
tokens at sentence ends, chunks run in batches, the probability of the keep
label (label 1) is pooled (mean or max) over each unit's subword tokens. Which
units survive is decided by the caller against the target model's budget.
The model loads once per process, from local files only.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from compressors.base import CompressorError
from compressors.models import load_once
from compressors.words import Unit

__all__ = ["LLMLingua2", "load_local"]


def load_local(kind: str, model: str, device: str) -> tuple[Any, Any]:
    """(tokenizer, model) from local files; :class:`CompressorError` naming ``model`` if missing."""

    def loader() -> tuple[Any, Any]:
        import transformers

        auto = getattr(transformers, kind)
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(model, local_files_only=True)
            network = auto.from_pretrained(model, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise CompressorError(
                f"model {model!r} is not available locally (nothing is downloaded here): {exc}"
            ) from exc
        if not tokenizer.is_fast:
            raise CompressorError(f"model {model!r}: a fast tokenizer is needed for word offsets")
        return tokenizer, network.to(device).eval()

    return load_once((kind, model, device), loader)


def sentence_ranges(text: str, units: Sequence[Unit]) -> list[tuple[int, int]]:
    """Unit index ranges [a, b) of sentences: cut after . ! ? and at newlines."""
    ranges: list[tuple[int, int]] = []
    start = 0
    for index, unit in enumerate(units):
        following = units[index + 1].start if index + 1 < len(units) else len(text)
        if text[unit.end - 1] in ".!?" or "\n" in text[unit.end : following]:
            ranges.append((start, index + 1))
            start = index + 1
    if start < len(units):
        ranges.append((start, len(units)))
    return ranges


def token_units(
    tokenizer: Any, text: str, units: Sequence[Unit], pieces: list[tuple[int, int]]
) -> list[list[Any]]:
    """For each piece (a unit range), its model token ids and the unit index of each token."""
    starts = [u.start for u in units]
    texts = [text[units[a].start : units[b - 1].end] for a, b in pieces]
    encoded = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    out: list[list[Any]] = []
    for (a, _), ids, offsets in zip(pieces, encoded["input_ids"], encoded["offset_mapping"], strict=True):
        base = units[a].start
        owners = [max(a, bisect.bisect_right(starts, base + max(s, e - 1)) - 1) for s, e in offsets]
        out.append([ids, owners])
    return out


def pack(encoded: list[list[Any]], limit: int) -> list[tuple[list[int], list[int]]]:
    """Pack sentences into chunks of at most ``limit`` tokens; a longer sentence is cut at a unit edge."""
    chunks: list[tuple[list[int], list[int]]] = []
    ids: list[int] = []
    owners: list[int] = []
    for sentence_ids, sentence_owners in encoded:
        if ids and len(ids) + len(sentence_ids) > limit:
            chunks.append((ids, owners))
            ids, owners = [], []
        for token, owner in zip(sentence_ids, sentence_owners, strict=True):
            if len(ids) >= limit:
                # Move the partial unit at the end to the next chunk, so no unit straddles two.
                cut = len(owners)
                while cut > 1 and owners[cut - 1] == owner:
                    cut -= 1
                chunks.append((ids[:cut], owners[:cut]))
                ids, owners = ids[cut:], owners[cut:]
            ids.append(token)
            owners.append(owner)
    if ids:
        chunks.append((ids, owners))
    return chunks


def pool(values: dict[int, list[float]], count: int, pooling: str) -> list[float]:
    """One score per unit from its tokens' scores (0 for a unit without tokens)."""
    reduce = max if pooling == "max" else (lambda v: sum(v) / len(v))
    return [reduce(values[i]) if values.get(i) else 0.0 for i in range(count)]


@dataclass(frozen=True, slots=True)
class LLMLingua2:
    """Keep-probabilities from a token-classification model, pooled to units."""

    model: str
    device: str = "cpu"
    pooling: str = "mean"
    chunk_tokens: int = 510
    batch_size: int = 8

    def scores(
        self, text: str, units: Sequence[Unit], query: str | None, *, keep_ratio: float
    ) -> list[float]:
        del query, keep_ratio  # the model scores words on their own, as LLMLingua-2 does
        if not units:
            return []
        import torch

        tokenizer, network = load_local("AutoModelForTokenClassification", self.model, self.device)
        chunks = pack(token_units(tokenizer, text, units, sentence_ranges(text, units)), self.chunk_tokens)
        # Longest first, so each batch pads little; results go back by unit index.
        order = sorted(range(len(chunks)), key=lambda i: (-len(chunks[i][0]), i))
        values: dict[int, list[float]] = {}
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        for at in range(0, len(order), self.batch_size):
            batch = [chunks[i] for i in order[at : at + self.batch_size]]
            inputs = [_with_specials(tokenizer, ids) for ids, _ in batch]
            width = max(len(row) for row in inputs)
            input_ids = torch.tensor([row + [pad] * (width - len(row)) for row in inputs])
            mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in inputs])
            with torch.inference_mode():
                logits = network(
                    input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device)
                ).logits
            keep = torch.softmax(logits.float(), dim=-1)[..., 1].cpu().tolist()
            for row, (ids, owners), probs in zip(inputs, batch, keep, strict=True):
                offset = 1 if len(row) > len(ids) else 0
                for position, owner in enumerate(owners):
                    values.setdefault(owner, []).append(probs[offset + position])
        return pool(values, len(units), self.pooling)


def _with_specials(tokenizer: Any, ids: list[int]) -> list[int]:
    """``[CLS] ids [SEP]`` (``<s> ids </s>`` for XLM-R), as the classifier was trained on."""
    first = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    last = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    if first is None or last is None:
        return list(ids)
    return [first, *ids, last]
