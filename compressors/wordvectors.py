"""A semantic first stage as cheap as BM25: the embedding model's own word-piece vectors.

BM25 cannot find a sentence that shares no word with the question ("who is playing the
halftime show" vs "Justin Timberlake was the featured performer"), and a long prompt cannot
be embedded whole inside a latency budget. The embedding model's input layer holds a vector
per word-piece; an IDF-weighted sum of a window's piece vectors (mean removed, so common
directions do not dominate) compared by cosine to the question's ranks such windows far
above where BM25 puts them, at a few ms per 10k tokens (numpy, no model run). The vectors
come from the same verified ``model.safetensors`` the embedding loads; a model without one
(or without a ``tokenizer.json``) has no word vectors and the first stage is BM25 alone.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

__all__ = ["WordVectors"]

_WEIGHTS = "model.safetensors"
_TOKENIZER = "tokenizer.json"


class WordVectors:
    """Word-piece vectors of one embedding model and its tokenizer."""

    def __init__(self, matrix: npt.NDArray[np.float32], tokenizer: object) -> None:
        self.matrix = matrix - matrix.mean(axis=0, keepdims=True)
        self._tokenizer = tokenizer
        self._lock = threading.Lock()  # one fast tokenizer, not shared by two threads at once

    @classmethod
    def load(cls, model: str) -> WordVectors | None:
        """The word vectors of the local model directory ``model`` (verified by the caller), or None."""
        directory = Path(model)
        if not (directory / _WEIGHTS).is_file() or not (directory / _TOKENIZER).is_file():
            return None
        from safetensors import safe_open
        from tokenizers import Tokenizer

        with safe_open(str(directory / _WEIGHTS), framework="numpy") as weights:
            names = [name for name in weights.keys() if name.endswith("word_embeddings.weight")]  # noqa: SIM118
            if len(names) != 1:
                return None
            matrix = np.asarray(weights.get_tensor(names[0]), dtype=np.float32)
        tokenizer = Tokenizer.from_file(str(directory / _TOKENIZER))
        tokenizer.no_padding()  # a sentence-transformers tokenizer.json pads every batch to its longest
        tokenizer.no_truncation()
        return cls(matrix, tokenizer)

    def similarities(self, query: str, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Cosine of ``query`` to each of ``texts``, pieces weighted by their IDF over ``texts``."""
        if not texts:
            return np.zeros(0, np.float32)
        with self._lock:
            encoded = self._tokenizer.encode_batch([query, *texts], add_special_tokens=False)  # type: ignore[attr-defined]
        lengths = np.array([len(item.ids) for item in encoded], dtype=np.int64)
        ids = np.fromiter((i for item in encoded for i in item.ids), dtype=np.int64, count=int(lengths.sum()))
        rows = np.repeat(np.arange(len(encoded)), lengths)
        size = self.matrix.shape[0]
        # Document frequency over the texts (the query not counted): each piece once per text.
        present = np.unique(rows[rows > 0] * size + ids[rows > 0]) % size
        frequency = np.bincount(present, minlength=size)
        idf = np.log((len(texts) + 1) / (frequency + 0.5)).clip(min=0.0).astype(np.float32)
        weighted = self.matrix[ids] * idf[ids][:, None]
        starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
        nonempty = lengths > 0
        vectors = np.zeros((len(encoded), self.matrix.shape[1]), np.float32)
        if weighted.size:
            vectors[nonempty] = np.add.reduceat(weighted, starts[nonempty], axis=0)
        norms = np.linalg.norm(vectors, axis=1)
        norms[norms == 0] = 1.0
        vectors /= norms[:, None]
        return np.asarray(vectors[1:] @ vectors[0], dtype=np.float32)
