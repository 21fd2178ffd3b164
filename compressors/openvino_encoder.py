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

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import numpy.typing as npt

from compressors.onnx_encoder import Feeds, PooledEncoder, ensure_built, export_dir
from compressors.threads import cpu_threads

__all__ = ["MODEL_XML", "OPENVINO_RECIPE", "OpenVinoEncoder", "ensure_openvino_build"]

OPENVINO_RECIPE = "openvino-int8-v2"  # v2: the metadata carries the pooling configuration
MODEL_XML = "model.xml"
_BUILD_TIMEOUT_S = 900


def _build_in_child(model_path: str, sha256: str, target: Path) -> None:
    env = {**os.environ, "NNCF_CI": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    command = [sys.executable, "-m", "compressors.openvino_build", model_path, sha256, str(target)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=_BUILD_TIMEOUT_S)
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or [f"exit status {done.returncode}"]
        raise RuntimeError(f"building the OpenVINO int8 model failed: {tail[0]}")


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
