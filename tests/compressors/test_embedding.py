from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from compressors.embedding import (
    DEFAULT_MODEL_SHA256,
    Embedder,
    ModelIntegrityError,
    default_model_path,
    file_sha256,
)


def test_bundled_weights_match_the_pinned_hash() -> None:
    weights = default_model_path() / "model.safetensors"
    digest = file_sha256(weights)
    assert digest == DEFAULT_MODEL_SHA256
    assert digest.startswith("53aa5117") and digest.endswith("d9db")


def test_vectors_are_unit_length_ordered_and_repeatable() -> None:
    embedder = Embedder()
    texts = ["The cat sat on the mat.", "Quarterly revenue grew by 4 percent.", "The cat sat on the mat."]
    first = embedder.encode(texts)
    assert first.shape == (3, 384)
    assert np.allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(first[0], first[2])
    again = embedder.encode(list(reversed(texts)))
    assert np.array_equal(again[::-1], first)


def test_related_text_scores_higher_than_unrelated() -> None:
    sims = Embedder().similarities(
        "who wrote the novel moby dick",
        [
            "Moby-Dick is an 1851 novel by American writer Herman Melville.",
            "The Nile flows north into the sea.",
        ],
    )
    assert sims[0] > sims[1] + 0.2


def test_max_over_windows_finds_relevance_past_the_first_256_word_pieces() -> None:
    filler = " ".join(
        f"Section {i} lists routine maintenance of office printers and toner." for i in range(60)
    )
    long_unit = filler + " Penguins breed in large colonies on the Antarctic ice."
    query = "where do penguins breed?"
    head = Embedder(long_units="head").similarities(query, [long_unit])[0]
    best = Embedder(long_units="max").similarities(query, [long_unit])[0]
    assert best > head + 0.2


def test_tampered_weights_are_refused_with_a_clear_error(tmp_path: Path) -> None:
    copy = tmp_path / "model"
    shutil.copytree(default_model_path(), copy)
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[1000] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelIntegrityError, match="sha256 mismatch"):
        Embedder(str(copy), sha256=DEFAULT_MODEL_SHA256).encode(["x"])


def test_missing_weights_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelIntegrityError, match=r"no local model\.safetensors"):
        Embedder(str(tmp_path), sha256=DEFAULT_MODEL_SHA256).encode(["x"])


def test_bad_long_units_value_is_rejected() -> None:
    with pytest.raises(ValueError, match="long_units"):
        Embedder(long_units="tail")
