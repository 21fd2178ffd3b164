"""The perplexity scorer end to end with a tiny random GPT-2 built by the fixture."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest
from samples import few_shot_prompt, passages

import evaldata
from compressors.base import CompressorError, Target
from compressors.tokens import Tokens

_NUMBER = re.compile(r"\d+(?:\.\d+)?")


@pytest.fixture(params=["built", pytest.param("gsm8k", marks=pytest.mark.evaldata(evaldata.GSM8K_PROMPT))])
def cot_prompt(request: pytest.FixtureRequest) -> str:
    """An 8-shot chain-of-thought prompt: made here, or GSM8K's ``prompt_hardest.txt``."""
    return few_shot_prompt() if request.param == "built" else evaldata.text(evaldata.GSM8K_PROMPT)


def test_tiny_gpt2_honours_target_and_is_deterministic(tiny_gpt2: Path, cot_prompt: str) -> None:
    options = {"scorer": "perplexity", "model": str(tiny_gpt2), "segment_tokens": 256}
    first = Tokens(options).compress(cot_prompt, target=Target(rate=0.5), model="gpt-4o")
    second = Tokens(options).compress(cot_prompt, target=Target(rate=0.5), model="gpt-4o")
    assert first.text == second.text
    assert first.target_met
    assert abs(first.tokens_after - first.target_tokens) <= 0.05 * first.target_tokens
    # Numbers are units of their own: none is cut into a new number.
    assert not Counter(_NUMBER.findall(first.text)) - Counter(_NUMBER.findall(cot_prompt))
    assert first.text.count("\n") == cot_prompt.count("\n")


@pytest.mark.parametrize("source", ["built", pytest.param("nq", marks=pytest.mark.evaldata(evaldata.NQ))])
def test_questions_survive_with_query(tiny_gpt2: Path, source: str) -> None:
    if source == "built":
        passage, question = passages(12)[11]
    else:
        row = evaldata.nq_rows(12)[11]
        passage, question = str(row["ctxs"][0]["text"]), str(row["question"])
    text = f"Passage: {passage}\nQuestion: {question}"
    out = Tokens({"scorer": "perplexity", "model": str(tiny_gpt2)}).compress(
        text, target=Target(rate=0.6), query=question
    )
    # The question is kept whole on its own line; whether the random model keeps the label's colon
    # depends on its tokenizer's training text.
    assert out.text.endswith(question) and out.text.splitlines()[-1].startswith("Question")


def test_missing_model_names_the_model() -> None:
    compressor = Tokens({"scorer": "perplexity", "model": "/nowhere/tiny-missing-gpt"})
    with pytest.raises(CompressorError, match="tiny-missing-gpt"):
        compressor.compress("a few words to compress here", target=Target(rate=0.5))
