"""The shipped keep network: its neighbour shifts match a unit-by-unit reading, and it is deterministic."""

from __future__ import annotations

import numpy as np
import pytest
from samples import passages

import evaldata
from compressors.keepnet import keep_net
from compressors.selfinfo import unit_matrix
from compressors.words import atomic_spans, segment


def _one_unit(matrix: np.ndarray, i: int) -> float:
    """The network's logit for unit ``i`` in double precision, reading each neighbour row directly."""
    net = keep_net()
    pre = net.hidden_bias.astype(np.float64)
    for slot, offset in enumerate(range(-net.reach, net.reach + 1)):
        if 0 <= i + offset < len(matrix):
            pre += matrix[i + offset] @ net.hidden[slot].astype(np.float64)
    return float(np.maximum(pre, 0.0) @ net.out.astype(np.float64) + net.out_bias)


def _passage(source: str, row: int) -> tuple[str, str]:
    """``(passage, question)``: made here, or NQ's row ``row`` (one the network was not fitted on)."""
    if source == "built":
        return passages(1, seed=row)[0]
    found = evaldata.nq_rows(row + 1)[row]
    return str(found["ctxs"][0]["text"]), str(found["question"])


SOURCES = ["built", pytest.param("nq", marks=pytest.mark.evaldata(evaldata.NQ))]


@pytest.mark.parametrize("source", SOURCES)
def test_logits_read_each_units_neighbours(source: str) -> None:
    passage, question = _passage(source, 1900)
    text = f"Passage: {passage}\nQuestion: {question}"
    units = segment(text, atomic_spans(text))
    matrix, _ = unit_matrix(text, units, question)
    logits = keep_net().logits(matrix)
    assert logits.shape == (len(units),)
    for i in (0, 1, len(units) // 2, len(units) - 2, len(units) - 1):
        assert abs(logits[i] - _one_unit(matrix, i)) < 1e-4
    # Tiny inputs (fewer units than the reach) work the same way.
    assert abs(keep_net().logits(matrix[:1])[0] - _one_unit(matrix[:1], 0)) < 1e-4


@pytest.mark.parametrize("source", SOURCES)
def test_same_input_same_logits(source: str) -> None:
    text, question = _passage(source, 2000)
    units = segment(text, atomic_spans(text))
    matrix, _ = unit_matrix(text, units, question)
    assert keep_net().logits(matrix).tobytes() == keep_net().logits(matrix.copy()).tobytes()
