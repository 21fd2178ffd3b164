"""The OpenVINO int8 build of a verified model: the child process's entry point.

``python -m compressors.openvino_build MODEL SHA256 TARGET``, started by
:func:`compressors.openvino_encoder.ensure_openvino_build`. The verified model is
traced to ONNX (:func:`compressors.onnx_encoder.trace_onnx`), read by OpenVINO and statically quantized to int8 by NNCF (SmoothQuant, then
activation ranges calibrated on the fixed texts of ``calibration.txt``, so every
build is the same), then saved as OpenVINO IR under the model's cache folder.
The runtime that reads the build is :class:`compressors.openvino_encoder.OpenVinoEncoder`.
"""

from __future__ import annotations

import argparse
import importlib.resources
import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from compressors.onnx_encoder import INPUTS, META, TOKENIZER, trace_onnx
from compressors.openvino_encoder import BUILD_STEP, MODEL_XML
from compressors.weights import torch_model, verify

__all__ = ["build", "calibration_texts", "main"]

_CALIBRATION_BATCH = 8


def calibration_texts() -> list[str]:
    """The fixed calibration texts shipped with the package (comment lines skipped)."""
    text = importlib.resources.files("compressors").joinpath("calibration.txt").read_text("utf-8")
    return [line for line in text.splitlines() if line.strip() and not line.startswith("#")]


def _calibration_feeds(tokenizer: Any, max_length: int) -> Iterator[dict[str, npt.NDArray[np.int64]]]:
    texts = calibration_texts()
    for start in range(0, len(texts), _CALIBRATION_BATCH):
        encoded = tokenizer(
            texts[start : start + _CALIBRATION_BATCH],
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="np",
        )
        yield {name: np.asarray(encoded[name], dtype=np.int64) for name in INPUTS}


def build(model_path: str, sha256: str, target: Path) -> None:
    """Build the int8 IR of the verified model at ``model_path`` into ``target`` (run in the child)."""
    import nncf
    import openvino as ov

    verify(model_path, sha256)  # the weights on disk now, not just when the parent checked them
    nncf.set_log_level(logging.ERROR)
    _step("loading the verified weights")
    model = torch_model(model_path)
    raw = target / "raw.onnx"
    _step("tracing to ONNX")
    meta = trace_onnx(model, raw)
    calibration = list(_calibration_feeds(model.tokenizer, meta["max_seq_length"]))
    _step(f"quantizing to int8 on {len(calibration)} calibration batches (the longest step)")
    quantized = nncf.quantize(
        ov.Core().read_model(str(raw)),
        nncf.Dataset(calibration),
        model_type=nncf.ModelType.TRANSFORMER,
        subset_size=len(calibration),
    )
    _step("saving")
    ov.save_model(quantized, str(target / MODEL_XML))
    raw.unlink()
    model.tokenizer.save_pretrained(str(target / TOKENIZER))
    (target / META).write_text(json.dumps(meta))


def _step(text: str) -> None:
    """A build step, for the parent to log."""
    print(f"{BUILD_STEP}{text}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the OpenVINO int8 embedding model (internal).")
    parser.add_argument("model_path")
    parser.add_argument("sha256")
    parser.add_argument("target", type=Path)
    args = parser.parse_args(argv)
    build(args.model_path, args.sha256, args.target)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
