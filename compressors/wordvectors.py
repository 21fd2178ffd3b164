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

import re
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
from cachetools import LRUCache

__all__ = ["WordVectors"]

_WEIGHTS = "model.safetensors"
_TOKENIZER = "tokenizer.json"
# Letters and digits (punctuation and "_" carry no topic); a CJK ideograph is a word of its own, as
# the tokenizer reads it.
_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002fa1f"
_WORD = re.compile(f"[{_CJK}]|[^\\W_{_CJK}]+")


class WordVectors:
    """Word-piece vectors of one embedding model and its tokenizer.

    Texts are read as words (tokenizing whole windows costs more than the rest of the stage);
    each word's pieces are looked up once and kept in a bounded, locked cache.
    """

    def __init__(
        self, matrix: npt.NDArray[np.float32], tokenizer: object, *, cache_size: int = 65536
    ) -> None:
        self.matrix = matrix - matrix.mean(axis=0, keepdims=True)
        self._tokenizer = tokenizer
        self._pieces: LRUCache[str, npt.NDArray[np.int64]] = LRUCache(maxsize=cache_size)
        self._lock = threading.Lock()  # the cache, and one fast tokenizer not shared by two threads

    @classmethod
    def load(cls, model: str) -> WordVectors | None:
        """The word vectors of the local model directory ``model`` (verified by the caller), or None."""
        directory = Path(model)
        if not (directory / _WEIGHTS).is_file() or not (directory / _TOKENIZER).is_file():
            return None
        import scipy.sparse  # noqa: F401  (here, with the model, not in the first call's time)
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
        """Cosine of ``query`` to each of ``texts``, words weighted by their IDF over ``texts``."""
        if not texts:
            return np.zeros(0, np.float32)
        words = [_WORD.findall(text.lower()) for text in [query, *texts]]
        lengths = np.array([len(group) for group in words], dtype=np.int64)
        index: dict[str, int] = {}
        occurrences = np.fromiter(
            (index.setdefault(word, len(index)) for group in words for word in group),
            dtype=np.int64,
            count=int(lengths.sum()),
        )
        vocabulary = self._word_vectors(list(index))
        rows = np.repeat(np.arange(len(words)), lengths)
        # Document frequency over the texts (the query not counted): each word once per text.
        texts_only = rows > 0
        present = np.unique(rows[texts_only] * len(index) + occurrences[texts_only]) % max(len(index), 1)
        frequency = np.bincount(present, minlength=len(index))
        idf = np.log((len(texts) + 1) / (frequency + 0.5)).clip(min=0.0).astype(np.float32)
        starts = np.concatenate(([0], np.cumsum(lengths)))
        vectors = _segment_sums(idf[occurrences], occurrences, starts, vocabulary)
        norms = np.linalg.norm(vectors, axis=1)
        norms[norms == 0] = 1.0
        vectors /= norms[:, None]
        return np.asarray(vectors[1:] @ vectors[0], dtype=np.float32)

    def _word_vectors(self, words: list[str]) -> npt.NDArray[np.float32]:
        """One vector per word: the sum of its pieces' vectors."""
        with self._lock:
            found = [self._pieces.get(word) for word in words]
            missing = [word for word, pieces in zip(words, found, strict=True) if pieces is None]
            if missing:
                fresh = dict(zip(missing, self._tokenize(missing), strict=True))
                self._pieces.update(fresh)
                found = [
                    fresh[w] if pieces is None else pieces for w, pieces in zip(words, found, strict=True)
                ]
        pieces = [p for p in found if p is not None]
        counts = np.array([len(p) for p in pieces], dtype=np.int64)
        flat = np.concatenate(pieces) if pieces else np.zeros(0, np.int64)
        starts = np.concatenate(([0], np.cumsum(counts)))
        return _segment_sums(np.ones(len(flat), np.float32), flat, starts, self.matrix)

    def _tokenize(self, words: list[str]) -> list[npt.NDArray[np.int64]]:
        """Each word's piece ids: one encode of the words joined by spaces (one call per word costs
        ten times as much), or one per word where the tokenizer splits words differently (CJK)."""
        encoding = self._tokenizer.encode(" ".join(words), add_special_tokens=False)  # type: ignore[attr-defined]
        owners = np.array([-1 if w is None else w for w in encoding.word_ids], dtype=np.int64)
        if owners.size and (owners.max() != len(words) - 1 or (np.diff(owners) < 0).any()):
            batch = self._tokenizer.encode_batch(words, add_special_tokens=False)  # type: ignore[attr-defined]
            return [np.asarray(e.ids, dtype=np.int64) for e in batch]
        ids = np.asarray(encoding.ids, dtype=np.int64)
        bounds = np.searchsorted(owners, np.arange(len(words) + 1))
        return [ids[bounds[i] : bounds[i + 1]] for i in range(len(words))]


def _segment_sums(
    weights: npt.NDArray[np.float32],
    columns: npt.NDArray[np.int64],
    starts: npt.NDArray[np.int64],
    matrix: npt.NDArray[np.float32],
) -> npt.NDArray[np.float32]:
    """Row i: the sum of ``weights[k] * matrix[columns[k]]`` for k in ``starts[i]:starts[i + 1]``
    (a sparse product: gathering every row first costs ten times as much)."""
    from scipy.sparse import csr_matrix

    rows = len(starts) - 1
    sparse = csr_matrix((weights, columns, starts), shape=(rows, matrix.shape[0]), dtype=np.float32)
    return np.asarray(sparse @ matrix, dtype=np.float32)
