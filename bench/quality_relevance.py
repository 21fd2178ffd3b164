"""Quality of the ``relevance`` compressor on lost-in-the-middle data: does the answer survive?

NQ multi-document QA: each of the 2655 NQ-open oracle questions gets 20 documents in
the paper's ``qa.prompt`` format: its gold passage and the 19 other questions'
passages most similar to it by BM25 (title + text, over all 2655 passages) that
contain none of its answer strings, the gold at a seeded random position. A case
passes when the gold's full ``Document [i](Title: ...) text`` line survives.

KV retrieval: ``kv-retrieval-75_keys`` prompts (``kv_retrieval.prompt``); a case
passes when the gold ``"key": "value"`` pair survives at rate 0.1.

    python bench/quality_relevance.py [--skip N] [--limit N] [--scorers bm25,embedding,hybrid] [--write]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quality_tokens import normalize_answer

from compressors.base import Target
from compressors.bm25 import Bm25Index, terms
from compressors.preserve import PreserveSpec
from compressors.relevance import Relevance

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for evaldata/
import evaldata

RESULTS = Path(__file__).resolve().parent / "results" / "quality_relevance.md"
SEED = 20240103
DOCUMENTS = 20
NQ_RATES = (0.25, 0.125, 0.0625)
KV_RATE = 0.1
# The default preserve spec: the KV prompt is one JSON object, whose members are selected whole.
KV_PRESERVE = PreserveSpec.default()


@dataclass(frozen=True, slots=True)
class Case:
    prompt: str
    gold: str  # text that must survive
    answers: tuple[
        str, ...
    ] = ()  # NQ: any of these (normalized) in the kept documents counts as "answer kept"


def nq_cases(limit: int | None, seed: int = SEED) -> list[Case]:
    """The 20-document NQ cases (first ``limit`` questions), built deterministically."""
    rows = evaldata.nq_rows()
    passages = [(row["ctxs"][0]["title"], row["ctxs"][0]["text"]) for row in rows]
    index = Bm25Index([terms(f"{title} {text}") for title, text in passages])
    rng = random.Random(seed)
    cases: list[Case] = []
    for number, row in enumerate(rows[:limit] if limit else rows):
        answers = [answer.lower() for answer in row["answers"] if answer.strip()]
        scores = index.scores(terms(row["question"]))
        ranked = sorted(range(len(passages)), key=lambda i: (-scores[i], i))
        gold = passages[number]
        chosen: list[tuple[str, str]] = []
        seen = {gold[1]}
        for i in ranked:
            title, text = passages[i]
            if text in seen or any(answer in text.lower() for answer in answers):
                continue
            seen.add(text)
            chosen.append((title, text))
            if len(chosen) == DOCUMENTS - 1:
                break
        chosen.insert(rng.randrange(DOCUMENTS), gold)
        lines = [f"Document [{i + 1}](Title: {title}) {text}" for i, (title, text) in enumerate(chosen)]
        gold_line = lines[chosen.index(gold)]
        prompt = evaldata.qa_prompt(lines, row["question"])
        cases.append(Case(prompt, gold_line, tuple(a for a in row["answers"] if a.strip())))
    return cases


def long_unit_cases(limit: int, seed: int = SEED) -> list[Case]:
    """The NQ cases regrouped into 5 paragraphs of 4 documents (~550 tokens, over MiniLM's 256 word-pieces)."""
    cases: list[Case] = []
    for case in nq_cases(limit, seed):
        head, rest = case.prompt.split("\n\n", 1)
        documents, question = rest.rsplit("\n\n", 1)
        lines = documents.split("\n")
        groups = [" ".join(lines[i : i + 4]) for i in range(0, len(lines), 4)]
        cases.append(Case("\n\n".join([head, *groups, question]), case.gold))
    return cases


def kv_cases(limit: int | None) -> list[Case]:
    """KV retrieval prompts formatted exactly as lost-in-the-middle formats them."""
    template = evaldata.text(evaldata.KV_PROMPT)
    cases: list[Case] = []
    for row in evaldata.kv_rows(limit):
        records = row["ordered_kv_records"]
        parts = []
        for i, (key, value) in enumerate(records):
            start = "{" if i == 0 else " "
            end = ",\n" if i != len(records) - 1 else "}"
            parts.append(f'{start}"{key}": "{value}"{end}')
        prompt = template.format(formatted_kv_records="".join(parts), key=row["key"])
        cases.append(Case(prompt, f'"{row["key"]}": "{row["value"]}"'))
    return cases


def _measure(
    task: str,
    scorer: str,
    rate: float,
    cases: list[Case],
    preserve: PreserveSpec | None,
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    compressor = Relevance({"scorer": scorer, **(options or {})})
    target = Target(rate=rate)
    kept = answered = 0
    met = 0
    ratios: list[float] = []
    millis: list[float] = []
    for case in cases:
        started = time.perf_counter()
        result = compressor.compress(case.prompt, target=target, preserve=preserve, model="gpt-4o")
        millis.append((time.perf_counter() - started) * 1000)
        kept += case.gold in result.text
        documents = normalize_answer(result.text.rsplit("Question:", 1)[0])
        answered += any(normalize_answer(a) in documents for a in case.answers)
        met += result.target_met
        ratios.append(result.ratio)
    label = "/".join([scorer, *(f"{k}={v}" for k, v in (options or {}).items())])
    return {
        "task": task,
        "scorer": label,
        "rate": rate,
        "cases": len(cases),
        "gold_kept": kept,
        "share": round(kept / len(cases), 4),
        "answer": round(answered / len(cases), 4) if any(case.answers for case in cases) else "-",
        "target_met": round(met / len(cases), 4),
        "mean_ratio": round(statistics.fmean(ratios), 4),
        "median_ms": round(statistics.median(millis), 2),
    }


def _warm(scorers: list[str]) -> None:
    """Load the model before timing (first call loads it once per process)."""
    for scorer in scorers:
        Relevance({"scorer": scorer}).compress("a\nb\nc?", target=Target(rate=0.5))


def speed(scorer: str, repeats: int = 7) -> dict[str, Any]:
    """Median time of one call on a ~20k-token, 150-document prompt (embeddings warm in the cache)."""
    rows = evaldata.nq_rows(150)
    prompt = evaldata.qa_prompt(
        [evaldata.document(r, i + 1) for i, r in enumerate(rows)], rows[0]["question"]
    )
    compressor = Relevance({"scorer": scorer})
    millis: list[float] = []
    tokens = 0
    for _ in range(repeats + 1):  # the first call fills the embedding cache
        started = time.perf_counter()
        result = compressor.compress(prompt, target=Target(rate=0.25), model="gpt-4o")
        millis.append((time.perf_counter() - started) * 1000)
        tokens = result.tokens_before
    median = statistics.median(millis[1:])
    return {
        "task": f"speed-{tokens // 1000}k-tokens",
        "scorer": scorer,
        "rate": 0.25,
        "cases": repeats,
        "gold_kept": "-",
        "share": "-",
        "answer": "-",
        "target_met": "-",
        "mean_ratio": f"{median / tokens * 1000:.2f} ms/1k tok",
        "median_ms": round(median, 2),
    }


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Rows of results: one per task, scorer and rate."""
    scorers = [s for s in args.scorers.split(",") if s]
    _warm(scorers)
    nq = nq_cases(args.skip + args.limit if args.limit else None, args.seed)[args.skip :]
    kv = kv_cases(args.kv_limit)
    rows: list[dict[str, Any]] = []
    if args.long_limit:
        long_cases = long_unit_cases(args.long_limit, args.seed)
        for long_units in ("head", "max"):
            rows.append(
                _measure("nq-5x4docs", "embedding", 0.4, long_cases, None, {"long_units": long_units})
            )
            print(_format_row(rows[-1]), file=sys.stderr, flush=True)
    for scorer in scorers:
        for rate in NQ_RATES:
            rows.append(_measure("nq-20docs", scorer, rate, nq, None))
            print(_format_row(rows[-1]), file=sys.stderr, flush=True)
        rows.append(_measure("kv-75keys", scorer, KV_RATE, kv, KV_PRESERVE))
        print(_format_row(rows[-1]), file=sys.stderr, flush=True)
        rows.append(speed(scorer))
        print(_format_row(rows[-1]), file=sys.stderr, flush=True)
    return rows


def _format_row(row: dict[str, Any]) -> str:
    keys = (
        "task",
        "scorer",
        "rate",
        "cases",
        "gold_kept",
        "share",
        "answer",
        "target_met",
        "mean_ratio",
        "median_ms",
    )
    return "| " + " | ".join(str(row[key]) for key in keys) + " |"


def table(rows: list[dict[str, Any]]) -> Iterator[str]:
    yield "| task | scorer | rate | cases | gold kept | share | answer kept | target met | mean kept/orig | median ms |"
    yield "|---|---|---|---|---|---|---|---|---|---|"
    for row in rows:
        yield _format_row(row)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--limit", type=int, default=None, help="NQ questions to use (default: all 2655)")
    parser.add_argument(
        "--skip",
        type=int,
        default=0,
        help="NQ questions to leave out first (1800: the window head's held-out rows)",
    )
    parser.add_argument("--kv-limit", type=int, default=None, help="KV prompts to use (default: all 500)")
    parser.add_argument("--long-limit", type=int, default=0, help="NQ cases for the long-unit head/max rows")
    parser.add_argument("--scorers", default="embedding,hybrid,bm25")
    parser.add_argument("--seed", type=int, default=SEED, help="seed of the gold positions")
    parser.add_argument("--write", action="store_true", help=f"write the table to {RESULTS}")
    args = parser.parse_args(argv)
    if evaldata.missing(evaldata.NQ, evaldata.KV75, evaldata.QA_PROMPT, evaldata.KV_PROMPT):
        raise SystemExit(f"evaluation data not found at {evaldata.root()} (python -m evaldata.fetch)")
    rows = run(args)
    lines = list(table(rows))
    print("\n".join(lines))
    if args.write:
        command = "python bench/quality_relevance.py " + " ".join(argv if argv is not None else sys.argv[1:])
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(
            f"# relevance: answer survival on lost-in-the-middle data\n\nCommand: `{command}` "
            f"(seed {args.seed})\n\n" + "\n".join(lines) + "\n",
            encoding="utf-8",
        )


if __name__ == "__main__":
    main()
