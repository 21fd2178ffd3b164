"""The window head: shipped weights match the features this code computes, and they read the question."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from compressors.base import Target
from compressors.relevance import Relevance
from compressors.windowhead import FEATURE_NAMES, WEIGHTS_FILE, WindowHead, features


def test_the_shipped_weights_load_and_favour_a_date_for_a_when_question() -> None:
    head = WindowHead.load()
    assert head.weights.shape == (len(FEATURE_NAMES),)
    texts = ["The bridge was opened to traffic.", "The bridge was opened to traffic in May 1932."]
    rows = features("when was the bridge opened", texts, [0.6, 0.6], [1.0, 1.0], [1.0, 1.0], [0, 1])
    assert rows.shape == (2, len(FEATURE_NAMES))
    when = head.scores(rows)
    assert when[1] > when[0]
    # The same two windows for a question that asks for no date: the year matters much less.
    other = head.scores(
        features("what is the bridge made of", texts, [0.6, 0.6], [1.0] * 2, [1.0] * 2, [0, 1])
    )
    assert other[1] - other[0] < when[1] - when[0]


def test_weights_for_other_features_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "head.npz"
    np.savez(path, weights=np.zeros(3), names=np.array(["a", "b", "c"]))
    with pytest.raises(ValueError, match="trained on features"):
        WindowHead.load(path)
    assert WEIGHTS_FILE.is_file()


def test_the_head_can_be_turned_off() -> None:
    prompt = (
        "Answer from the documents.\n\n"
        "Document [1](Title: Bridge) The bridge is made of steel. It was opened in May 1932.\n"
        "Document [2](Title: River) The river floods in spring.\n\n"
        "Question: when was the bridge opened?\nAnswer:"
    )
    for head in (1.0, 0.0):
        result = Relevance({"window_head_below": head}).compress(
            prompt, target=Target(max_tokens=48), model="gpt-4o"
        )
        assert "opened in May 1932" in result.text
        assert "river" not in result.text
