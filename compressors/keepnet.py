"""The ``selfinfo`` scorer's keep model: a one-hidden-layer network over each unit and its neighbours.

Input: the :data:`compressors.selfinfo.FEATURES` of a unit and of the ``reach``
units on either side of it (so "of" inside "Speaker of the House" can matter while
"of" elsewhere does not); output: the logit that the unit is part of an answer.
The weights were trained offline on NQ-open oracle rows by ``bench/fit_selfinfo.py``
and ship as ``keepnet.npz`` next to this module: numpy only, no model download,
no torch. Loaded once, lazily, behind a lock.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from compressors.models import load_once

__all__ = ["WEIGHTS_FILE", "KeepNet", "keep_net"]

_Floats = npt.NDArray[np.float64]
_Singles = npt.NDArray[np.float32]
WEIGHTS_FILE = Path(__file__).with_name("keepnet.npz")


@dataclass(frozen=True, slots=True)
class KeepNet:
    """``logit = relu(sum_k shift_k(x) @ hidden[k] + hidden_bias) @ out + out_bias``.

    ``hidden`` has one slice per offset ``-reach .. reach`` (input standardization is
    folded into it), so a unit's neighbours enter without building a wide matrix.
    """

    features: tuple[str, ...]
    reach: int
    hidden: _Singles  # (2 * reach + 1, len(features), width)
    hidden_bias: _Singles  # (width,)
    out: _Singles  # (width,)
    out_bias: float

    def logits(self, matrix: _Floats) -> _Floats:
        """One logit per row of ``matrix`` (units in text order, columns as :attr:`features`)."""
        n = len(matrix)
        if not n:
            return np.zeros(0)
        # Columns the same for every unit (the question's type and wh-word, features absent from this
        # text) add one fixed vector per offset: no need to multiply them n times.
        fixed = (matrix == matrix[0]).all(axis=0)
        # Single precision: about 4x faster than double here, and logits only need to rank units.
        varying = matrix[:, ~fixed].astype(np.float32)
        constants = [matrix[0, fixed].astype(np.float32) @ weights[fixed] for weights in self.hidden]
        # One matrix product over the unit's and its neighbours' columns side by side (row i of
        # block "offset" is row i + offset, zeros past the edges, as in training).
        width = varying.shape[1]
        offsets = range(-self.reach, self.reach + 1)
        stacked = np.zeros((n, len(offsets) * width), np.float32)
        for slot, offset in enumerate(offsets):
            block = stacked[:, slot * width : (slot + 1) * width]
            if offset < 0:
                block[-offset:] = varying[:offset]
            elif offset > 0:
                block[:-offset] = varying[offset:]
            else:
                block[:] = varying
        pre = stacked @ self.hidden[:, ~fixed, :].reshape(len(offsets) * width, self.hidden.shape[2])
        pre += self.hidden_bias + np.sum(constants, axis=0)
        for slot, offset in enumerate(offsets):  # no neighbour there: its fixed columns did not count
            if offset < 0:
                pre[: min(n, -offset)] -= constants[slot]
            elif offset > 0:
                pre[max(0, n - offset) :] -= constants[slot]
        np.maximum(pre, 0.0, out=pre)
        result: _Floats = (pre @ self.out).astype(np.float64) + self.out_bias
        return result


def keep_net() -> KeepNet:
    """The shipped network, read from :data:`WEIGHTS_FILE` on first use."""
    return load_once(("keepnet", WEIGHTS_FILE), lambda: _load(WEIGHTS_FILE))


def _load(path: Path) -> KeepNet:
    with np.load(path, allow_pickle=False) as data:
        return KeepNet(
            features=tuple(str(name) for name in data["features"]),
            reach=int(data["reach"]),
            hidden=np.ascontiguousarray(data["hidden"], np.float32),
            hidden_bias=np.asarray(data["hidden_bias"], np.float32),
            out=np.asarray(data["out"], np.float32),
            out_bias=float(data["out_bias"]),
        )
