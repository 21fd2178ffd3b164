"""Train ``relevance``'s window head (``compressors/windowhead.npz``) on NQ-open oracle rows.

Each of the first ``--rows`` 20-document NQ cases of ``bench/quality_relevance.py`` (the
same construction: gold passage plus 19 BM25-similar passages without an answer) is cut
into the windows ``relevance`` scores; every window is embedded as ``relevance`` embeds it
and gets :func:`compressors.windowhead.features`. A window holding a (normalized) answer
string is a target. Model: one weight per feature, trained listwise (softmax over a case's
windows, the targets' share maximised) by full-batch Adam from the cosine alone, with a
small L2 pull towards it; deterministic, so reruns give the same file. Rows from
``--rows`` on are held out (``bench/quality_relevance.py --from-row`` reports them apart).
Data: NQ-open (CC BY-SA 3.0) as the lost-in-the-middle repository ships it (MIT), see
``evaldata/`` and ``../shared/evaldata/SOURCES.md``.

    python bench/fit_window_head.py [--rows 1800] [--dev 500] [--l2 0.001] [--out compressors/windowhead.npz]
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from quality_relevance import nq_cases
from quality_tokens import normalize_answer

from compressors.embedding import Embedder
from compressors.relevance import derive_query, unit_texts
from compressors.units import split_units
from compressors.windowhead import FEATURE_NAMES, WEIGHTS_FILE, WindowHead, features
from compressors.windows import first_stage, split_windows

WINDOW_CHARS = 200  # relevance's default window_chars


@dataclass(frozen=True, slots=True)
class Group:
    rows: np.ndarray  # features, one row per window
    targets: np.ndarray  # bool per window


def groups(limit: int) -> list[Group]:
    """Features and targets of the first ``limit`` NQ cases (cases without a target dropped)."""
    embedder = Embedder()
    result: list[Group] = []
    for case in nq_cases(limit):
        layout = split_units(case.prompt, "auto")
        query = derive_query(case.prompt, layout)
        assert query is not None
        texts = unit_texts(layout)
        windows = split_windows(layout, max_chars=WINDOW_CHARS)
        first, unit_first = first_stage(query.text, layout.text, windows, texts)
        bodies = [layout.text[w.start : w.end] for w in windows]
        vectors = embedder.encode(
            [query.text, *[w.context + b for w, b in zip(windows, bodies, strict=True)]]
        )
        cosine = [float(v) for v in vectors[1:] @ vectors[0]]
        units = [w.unit for w in windows]
        rows = features(query.text, bodies, cosine, first, [unit_first[u] for u in units], units)
        answers = [normalize_answer(a) for a in case.answers]
        targets = np.array([any(a in normalize_answer(b) for a in answers) for b in bodies])
        if targets.any():
            result.append(Group(rows, targets))
    return result


def fit(train: list[Group], *, l2: float, steps: int = 400, rate: float = 0.05) -> np.ndarray:
    """Listwise softmax weights, from the cosine alone (weight 10: its scale in a softmax)."""
    x = np.concatenate([g.rows for g in train])
    target = np.concatenate([g.targets for g in train]).astype(np.float64)
    starts = np.cumsum([0, *[len(g.targets) for g in train]])[:-1]
    group_of = np.repeat(np.arange(len(train)), [len(g.targets) for g in train])
    start = np.zeros(x.shape[1])
    start[0] = 10.0
    weights, m, v = start.copy(), np.zeros_like(start), np.zeros_like(start)
    for step in range(1, steps + 1):
        scores = x @ weights
        top = np.maximum.reduceat(scores, starts)[group_of]
        exp = np.exp(scores - top)
        p_all = exp / np.add.reduceat(exp, starts)[group_of]
        p_target = exp * target / np.add.reduceat(exp * target, starts)[group_of]
        grad = x.T @ (p_all - p_target) / len(train) + 2 * l2 * (weights - start)
        m = 0.9 * m + 0.1 * grad
        v = 0.999 * v + 0.001 * grad**2
        weights -= rate * (m / (1 - 0.9**step)) / (np.sqrt(v / (1 - 0.999**step)) + 1e-8)
    return weights


def top_k(groups_: list[Group], weights: np.ndarray, ks: tuple[int, ...] = (1, 2, 3)) -> list[float]:
    """Share of cases whose best target window ranks within the top k."""
    ranks = []
    for group in groups_:
        order = np.argsort(-(group.rows @ weights), kind="stable")
        ranks.append(int(np.flatnonzero(group.targets[order])[0]))
    return [round(float(np.mean(np.array(ranks) < k)), 4) for k in ks]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1800, help="train on NQ rows before this one")
    parser.add_argument("--dev", type=int, default=500, help="first rows held out to report a dev figure")
    parser.add_argument("--l2", type=float, default=0.001)
    parser.add_argument("--out", type=Path, default=WEIGHTS_FILE)
    args = parser.parse_args(argv)
    data = groups(args.rows)
    dev = data[: args.dev]
    cosine = np.zeros(len(FEATURE_NAMES))
    cosine[0] = 1.0
    print(
        f"{len(data)} cases with a target; top-1/2/3, cosine alone, dev: {top_k(dev, cosine)}",
        file=sys.stderr,
    )
    print(
        f"trained without the dev rows, dev: {top_k(dev, fit(data[args.dev :], l2=args.l2))}", file=sys.stderr
    )
    weights = fit(data, l2=args.l2)
    WindowHead(weights)  # the shape check
    np.savez(args.out, weights=weights, names=np.array(FEATURE_NAMES), rows=np.array(args.rows))
    print(
        f"wrote {args.out}: " + ", ".join(f"{n} {w:.3f}" for n, w in zip(FEATURE_NAMES, weights, strict=True))
    )


if __name__ == "__main__":
    main()
