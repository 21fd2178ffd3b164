"""Exported runtimes for sentence-transformers models: tracing, caching, pooling.

An exported model is built once per machine from weights whose sha256 the caller
verified, in ``$XDG_CACHE_HOME/tersegate/onnx/<sha256 of model.safetensors>/<recipe>/``:
built in a temporary directory and renamed into place, so concurrent processes
never see half a model and later ones load it directly; every file's sha256 is
recorded at build time and checked again on each load. A recipe name changes
whenever the way a model is built changes, so a stale build is never reused.

This module holds what every runtime shares (the ONNX trace, the atomic build,
length-bucketed batching, and the model's own pooling (mean, CLS or max, from its saved
sentence-transformers configuration) and normalization in numpy: :class:`PooledEncoder`) and the ONNX
Runtime encoder: the traced graph fused by ONNX Runtime's BERT optimizer and, for
``onnx-int8``, its Linear weights quantized to int8 (u8 x s8 products use AVX512-VNNI).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from compressors.threads import cpu_threads

__all__ = [
    "ONNX_RECIPE",
    "BuildIntegrityError",
    "OnnxEncoder",
    "PooledEncoder",
    "cache_root",
    "ensure_built",
    "ensure_export",
    "export_dir",
    "trace_onnx",
    "verify_build",
]

log = logging.getLogger(__name__)

Vectors = npt.NDArray[np.float32]
Feeds = Mapping[str, npt.NDArray[np.int64]]
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
# v3: traced with eager attention (the optimizer fuses each layer's attention into one op);
# the metadata carries the model's pooling configuration.
ONNX_RECIPE = "onnx-v3"
_FP32 = "model.onnx"
_INT8 = "model-int8.onnx"
META = "tersegate.json"
MANIFEST = "sha256sums.json"
TOKENIZER = "tokenizer"
# Texts in one run differ in length by at most this share: padding is wasted work.
_PAD_SLACK = 0.9


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tersegate" / "onnx"


def export_dir(sha256: str) -> Path:
    """The folder holding every build of the weights with this sha256."""
    return cache_root() / sha256.lower()


def trace_onnx(model: Any, path: Path) -> dict[str, Any]:
    """Trace the transformer of ``model`` (Transformer, Pooling[, Normalize]) to ONNX at ``path``.

    The graph outputs the last hidden state; the model's own Pooling module runs
    after it (then Normalize), rebuilt from the metadata returned here with the
    sequence length, width and heads.
    """
    import torch

    modules = [type(module).__name__ for module in model]
    if modules[:2] != ["Transformer", "Pooling"] or any(name != "Normalize" for name in modules[2:]):
        raise ValueError(f"only Transformer + Pooling [+ Normalize] models export (got {modules})")
    bert = model[0].auto_model
    if hasattr(bert, "set_attn_implementation"):
        # Eager attention traces to the MatMul/Softmax pattern runtimes fuse into one attention op.
        bert.set_attn_implementation("eager")

    class _Hidden(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, ids: Any, mask: Any, types: Any) -> Any:
            return self.bert(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state

    # A padded example, so the traced graph applies the attention mask.
    sample = dict(model.tokenizer(["a b c d e f", "a"], padding=True, return_tensors="pt"))
    # Some tokenizers return no segment ids; the encoders always feed zeros.
    sample.setdefault("token_type_ids", torch.zeros_like(sample["input_ids"]))
    axes = {name: {0: "batch", 1: "seq"} for name in (*INPUTS, "hidden")}
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about Python branches on shapes
        torch.onnx.export(
            _Hidden().eval(),
            tuple(sample[name] for name in INPUTS),
            str(path),
            dynamo=False,
            input_names=list(INPUTS),
            output_names=["hidden"],
            dynamic_axes=axes,
            opset_version=17,
        )
    config = bert.config
    return {
        "max_seq_length": int(model.max_seq_length),
        "dim": int(config.hidden_size),
        "heads": int(config.num_attention_heads),
        "pooling": model[1].get_config_dict(),
    }


def _export_onnx(model: Any, target: Path) -> None:
    """Write fp32 and int8 ONNX graphs, tokenizer and metadata of ``model`` into ``target``."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers import optimizer

    raw = target / "raw.onnx"
    meta = trace_onnx(model, raw)
    fused = optimizer.optimize_model(
        str(raw), model_type="bert", num_heads=meta["heads"], hidden_size=meta["dim"], opt_level=1
    )
    fused.save_model_to_file(str(target / _FP32))
    raw.unlink()
    quantize_dynamic(
        str(target / _FP32),
        str(target / _INT8),
        weight_type=QuantType.QInt8,
        per_channel=True,
        extra_options={"DefaultTensorType": 1},  # FLOAT: fused ops hide some tensor types
    )
    model.tokenizer.save_pretrained(str(target / TOKENIZER))
    (target / META).write_text(json.dumps(meta))


class BuildIntegrityError(RuntimeError):
    """A cached build's files are missing or differ from the hashes recorded when it was built."""


def _file_hashes(directory: Path) -> dict[str, str]:
    hashes: dict[str, str] = {}
    for path in sorted(directory.rglob("*")):
        if path.is_file() and path.name != MANIFEST:
            with path.open("rb") as handle:
                hashes[path.relative_to(directory).as_posix()] = hashlib.file_digest(
                    handle, "sha256"
                ).hexdigest()
    return hashes


def verify_build(directory: Path) -> None:
    """Raise :class:`BuildIntegrityError` unless every file of the build matches its recorded sha256."""
    recorded = json.loads((directory / MANIFEST).read_text())
    actual = _file_hashes(directory)
    changed = sorted(
        name for name in recorded.keys() | actual.keys() if recorded.get(name) != actual.get(name)
    )
    if changed:
        raise BuildIntegrityError(
            f"{directory}: {', '.join(changed)} changed since the build; delete the folder to rebuild it"
        )


@contextlib.contextmanager
def _build_lock(final: Path) -> Iterator[None]:
    """One builder per machine: other processes (workers starting together) wait, then reuse.

    The lock is a ``flock`` on the build's parent folder (no lock file is left behind).
    """
    fd = os.open(final.parent, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.warning("waiting for another process building %s", final)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # drops the lock


def ensure_built(final: Path, build: Callable[[Path], None]) -> Path:
    """``final``, verified; ``build(tmp)`` fills a temporary sibling first if no complete build exists.

    A build is complete once its manifest (every file's sha256) is written, last, just
    before the build is renamed into place; loading re-hashes the files against it.
    Concurrent callers in other processes wait on a lock file and reuse the build.
    """
    if (final / MANIFEST).is_file():
        verify_build(final)
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with _build_lock(final):
        if (final / MANIFEST).is_file():  # built by the process we waited for
            verify_build(final)
            return final
        if final.exists() and not final.is_dir():  # said now, not after a build of up to a minute
            raise FileExistsError(f"{final}: a file is where the build goes; remove it to build")
        tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=final.parent))
        try:
            log.warning("building the embedding model's %s runtime once, into %s", final.name, final)
            started = time.monotonic()
            build(tmp)
            (tmp / MANIFEST).write_text(json.dumps(_file_hashes(tmp), indent=1))
            if final.is_dir() and not (final / MANIFEST).is_file():
                shutil.rmtree(
                    final, ignore_errors=True
                )  # a build from before manifests, or a half-copied one
            tmp.rename(final)
            log.warning("built %s in %.0f s", final.name, time.monotonic() - started)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def ensure_export(sha256: str, load_torch_model: Callable[[], Any]) -> Path:
    """The ONNX build of the weights ``sha256``, exporting ``load_torch_model()`` first if absent."""
    return ensure_built(export_dir(sha256) / ONNX_RECIPE, lambda tmp: _export_onnx(load_torch_model(), tmp))


class PooledEncoder(ABC):
    """Sentence vectors from a built model; subclasses run the transformer, this class tokenizes
    and pools.

    Only the Rust ``tokenizers`` library and numpy run here: importing transformers'
    AutoTokenizer and sentence-transformers' pooling modules took 6-12 s and ~400 MB in every
    process that loaded a model (each compression worker, each ``tersegate serve``), for a
    mean over the attention mask and a division by the norm."""

    def __init__(self, directory: Path) -> None:
        from tokenizers import Tokenizer

        meta = json.loads((directory / META).read_text())
        self.max_seq_length = int(meta["max_seq_length"])
        self.dim = int(meta["dim"])
        self._pool = _pooling(meta["pooling"])
        path = str(directory / TOKENIZER / "tokenizer.json")
        self.tokenizer = Tokenizer.from_file(path)  # [CLS] text [SEP], cut as the model was trained
        self.tokenizer.no_padding()  # a sentence-transformers tokenizer.json pads each batch
        self.tokenizer.enable_truncation(self.max_seq_length)
        self._pieces = Tokenizer.from_file(path)  # the whole text, for offsets
        self._pieces.no_padding()
        self._pieces.no_truncation()
        config = json.loads((directory / TOKENIZER / "tokenizer_config.json").read_text())
        self.pad_id = self.tokenizer.token_to_id(str(config.get("pad_token") or "[PAD]")) or 0

    @abstractmethod
    def hidden(self, feeds: Feeds) -> npt.NDArray[np.float32]:
        """The last hidden state, shape (batch, sequence, dim), for padded ``feeds``."""

    def offsets(self, texts: Sequence[str]) -> list[list[tuple[int, int]]]:
        """Each text's word-pieces as character spans, no special tokens, no truncation."""
        return [list(e.offsets) for e in self._pieces.encode_batch(list(texts), add_special_tokens=False)]

    def encode(self, texts: Sequence[str], *, batch_size: int) -> Vectors:
        """Vectors of ``texts`` in order; texts of similar length share a run."""
        ids = [encoding.ids for encoding in self.tokenizer.encode_batch(list(texts))]
        result = np.zeros((len(texts), self.dim), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: (-len(ids[i]), i))
        start = 0
        while start < len(order):
            longest = len(ids[order[start]])
            end = start + 1
            while (
                end < len(order) and end - start < batch_size and len(ids[order[end]]) >= longest * _PAD_SLACK
            ):
                end += 1
            batch = order[start:end]
            result[batch] = self._run([ids[i] for i in batch], longest)
            start = end
        return result

    def _run(self, ids: list[list[int]], length: int) -> Vectors:
        input_ids = np.full((len(ids), length), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(ids), length), dtype=np.int64)
        for row, pieces in enumerate(ids):
            input_ids[row, : len(pieces)] = pieces
            mask[row, : len(pieces)] = 1
        feeds = {"input_ids": input_ids, "attention_mask": mask, "token_type_ids": np.zeros_like(mask)}
        pooled = self._pool(self.hidden(feeds), mask.astype(np.float32))
        # unit length, as sentence-transformers' Normalize (torch's normalize: eps 1e-12)
        norms = np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), np.float32(1e-12))
        vectors: Vectors = (pooled / norms).astype(np.float32, copy=False)
        return vectors


Pool = Callable[[npt.NDArray[np.float32], npt.NDArray[np.float32]], Vectors]


def _pooling(config: Mapping[str, Any]) -> Pool:
    """The model's pooling (sentence-transformers' ``Pooling`` configuration) over (hidden, mask)."""
    mode = config.get("pooling_mode")
    if mode is None:  # sentence-transformers before 5 saved one flag per mode
        flags = {
            "mean": "pooling_mode_mean_tokens",
            "cls": "pooling_mode_cls_token",
            "max": "pooling_mode_max_tokens",
        }
        mode = next((name for name, flag in flags.items() if config.get(flag)), None)
    if mode == "mean":
        return lambda hidden, mask: (
            (hidden * mask[:, :, None]).sum(axis=1)
            / np.maximum(mask.sum(axis=1, keepdims=True), np.float32(1e-9))
        )
    if mode == "cls":
        return lambda hidden, mask: hidden[:, 0, :]
    if mode == "max":
        return lambda hidden, mask: np.where(mask[:, :, None] > 0, hidden, np.float32(-1e9)).max(axis=1)
    # a RuntimeError: the caller falls back to the torch runtime, which pools any way
    raise RuntimeError(f"pooling {mode!r} is not run by the exported runtimes")


class OnnxEncoder(PooledEncoder):
    """ONNX Runtime on every core, fp32 or int8 weights."""

    def __init__(self, directory: Path, *, int8: bool) -> None:
        import onnxruntime as ort

        super().__init__(directory)
        options = ort.SessionOptions()
        # Every core, but no spin-waiting: idle, 2 threads halve a cold encode; busy,
        # non-spinning threads yield the CPU to the caller's other threads (an event loop).
        options.intra_op_num_threads = cpu_threads()
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        path = directory / (_INT8 if int8 else _FP32)
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def hidden(self, feeds: Feeds) -> npt.NDArray[np.float32]:
        output: npt.NDArray[np.float32] = self.session.run(None, dict(feeds))[0]
        return output
