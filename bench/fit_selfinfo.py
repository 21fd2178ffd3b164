"""Train the ``selfinfo`` scorer's keep network (``compressors/keepnet.npz``) on NQ-open oracle rows.

Each non-protected unit of ``Passage: <ctx>\\nQuestion: <q>`` is one example,
labelled 1 when it overlaps an occurrence of a gold answer (articles excluded:
NQ normalization drops them). Each row weighs the same in total. Inputs: the
unit's :data:`compressors.selfinfo.FEATURES` and those of ``--reach`` units on
either side (zeros past the text's edges). Model: scikit-learn's
``MLPClassifier`` (one ReLU hidden layer, fixed seed, so reruns give the same
file); its input standardization is folded into the first layer and the weights
are written as ``.npz`` for :class:`compressors.keepnet.KeepNet`. Rows from
``--rows`` on are held out (``bench/quality_tokens.py`` reports them apart).

    python bench/fit_selfinfo.py [--rows 1800] [--width 64] [--alpha 0.3] [--seeds 2] [--out compressors/keepnet.npz]
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np
from quality_tokens import NQ, nq_rows
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier

from compressors.keepnet import WEIGHTS_FILE, KeepNet
from compressors.preserve import PreserveSpec
from compressors.selfinfo import FEATURES, unit_matrix
from compressors.tokenizer import tokenizer_for
from compressors.tokens import Tokens


def with_neighbours(matrix: np.ndarray, reach: int) -> np.ndarray:
    """Columns per offset -reach..reach: row i holds row i + offset (zeros past the edges)."""
    n = len(matrix)
    blocks = []
    for offset in range(-reach, reach + 1):
        block = np.zeros_like(matrix)
        if offset < 0 and n > -offset:
            block[-offset:] = matrix[:offset]
        elif offset > 0 and n > offset:
            block[:-offset] = matrix[offset:]
        elif offset == 0:
            block = matrix
        blocks.append(block)
    return np.hstack(blocks)


def examples(rows: int, reach: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    tokenizer = tokenizer_for("gpt-4o")
    planner = Tokens()
    matrices, labels, weights = [], [], []
    article = FEATURES.index("article")
    for row in nq_rows(rows):
        question = row["question"]
        prompt = f"Passage: {row['ctxs'][0]['text']}\nQuestion: {question}"
        plan = planner._plan(prompt, question, PreserveSpec.default(), tokenizer)
        matrix, _ = unit_matrix(prompt, plan.units, question)
        label = np.zeros(len(matrix), bool)
        passage_end = prompt.rfind("\nQuestion:")
        for answer in row["answers"]:
            at = prompt.find(answer)
            while 0 <= at < passage_end:
                label |= (plan.units.starts < at + len(answer)) & (plan.units.ends > at)
                at = prompt.find(answer, at + 1)
        label &= matrix[:, article] == 0
        free = ~plan.forced
        matrices.append(with_neighbours(matrix, reach)[free])
        labels.append(label[free])
        weights.append(np.full(int(free.sum()), 1.0 / max(1, int(free.sum()))))
    weight = np.concatenate(weights)
    return np.vstack(matrices), np.concatenate(labels), weight / weight.mean()


def train(
    matrix: np.ndarray, label: np.ndarray, weight: np.ndarray, *, width: int, alpha: float, seeds: int
) -> KeepNet:
    """``seeds`` networks averaged (less variance than one), written as one wider network."""
    mean = matrix.mean(axis=0)
    scale = matrix.std(axis=0)
    # A column constant in training (``unqueried_number``: NQ always has a query) must not get a
    # weight divided by ~0 when standardization is folded in: it enters the network not at all.
    constant = scale < 1e-9
    scale[constant] = 1.0
    models = []
    for seed in range(seeds):
        model = MLPClassifier(hidden_layer_sizes=(width,), alpha=alpha, max_iter=60, random_state=seed)
        with warnings.catch_warnings():
            # 60 epochs is the chosen stopping point (more overfits the training rows), not a failure.
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit((matrix - mean) / scale, label, sample_weight=weight)
        models.append(model)
    # The mean of the networks' logits is one network with their hidden units side by side.
    first = np.hstack([m.coefs_[0] for m in models])
    second = np.vstack([m.coefs_[1] for m in models]) / seeds
    intercept = np.concatenate([m.intercepts_[0] for m in models])
    out_bias = float(np.mean([m.intercepts_[1][0] for m in models]))
    first = np.where(constant[:, None], 0.0, first)
    folded = first / scale[:, None]
    reach = (matrix.shape[1] // len(FEATURES) - 1) // 2
    return KeepNet(
        features=FEATURES,
        reach=reach,
        hidden=folded.reshape(2 * reach + 1, len(FEATURES), width * seeds).astype(np.float32),
        hidden_bias=(intercept - (mean / scale) @ first).astype(np.float32),
        out=second[:, 0].astype(np.float32),
        out_bias=out_bias,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1800, help="train on the first N NQ rows")
    parser.add_argument("--reach", type=int, default=2, help="neighbours on each side")
    parser.add_argument("--width", type=int, default=64, help="hidden units per network")
    parser.add_argument("--alpha", type=float, default=0.3, help="L2 penalty")
    parser.add_argument("--seeds", type=int, default=2, help="networks averaged (each one costs run time)")
    parser.add_argument("--out", type=Path, default=WEIGHTS_FILE)
    args = parser.parse_args(argv)
    if not NQ.exists():
        print(f"evaldata missing: {NQ}", file=sys.stderr)
        return 2
    matrix, label, weight = examples(args.rows, args.reach)
    net = train(matrix, label, weight, width=args.width, alpha=args.alpha, seeds=args.seeds)
    np.savez(
        args.out,
        features=np.array(net.features),
        reach=np.array(net.reach),
        hidden=net.hidden,
        hidden_bias=net.hidden_bias,
        out=net.out,
        out_bias=np.array(net.out_bias),
    )
    print(f"wrote {args.out}: {len(label)} units from {args.rows} rows, {int(label.sum())} in answers")
    return 0


if __name__ == "__main__":
    sys.exit(main())
