"""Quality of the ``tokens`` compressor on real data: do answers and numbers survive?

NQ-open oracle (2655 rows): ``Passage: <ctx>\\nQuestion: <q>`` compressed with the
question as query; a case survives when a gold answer is found in the output
after NQ-open answer normalization of both. GSM8K ``prompt_hardest.txt``: every
``The answer is N`` number survives and the share of all numbers (as a multiset)
that survive. The achieved rate (mean tokens_after/tokens_before) is reported so
that nobody can cheat the rate.

    python bench/quality_tokens.py [--rates 0.5 0.33] [--scorer selfinfo] [--limit N]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import string
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from compressors.base import Target
from compressors.tokenizer import tokenizer_for
from compressors.tokens import Tokens

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for evaldata/
import evaldata

NQ = evaldata.path(evaldata.NQ)
GSM8K = evaldata.path(evaldata.GSM8K_PROMPT)
GSM8K_TEST = "gsm8k/gsm8k_test.jsonl"  # the new questions asked after the 8-shot prompt
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_ANSWER_LINE = re.compile(r"The answer is (\S+)")
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)
_TOKENIZER = tokenizer_for("gpt-4o")
# The selfinfo keep network was trained on rows 0-1799 (bench/fit_selfinfo.py): report the rest apart.
FIT_ROWS = 1800


def normalize_answer(text: str) -> str:
    """NQ-open normalization: lowercase, punctuation and articles removed, whitespace collapsed."""
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCT)).split())


def nq_rows(limit: int | None = None) -> list[dict[str, Any]]:
    return evaldata.nq_rows(limit or None)


def nq_case(compressor: Tokens, row: dict[str, Any], rate: float) -> tuple[bool, bool, int, int, str]:
    question = row["question"]
    prompt = f"Passage: {row['ctxs'][0]['text']}\nQuestion: {question}"
    result = compressor.compress(prompt, target=Target(rate=rate), query=question, model="gpt-4o")
    output = normalize_answer(result.text)
    golds = [g for g in (normalize_answer(a) for a in row["answers"]) if g]
    survived = any(g in output for g in golds)
    # Stricter: whole words only, so that "18" does not count inside "1860".
    whole = any(f" {g} " in f" {output} " for g in golds)
    return survived, whole, result.tokens_before, result.tokens_after, _failure(row, result, golds, output)


def _failure(row: dict[str, Any], result: Any, golds: list[str], output: str) -> str:
    """Why an answer did not survive: no room, some of its words kept, or none of them ("" if it did)."""
    if any(g in output for g in golds):
        return ""
    room = (result.target_tokens or 0) - _TOKENIZER.count(f"\n{row['question']}")
    if all(_TOKENIZER.count(f" {a}") > room for a in row["answers"]):
        return "cannot fit"
    kept = set(output.split()) - set(normalize_answer(row["question"]).split())
    return "partial" if any(set(g.split()) & kept for g in golds) else "dropped"


def run_nq(compressor: Tokens, rows: list[dict[str, Any]], rate: float) -> dict[str, Any]:
    started = time.perf_counter()
    survived = whole_words = 0
    flags: list[bool] = []
    ratios: list[float] = []
    over = 0
    failures: Counter[str] = Counter()
    for row in rows:
        ok, whole, before, after, failure = nq_case(compressor, row, rate)
        if failure:
            failures[failure] += 1
        survived += ok
        flags.append(ok)
        whole_words += whole
        ratios.append(after / before)
        over += after > round(before * rate) * 1.05
    return {
        "bench": "nq-oracle answer survival",
        "rate": rate,
        "cases": len(rows),
        "survival": round(survived / len(rows), 4),
        "survival_whole_words": round(whole_words / len(rows), 4),
        f"survival_fit_rows_0_{FIT_ROWS - 1}": round(statistics.fmean(flags[:FIT_ROWS]), 4),
        f"survival_held_out_{FIT_ROWS}_up": (
            round(statistics.fmean(flags[FIT_ROWS:]), 4) if len(flags) > FIT_ROWS else None
        ),
        "failures_all_rows": dict(sorted(failures.items())),
        "achieved_rate": round(statistics.fmean(ratios), 4),
        "over_budget_cases": over,
        "seconds": round(time.perf_counter() - started, 2),
    }


def run_gsm8k(compressor: Tokens, rate: float) -> dict[str, Any]:
    text = GSM8K.read_text(encoding="utf-8")
    result = compressor.compress(text, target=Target(rate=rate), model="gpt-4o")
    numbers_in = Counter(_NUMBER.findall(text))
    numbers_out = Counter(_NUMBER.findall(result.text))
    answers = _ANSWER_LINE.findall(text)
    output_numbers = set(numbers_out)
    # Each answer's number must survive on the line that closes its example.
    answer_lines = [line for line in result.text.splitlines() if line.strip()]
    answers_kept = sum(
        1 for a in answers if a in output_numbers and any(line.endswith(a) for line in answer_lines)
    )
    return {
        "bench": "gsm8k prompt_hardest numbers",
        "rate": rate,
        "answers_kept": f"{answers_kept}/{len(answers)}",
        "numbers_kept": round(sum((numbers_in & numbers_out).values()) / sum(numbers_in.values()), 4),
        "achieved_rate": round(result.ratio, 4),
        "tokens": f"{result.tokens_after}/{result.tokens_before}",
    }


def gsm8k_prompts(questions: int) -> list[tuple[str, str]]:
    """``(prompt, new question line)``: the 8-shot prompt, then a GSM8K test question to answer."""
    demos = GSM8K.read_text(encoding="utf-8").rstrip()
    rows = evaldata.jsonl(GSM8K_TEST, questions)
    asked = [f"Question: {row['question']}\nLet's think step by step" for row in rows]
    return [(f"{demos}\n\n{line}\n", line) for line in asked]


def run_gsm8k_templates(compressor: Tokens, rate: float, questions: int) -> dict[str, Any]:
    """Per demonstration of 8-shot prompts with a new question: its ``The answer is N`` line verbatim."""
    answers = _ANSWER_LINE.findall(GSM8K.read_text(encoding="utf-8"))
    kept = numbers = total = 0
    ratios: list[float] = []
    for prompt, _ in gsm8k_prompts(questions):
        result = compressor.compress(prompt, target=Target(rate=rate), model="gpt-4o")
        lines = set(result.text.splitlines())
        kept += sum(f"The answer is {a}" in lines for a in answers)
        numbers += sum(a in _NUMBER.findall(result.text) for a in answers)
        total += len(answers)
        ratios.append(result.ratio)
    return {
        "bench": "gsm8k 8-shot + new question: 'The answer is N' lines kept verbatim",
        "rate": rate,
        "demonstrations": total,
        "answer_lines_kept": f"{kept}/{total}",
        "share": round(kept / total, 4),
        "final_numbers_kept": f"{numbers}/{total}",
        "achieved_rate": round(statistics.fmean(ratios), 4),
    }


def _segments(text: str) -> list[str]:
    """The output cut at each line opening with ``Question:`` (one segment per example, the last asks)."""
    starts = [m.start() for m in re.finditer(r"^Question:", text, re.MULTILINE)]
    return [text[a:b] for a, b in zip(starts, [*starts[1:], len(text)], strict=True)]


def run_gsm8k_coarse(questions: int, divisor: int = 20) -> dict[str, Any]:
    """``examples: select`` at 1/``divisor`` of the demonstrations' tokens (the new question on top,
    verbatim): complete demonstrations, fragments, and the new question intact."""
    compressor = Tokens({"examples": "select"})
    demos_tokens = _TOKENIZER.count(GSM8K.read_text(encoding="utf-8").rstrip())
    complete_cases = fragment_cases = verbatim = 0
    kept_tokens: list[int] = []
    prompts = gsm8k_prompts(questions)
    for prompt, line in prompts:
        budget = round(demos_tokens / divisor) + _TOKENIZER.count(f"\n\n{line}\n")
        result = compressor.compress(prompt, target=Target(max_tokens=budget), model="gpt-4o")
        segments = _segments(result.text)
        verbatim += bool(segments) and segments[-1].strip() == line
        examples = segments[:-1]
        complete = [
            s
            for s in examples
            if "Let's think step by step" in s and _ANSWER_LINE.search(s) and s.count("\n") >= 3
        ]
        complete_cases += len(complete) >= 1
        fragment_cases += len(complete) < len(examples)
        kept_tokens.append(result.tokens_after)
    return {
        "bench": f"gsm8k coarse-to-fine at 1/{divisor} of the demonstrations (+ new question verbatim)",
        "prompts": len(prompts),
        "with_a_complete_demonstration": f"{complete_cases}/{len(prompts)}",
        "with_a_fragment": f"{fragment_cases}/{len(prompts)}",
        "new_question_verbatim": f"{verbatim}/{len(prompts)}",
        "demonstrations_tokens": demos_tokens,
        "median_tokens_after": statistics.median(kept_tokens),
    }


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    compressor = Tokens({"scorer": args.scorer})
    rows = nq_rows(args.limit)
    results = [run_nq(compressor, rows, rate) for rate in args.rates]
    results.append(run_gsm8k(compressor, 0.5))
    results.append(run_gsm8k_templates(compressor, 0.5, args.gsm8k_questions))
    results.append(run_gsm8k_coarse(args.gsm8k_questions))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", type=float, nargs="+", default=[0.5, 0.33])
    parser.add_argument("--scorer", default="selfinfo")
    parser.add_argument("--limit", type=int, default=None, help="first N NQ rows only")
    parser.add_argument(
        "--gsm8k-questions", type=int, default=20, help="new questions after the 8-shot prompt"
    )
    args = parser.parse_args(argv)
    if not NQ.exists():
        print(f"evaldata missing: {NQ}", file=sys.stderr)
        return 2
    for row in run(args):
        print(json.dumps(row, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
