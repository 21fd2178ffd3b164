"""Fit the ``selfinfo`` scorer's linear weights (``compressors.selfinfo.WEIGHTS``) on NQ-open rows.

Each non-protected unit of ``Passage: <ctx>\\nQuestion: <q>`` is one example,
labelled 1 when it overlaps an occurrence of a gold answer (articles excluded:
NQ normalization drops them). Each row weighs the same in total. Logistic
regression, no intercept (``bias`` is a feature). Prints the weights as a Python
dict to paste into ``compressors/selfinfo.py``; ``unqueried_number`` stays set by
hand (NQ rows always have a query, so it cannot be learnt here).

    python bench/fit_selfinfo.py [--rows 600] [--c 1.0]
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
from quality_tokens import NQ, nq_rows
from sklearn.linear_model import LogisticRegression

from compressors.preserve import PreserveSpec
from compressors.selfinfo import FEATURES, WEIGHTS, unit_matrix
from compressors.tokenizer import tokenizer_for
from compressors.tokens import Tokens


def examples(rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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
        matrices.append(matrix[free])
        labels.append(label[free])
        weights.append(np.full(int(free.sum()), 1.0 / max(1, int(free.sum()))))
    return np.vstack(matrices), np.concatenate(labels), np.concatenate(weights) * len(matrices)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=600, help="first N NQ rows")
    parser.add_argument("--c", type=float, default=1.0, help="inverse regularization strength")
    args = parser.parse_args(argv)
    if not NQ.exists():
        print(f"evaldata missing: {NQ}", file=sys.stderr)
        return 2
    matrix, label, weight = examples(args.rows)
    model = LogisticRegression(C=args.c, max_iter=5000, fit_intercept=False)
    model.fit(matrix, label, sample_weight=weight)
    print("WEIGHTS: dict[str, float] = {")
    for name, value in zip(FEATURES, model.coef_[0], strict=True):
        kept = WEIGHTS[name] if name == "unqueried_number" else round(float(value), 3)
        print(f'    "{name}": {kept},')
    print("}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
