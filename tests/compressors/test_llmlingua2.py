"""The llmlingua2 scorer end to end with a tiny random token classifier built by the fixture."""

from __future__ import annotations

from pathlib import Path

import pytest
from samples import passages

import evaldata
from compressors.base import CompressorError, Target
from compressors.preserve import PreserveSpec
from compressors.tokens import Tokens
from compressors.words import atomic_spans, segment

HUB_MODEL = "microsoft/llmlingua-2-xlm-roberta-large-meetingbank"


def _passages(pairs: list[tuple[str, str]]) -> str:
    return "\n\n".join(f"Passage: {passage}\nQuestion: {question}?" for passage, question in pairs)


@pytest.fixture(params=["built", pytest.param("nq", marks=pytest.mark.evaldata(evaldata.NQ))])
def forty_passages(request: pytest.FixtureRequest) -> str:
    """About 6k model tokens of passages and questions: made here, or NQ's first 40 rows."""
    if request.param == "built":
        return _passages(passages(40))
    return _passages([(str(r["ctxs"][0]["text"]), str(r["question"])) for r in evaldata.nq_rows(40)])


@pytest.mark.parametrize("pooling", ["mean", "max"])
def test_tiny_model_honours_target_and_is_deterministic(
    tiny_classifier: Path, forty_passages: str, pooling: str
) -> None:
    # About 6k model tokens: many 510-token chunks, batched.
    text = forty_passages
    options = {
        "scorer": "llmlingua2",
        "model": str(tiny_classifier),
        "pooling": pooling,
        "force_tokens": ["?"],
    }
    first = Tokens(options).compress(text, target=Target(rate=0.4), model="gpt-4o")
    second = Tokens(options).compress(text, target=Target(rate=0.4), model="gpt-4o")
    assert first.text == second.text
    assert first.target_met
    assert abs(first.tokens_after - first.target_tokens) <= 0.05 * first.target_tokens
    assert first.text.count("?") == text.count("?")
    assert first.text.count("\n") == text.count("\n")


def test_tiny_model_keeps_units_whole(tiny_classifier: Path) -> None:
    text = (
        "Ludwig van Beethoven was born in Bonn on December 17, 1770, and Wolfgang Amadeus Mozart died "
        "on 5 March 1791 in Vienna, aged 35 years. See https://example.org/music/classical for more."
    )
    compressor = Tokens({"scorer": "llmlingua2", "model": str(tiny_classifier)})
    out = compressor.compress(text, target=Target(rate=0.5), preserve=PreserveSpec.default()).text
    units = segment(text, atomic_spans(text))
    kept_words = out.split()
    for unit in units:
        piece = text[unit.start : unit.end]
        if " " in piece:  # a multi-word unit: all of it or none of it
            assert (piece in out) or not any(w in kept_words for w in piece.split() if len(w) > 3), piece
    assert "https://example.org/music/classical" in out or "example.org" not in out


def test_chunks_split_long_sentences(tiny_classifier: Path) -> None:
    # One sentence of ~1,500 model tokens with no sentence end: it must be cut into chunks, not truncated.
    text = " ".join(f"word{i % 97} value{i}" for i in range(700))
    result = Tokens({"scorer": "llmlingua2", "model": str(tiny_classifier), "chunk_tokens": 64}).compress(
        text, target=Target(rate=0.5)
    )
    assert result.target_met
    assert all(d.score is not None for d in result.decisions)
    # Units late in the text were scored by the model too (a truncated chunk would leave them all at 0).
    assert any(d.kept for d in result.decisions[-100:])


def test_missing_model_names_the_model() -> None:
    compressor = Tokens({"scorer": "llmlingua2", "model": "/nowhere/llmlingua-2-missing"})
    with pytest.raises(CompressorError, match="llmlingua-2-missing"):
        compressor.compress("a few words to compress here", target=Target(rate=0.5))


def test_real_hub_model_when_cached() -> None:
    transformers = pytest.importorskip("transformers")
    try:
        transformers.AutoConfig.from_pretrained(HUB_MODEL, local_files_only=True)
    except OSError:
        pytest.skip(f"{HUB_MODEL} is not in the local HF cache (offline machine)")
    text = _passages(passages(5))
    result = Tokens({"scorer": "llmlingua2"}).compress(text, target=Target(rate=0.5), model="gpt-4o")
    assert result.target_met
