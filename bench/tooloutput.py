"""The tool-output compressor on real outputs of real commands (bench/cases/tooloutput, see make.py).

Per case: the shape chosen, tokens before/after (o200k, exact), the facts the next step needs kept,
and ms per 1k input tokens (median of repeats, warm), beside the same text through ``truncate``
(middle, the cut a policy without shapes makes) for contrast. Then each case repeated to ~2 MB:
the whole call against one token count of the same text, in the same run (the machine is shared:
the ratio, not the milliseconds, is the figure).

    python bench/tooloutput.py [--budget 1500] [--repeats 3] [--out bench/results/tooloutput.md]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from compressors import Compressed, Target, create, tokenizer_for

CASES = Path(__file__).parent / "cases" / "tooloutput"
BIG = 2_000_000


class Row(NamedTuple):
    """One case's figures (tokens are exact o200k counts)."""

    before: int
    name: str
    shape: str
    after: int
    facts: int
    kept: int
    ms_per_1k: float
    truncate_after: int
    truncate_kept: int
    note: str


def _time(call: object, repeats: int) -> tuple[Compressed, float]:
    times: list[float] = []
    result = None
    for _ in range(repeats):
        start = time.perf_counter()
        result = call()  # type: ignore[operator]
        times.append(time.perf_counter() - start)
    assert isinstance(result, Compressed)
    return result, statistics.median(times)


def run_case(path: Path, budget: int, repeats: int) -> Row:
    text = path.with_suffix(".txt").read_text()
    meta = json.loads(path.read_text())
    tool = create("tooloutput")
    target = Target(max_tokens=budget)
    result, seconds = _time(lambda: tool.compress(text, target=target, query=meta["query"]), repeats)
    cut = create("truncate", {"mode": "middle"}).compress(text, target=target)
    facts = meta["facts"]
    return Row(
        result.tokens_before,
        path.stem,
        result.decisions[0].kind.removeprefix("shape:") if result.decisions else "unchanged",
        result.tokens_after,
        len(facts),
        sum(fact in result.text for fact in facts),
        seconds * 1000 / max(1, result.tokens_before) * 1000,
        cut.tokens_after,
        sum(fact in cut.text for fact in facts),
        result.note,
    )


def big_input(path: Path) -> str:
    text = path.with_suffix(".txt").read_text()
    if text.lstrip().startswith("["):
        value = json.loads(text)
        return json.dumps(value * (BIG // len(text) + 1), indent=4)
    return text * (BIG // len(text) + 1)


def run_big(path: Path, budget: int) -> tuple[str, float, float, float]:
    text = big_input(path)
    query = json.loads(path.read_text())["query"]
    tokenizer = tokenizer_for(None)
    start = time.perf_counter()
    tokenizer.count(text)
    count_s = time.perf_counter() - start
    start = time.perf_counter()
    create("tooloutput").compress(text, target=Target(max_tokens=budget), query=query)
    total_s = time.perf_counter() - start
    return path.stem, len(text) / 1e6, total_s * 1000, count_s * 1000


def report(rows: list[Row], big: list[tuple[str, float, float, float]], budget: int) -> str:
    out = [
        "# tooloutput on real tool outputs",
        "",
        f"`python bench/tooloutput.py --budget {budget}`: each case of bench/cases/tooloutput (real commands on",
        "encode/starlette, encode/httpx, pallets/click and this environment; make.py there says how) compressed",
        f"with `max_tokens: {budget}` and the query an agent would have. Tokens are exact o200k counts.",
        "`truncate` is the same text through `truncate` (middle) at the same budget, for contrast.",
        "",
        "| case | shape | tokens before | after | smaller | facts kept | ms / 1k tokens | truncate: after, facts |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        smaller = 1 - r.after / r.before if r.before else 0.0
        out.append(
            f"| {r.name} | {r.shape} | {r.before:,} | {r.after:,} | {smaller:.0%} | {r.kept}/{r.facts} "
            f"| {r.ms_per_1k:.2f} | {r.truncate_after:,}, {r.truncate_kept}/{r.facts} |"
        )
    big_rows = [r for r in rows if r.before >= 200]
    before = sum(r.before for r in big_rows)
    after = sum(r.after for r in big_rows)
    kept = sum(r.kept for r in rows)
    facts = sum(r.facts for r in rows)
    trunc_kept = sum(r.truncate_kept for r in rows)
    out += [
        f"| **sum (outputs of 200+ tokens)** | | **{before:,}** | **{after:,}** | **{1 - after / before:.0%}** "
        f"| **{kept}/{facts}** | | {trunc_kept}/{facts} facts |",
        "",
        "Outputs under 200 tokens are returned unchanged: "
        + ", ".join(f"{r.name} ({r.before} -> {r.after})" for r in rows if r.before < 200)
        + ".",
        "",
        "Where the target is missed, the must-keeps (failures, rare or named diagnostics, commit and hunk",
        "headers) outweigh it, and the result says so:",
        "",
    ]
    out += [f"- {r.name}: {r.note}" for r in rows if r.note]
    out += [
        "",
        "## ~2 MB inputs (each case repeated), one call against one token count of the same text",
        "",
        f"Load average when this ran: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (a shared machine:",
        "read the ratio; the call counts the input once, so 1 is the floor).",
        "",
        "| case | MB | tooloutput ms (count included) | one tokenizer.count ms | ratio |",
        "|---|---:|---:|---:|---:|",
    ]
    out += [f"| {n} | {mb:.1f} | {t:.0f} | {c:.0f} | {t / c:.1f} |" for n, mb, t, c in big]
    out.append("")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--budget", type=int, default=1500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "tooloutput.md")
    args = parser.parse_args()
    tokenizer_for(None).count("warm up")
    create("tooloutput").compress("warm up " * 400, target=Target(max_tokens=100))
    paths = sorted(CASES.glob("*.json"))
    rows = [run_case(path, args.budget, args.repeats) for path in paths]
    big = [run_big(path, args.budget) for path in paths if path.with_suffix(".txt").stat().st_size > 2000]
    text = report(rows, big, args.budget)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
