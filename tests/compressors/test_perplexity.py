"""The perplexity scorer end to end with a tiny random GPT-2 built by the fixture."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

from compressors.base import CompressorError, Target
from compressors.tokens import Tokens

_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def test_tiny_gpt2_honours_target_and_is_deterministic(tiny_gpt2: Path, gsm8k_prompt: str) -> None:
    options = {"scorer": "perplexity", "model": str(tiny_gpt2), "segment_tokens": 256}
    first = Tokens(options).compress(gsm8k_prompt, target=Target(rate=0.5), model="gpt-4o")
    second = Tokens(options).compress(gsm8k_prompt, target=Target(rate=0.5), model="gpt-4o")
    assert first.text == second.text
    assert first.target_met
    assert abs(first.tokens_after - first.target_tokens) <= 0.05 * first.target_tokens
    # Numbers are units of their own: none is cut into a new number.
    assert not Counter(_NUMBER.findall(first.text)) - Counter(_NUMBER.findall(gsm8k_prompt))
    assert first.text.count("\n") == gsm8k_prompt.count("\n")


def test_questions_survive_with_query(tiny_gpt2: Path, nq_rows: list[dict[str, object]]) -> None:
    row = nq_rows[11]
    ctxs = row["ctxs"]
    assert isinstance(ctxs, list)
    question = str(row["question"])
    text = f"Passage: {ctxs[0]['text']}\nQuestion: {question}"
    out = Tokens({"scorer": "perplexity", "model": str(tiny_gpt2)}).compress(
        text, target=Target(rate=0.6), query=question
    )
    assert out.text.endswith(f"Question: {question}")


def test_missing_model_names_the_model() -> None:
    compressor = Tokens({"scorer": "perplexity", "model": "/nowhere/tiny-missing-gpt"})
    with pytest.raises(CompressorError, match="tiny-missing-gpt"):
        compressor.compress("a few words to compress here", target=Target(rate=0.5))
