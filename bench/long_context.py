"""Long RAG contexts: ms per 1,000 tokens, needle survival and fail-opens at 25k and 100k tokens.

Each case: NQ-open oracle passages of other questions in ``qa.prompt`` format (none holding
one of the question's answers) until the size is reached, and the needle (the sentence of
the question's own gold passage that holds its answer) put inside one of those documents
at a seeded random place, so no whole document is about the question. ``relevance`` (the
default scorer, ``max_ms`` as given) compresses it at rate 1/16 with the question as query,
with the vector cache cleared first (new documents). A case survives when the needle
sentence is in the output verbatim; it fails open when compressing took longer than the
latency budget (the rag policy's 1,000 ms): the proxy would then forward it uncompressed.

    python bench/long_context.py [--cases 10] [--sizes 25000 100000] [--max-ms 800] [--budget-ms 1000]
"""

from __future__ import annotations

import argparse
import os
import random
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for evaldata/
import evaldata

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

MODEL = "gpt-4o"
SEED = 20261207
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9])")


def needle_of(row: dict[str, Any]) -> str | None:
    """The sentence of the row's gold passage holding one of its answers, if one does."""
    answers = [a for a in row["answers"] if a.strip()]
    for sentence in _SENTENCE.split(row["ctxs"][0]["text"]):
        if any(answer in sentence for answer in answers) and len(sentence) > 40:
            return sentence.strip()
    return None


def build_case(
    rows: list[dict[str, Any]], number: int, size: int, rng: random.Random
) -> tuple[str, str, str]:
    """``(prompt, question, needle)`` of about ``size`` tokens for row ``number``'s question."""
    from compressors.tokenizer import tokenizer_for

    count = tokenizer_for(MODEL).count
    row = rows[number]
    needle = needle_of(row)
    assert needle is not None
    answers = [a.lower() for a in row["answers"] if a.strip()]
    order = list(range(len(rows)))
    rng.shuffle(order)
    documents: list[str] = []
    tokens = 0
    for other in order:
        if other == number:
            continue
        passage = rows[other]["ctxs"][0]
        if any(answer in passage["text"].lower() for answer in answers):
            continue
        line = f"Document [{len(documents) + 1}](Title: {passage['title']}) {passage['text']}"
        documents.append(line)
        tokens += count(line) + 1
        if tokens >= size:
            break
    target = rng.randrange(len(documents))
    sentences = _SENTENCE.split(documents[target])
    sentences.insert(rng.randrange(1, len(sentences) + 1), needle)
    documents[target] = " ".join(sentences)
    return evaldata.qa_prompt(documents, row["question"]), row["question"], needle


def measure(size: int, cases: int, max_ms: float, budget_ms: float, rate: float) -> dict[str, Any]:
    from compressors.base import Target
    from compressors.embedding import Embedder
    from compressors.relevance import Relevance

    rows = evaldata.nq_rows()
    rng = random.Random(SEED + size)
    numbers = [i for i in range(len(rows)) if needle_of(rows[i]) is not None]
    rng.shuffle(numbers)
    compressor = Relevance({"max_ms": max_ms})
    compressor.compress("a b c.\n\nd e f.\n\nQuestion: a?", target=Target(rate=0.5))  # loads the model
    embedder = Embedder()
    per_k: list[float] = []
    kept = fail_open = 0
    for number in numbers[:cases]:
        prompt, question, needle = build_case(rows, number, size, rng)
        embedder.clear_cache()
        started = time.perf_counter()
        result = compressor.compress(prompt, target=Target(rate=rate), query=question, model=MODEL)
        elapsed = (time.perf_counter() - started) * 1000
        per_k.append(elapsed / result.tokens_before * 1000)
        kept += needle in result.text
        fail_open += elapsed > budget_ms
    return {
        "size": size,
        "cases": cases,
        "ms_per_1k": statistics.median(per_k),
        "needle_kept": kept,
        "fail_open": fail_open,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=10)
    parser.add_argument("--sizes", type=int, nargs="+", default=[25_000, 100_000])
    parser.add_argument("--max-ms", type=float, default=800.0, help="relevance's max_ms option (0: none)")
    parser.add_argument("--budget-ms", type=float, default=1000.0, help="the policy's latency budget")
    parser.add_argument("--rate", type=float, default=1 / 16)
    args = parser.parse_args(argv)
    if evaldata.missing(evaldata.NQ, evaldata.QA_PROMPT):
        print(f"evaldata not found at {evaldata.root()} (python -m evaldata.fetch)", file=sys.stderr)
        return 2
    from compressors.cpu import cpu_info

    print(f"cpu: {cpu_info().describe()}; {os.cpu_count()} cores; load average {os.getloadavg()[0]:.2f}")
    print(f"rate {args.rate:g}, max_ms {args.max_ms:g}, latency budget {args.budget_ms:g} ms")
    print("| tokens | cases | ms per 1k tokens (median) | needle kept | fail-open (over budget) |")
    print("|---|---|---|---|---|")
    for size in args.sizes:
        row = measure(size, args.cases, args.max_ms, args.budget_ms, args.rate)
        print(
            f"| {size:,} | {row['cases']} | {row['ms_per_1k']:.2f} | {row['needle_kept']}/{row['cases']} "
            f"| {row['fail_open']}/{row['cases']} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
