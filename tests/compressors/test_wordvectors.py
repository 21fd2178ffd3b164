"""The word-vector first stage: a sentence sharing no word with the question is still embedded."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

import evaldata
from compressors.base import Target
from compressors.embedding import Embedder
from compressors.relevance import Relevance

needs_data = pytest.mark.evaldata(evaldata.NQ, evaldata.QA_PROMPT)
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))


def test_word_vectors_rank_a_related_sentence_without_shared_words_first() -> None:
    vectors = Embedder().word_vectors()
    assert vectors is not None
    texts = [
        "The river floods its banks every spring and the farmers plant rice.",
        "Tax revenues rose by four percent in the last fiscal year.",
        "Justin Timberlake was the featured performer, as confirmed by the NFL.",
        "The committee adjourned after a vote on the new railway budget.",
    ]
    sims = vectors.similarities("who is playing the halftime show at the super bowl", texts)
    assert sims.shape == (4,)
    assert int(sims.argmax()) == 2, sims
    assert vectors.similarities("anything", []).shape == (0,)


def test_a_model_directory_without_word_vectors_has_none(tmp_path: Path) -> None:
    assert Embedder(str(tmp_path)).word_vectors() is None


@needs_data
def test_a_needle_sharing_no_word_with_the_question_survives_a_long_haystack() -> None:
    from long_context import build_case

    rows = evaldata.nq_rows()
    number = next(
        i for i, r in enumerate(rows) if r["question"] == "who is playing halftime show super bowl 2018"
    )
    prompt, question, needle = build_case(rows, number, 6000, random.Random(1))
    assert "Timberlake" in needle and "halftime" not in needle.lower()
    kept = {}
    for word_vectors in (True, False):
        compressor = Relevance({"word_vectors": word_vectors})
        result = compressor.compress(prompt, target=Target(rate=1 / 16), query=question, model="gpt-4o")
        assert result.target_met
        kept[word_vectors] = needle in result.text
    # BM25 alone never gives the needle's window to the embedding; the word vectors do.
    assert kept == {True: True, False: False}


def test_words_the_tokenizer_splits_its_own_way_still_get_vectors() -> None:
    vectors = Embedder().word_vectors()
    assert vectors is not None
    texts = ["東京 is the capital of Japan (日本).", "snake_case and x² and café", "", "!!!"]
    sims = vectors.similarities("capital city of Japan", texts)
    assert sims.shape == (4,)
    assert int(sims.argmax()) == 0
    assert sims[2] == 0.0 and sims[3] == 0.0  # no words: no direction


@needs_data
def test_word_vectors_give_way_when_half_of_max_ms_is_gone() -> None:
    from long_context import build_case

    prompt, question, _ = build_case(evaldata.nq_rows(), 3, 6000, random.Random(1))
    result = Relevance({"max_ms": 0.001}).compress(
        prompt, target=Target(rate=1 / 16), query=question, model="gpt-4o"
    )
    assert "word vectors skipped: half of max_ms" in result.note
    assert result.target_met
