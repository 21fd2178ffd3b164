"""OpenVINO int8 encoder: the fastest CPU runtime for the relevance scorer's embeddings.

The int8 IR is built once per machine by :mod:`compressors.openvino_build`, in a child
process (``python -m compressors.openvino_build``): it loads torch and NNCF once and
never again, NNCF draws progress bars and would send usage telemetry (the child
disables it with ``NNCF_CI``), and none of that belongs in the process that encodes.
Static activation scales let OpenVINO run every Linear and attention product as
int8 (AVX512-VNNI / AVX2 VNNI): about 1.6x ONNX Runtime's dynamic int8 here, and
closer to the fp32 vectors (mean cosine 0.997 against 0.994 on NQ passages).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import numpy.typing as npt

from compressors.onnx_encoder import Feeds, PooledEncoder, ensure_built, export_dir
from compressors.threads import cpu_threads

__all__ = ["BUILD_STEP", "MODEL_XML", "OPENVINO_RECIPE", "OpenVinoEncoder", "ensure_openvino_build"]

OPENVINO_RECIPE = "openvino-int8-v2"  # v2: the metadata carries the pooling configuration
MODEL_XML = "model.xml"
_BUILD_TIMEOUT_S = 900
BUILD_STEP = "tersegate-build-step: "  # the child's stderr lines the parent logs (the rest is NNCF's chatter)
log = logging.getLogger(__name__)


def _build_in_child(model_path: str, sha256: str, target: Path) -> None:
    env = {**os.environ, "NNCF_CI": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    command = [sys.executable, "-m", "compressors.openvino_build", model_path, sha256, str(target)]
    started = time.monotonic()
    with subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    ) as child:
        timer = threading.Timer(_BUILD_TIMEOUT_S, child.kill)
        timer.start()
        tail = ""
        try:
            assert child.stderr is not None
            for line in child.stderr:
                if line.startswith(BUILD_STEP):
                    log.warning(
                        "building the int8 embedding model: %s (%.0f s)",
                        line[len(BUILD_STEP) :].strip(),
                        time.monotonic() - started,
                    )
                elif line.strip():
                    tail = line.strip()
        finally:
            timer.cancel()
    if child.returncode != 0:
        raise RuntimeError(
            f"building the OpenVINO int8 model failed: {tail or f'exit status {child.returncode}'}"
        )


def ensure_openvino_build(model_path: str, sha256: str) -> Path:
    """The int8 IR build of the verified weights ``sha256`` at ``model_path``, built once."""
    return ensure_built(
        export_dir(sha256) / OPENVINO_RECIPE, lambda tmp: _build_in_child(model_path, sha256, tmp)
    )


class OpenVinoEncoder(PooledEncoder):
    """OpenVINO CPU inference of an int8 IR build, on every core, threads not pinned."""

    def __init__(self, directory: Path) -> None:
        import openvino as ov

        super().__init__(directory)
        core = ov.Core()
        config = {
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_NUM_THREADS": cpu_threads(),
            # int8 kernels with fp32 in between: a bf16 hint runs slower on the int8 graph here.
            "INFERENCE_PRECISION_HINT": "f32",
            # Unpinned threads share the cores with the caller's other threads (an event loop).
            "ENABLE_CPU_PINNING": False,
        }
        self.compiled = core.compile_model(core.read_model(str(directory / MODEL_XML)), "CPU", config)
        self.request = self.compiled.create_infer_request()

    def hidden(self, feeds: Feeds) -> npt.NDArray[np.float32]:
        self.request.infer(dict(feeds))
        output: npt.NDArray[np.float32] = self.request.get_output_tensor(0).data.copy()
        return output
