"""Compression speed: milliseconds per 1,000 input tokens, median over repeats.

Input: a ~20k-token prompt from the evaluation data (evaldata/): a 20-document NQ prompt in
the lost-in-the-middle ``qa.prompt`` format (oracle passages, one question),
then the tool outputs of a SWE-agent trace (what normalize is for).

    python bench/speed.py [--repeats N] [--only NAME ...]
    ONEDNN_MAX_CPU_ISA=AVX2 python bench/speed.py --only relevance/embedding-openvino-int8

The second line measures OpenVINO's int8 encoder as an AVX2-only CPU would run it (oneDNN, which
OpenVINO's kernels use, stops at the named instruction set); ONNX Runtime picks its kernels from
the CPU's flags and cannot be held back that way.

Prints a table; writes nothing. One warm-up call per row loads models and
encodings first, so rows measure steady-state compression. Embedding rows are
timed twice: cold (the vector cache cleared before each repeat: documents never
seen before, the case of each new RAG request) and warm (every text cached).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for evaldata/
import evaldata

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

MODEL = "gpt-4o"
TARGET_TOKENS = 20_000

# row name -> (registry name, options, bar in ms per 1k tokens)
ROWS: dict[str, tuple[str, Mapping[str, Any], float]] = {
    "normalize": ("normalize", {}, 5.0),
    "truncate": ("truncate", {"mode": "middle"}, 5.0),
    "relevance/bm25": ("relevance", {"scorer": "bm25"}, 5.0),
    "tokens/selfinfo": ("tokens", {"scorer": "selfinfo"}, 5.0),
    "relevance/embedding": ("relevance", {"scorer": "embedding"}, 60.0),
    "relevance/embedding-torch": ("relevance", {"scorer": "embedding", "backend": "torch"}, 60.0),
    "relevance/embedding-onnx": ("relevance", {"scorer": "embedding", "backend": "onnx"}, 60.0),
    "relevance/embedding-onnx-int8": ("relevance", {"scorer": "embedding", "backend": "onnx-int8"}, 60.0),
    "relevance/embedding-openvino-int8": (
        "relevance",
        {"scorer": "embedding", "backend": "openvino-int8"},
        60.0,
    ),
}


def build_prompt() -> tuple[str, str]:
    """``(prompt, question)``: NQ documents in qa.prompt format, then SWE-agent tool output."""
    from compressors.tokenizer import tokenizer_for

    tokenizer = tokenizer_for(MODEL)
    rows = evaldata.nq_rows(20)
    question = rows[7]["question"]
    qa = evaldata.qa_prompt([evaldata.document(row, i) for i, row in enumerate(rows, 1)], question)
    tool_outputs: list[str] = []
    for trace in evaldata.TRACES:
        messages = evaldata.agent_messages(trace)
        tool_outputs += [str(m["content"]) for m in messages if m["role"] in ("tool", "user")]
    prompt = qa
    for output in tool_outputs:
        if tokenizer.count(prompt) >= TARGET_TOKENS:
            break
        prompt += "\n\n" + output
    return prompt, question


def build_documents_prompt() -> tuple[str, str]:
    """``(prompt, question)`` for the relevance rows: ~20k tokens that are ALL candidate units
    (NQ documents in qa.prompt format), so every token is scored. The mixed prompt above puts
    the SWE-agent text after the question, where relevance treats it as fixed suffix text."""
    from compressors.tokenizer import tokenizer_for

    tokenizer = tokenizer_for(MODEL)
    rows = evaldata.nq_rows(400)
    lines: list[str] = []
    for i, row in enumerate(rows, 1):
        lines.append(evaldata.document(row, i))
        if i % 20 == 0 and tokenizer.count("\n".join(lines)) >= TARGET_TOKENS:
            break
    question = rows[7]["question"]
    return evaldata.qa_prompt(lines, question), question


def time_row(
    registry_name: str, options: Mapping[str, Any], prompt: str, question: str, repeats: int, *, cold: bool
) -> float:
    from compressors.base import Target
    from compressors.embedding import DEFAULT_BACKEND, Embedder
    from compressors.registry import create

    compressor = create(registry_name, options)
    target = Target(rate=0.5)
    compressor.compress(prompt, target=target, query=question, model=MODEL)  # warm-up: loads models
    # Same model and backend share one loaded model and its vector cache.
    embedder = Embedder(backend=str(options.get("backend", DEFAULT_BACKEND))) if cold else None
    times: list[float] = []
    for _ in range(repeats):
        if embedder is not None:
            embedder.clear_cache()
        start = time.perf_counter()
        compressor.compress(prompt, target=target, query=question, model=MODEL)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--only", nargs="+", choices=sorted(ROWS), metavar="NAME")
    args = parser.parse_args(argv)
    if evaldata.missing(evaldata.NQ, evaldata.QA_PROMPT, *evaldata.TRACES):
        print(f"evaldata not found at {evaldata.root()} (python -m evaldata.fetch)", file=sys.stderr)
        return 2
    from compressors.tokenizer import tokenizer_for

    inputs = {"mixed": build_prompt(), "documents": build_documents_prompt()}
    counts = {kind: tokenizer_for(MODEL).count(text) for kind, (text, _) in inputs.items()}
    print(
        f"inputs: mixed {counts['mixed']} tokens (NQ documents + SWE-agent output; normalize, truncate, tokens), "
        f"documents {counts['documents']} tokens (all candidate units; relevance rows); model {MODEL}, "
        f"target rate 0.5, {args.repeats} repeats"
    )
    from compressors.cpu import cpu_info

    # The fastest int8 runtime differs between CPUs (AVX-512 VNNI or not): say which this was.
    print(f"cpu: {cpu_info().describe()}, {os.cpu_count()} cores; load average {os.getloadavg()[0]:.2f}")
    # OpenVINO's kernels held to a lesser CPU (ONNX Runtime ignores it): say so beside the flags.
    if isa := os.environ.get("ONEDNN_MAX_CPU_ISA"):
        print(f"ONEDNN_MAX_CPU_ISA={isa}: OpenVINO runs as on a CPU with no more than {isa}")
    print(f"{'compressor':<32}{'ms total':>10}{'ms/1k tok':>11}{'bar':>7}  verdict")
    for name in args.only or list(ROWS):
        registry_name, options, bar = ROWS[name]
        embeds = registry_name == "relevance" and options.get("scorer", "embedding") != "bm25"
        kind = "documents" if registry_name == "relevance" else "mixed"
        (prompt, question), tokens = inputs[kind], counts[kind]
        for cold in (True, False) if embeds else (False,):
            label = f"{name} ({'cold' if cold else 'warm'})" if embeds else name
            try:
                total = time_row(registry_name, options, prompt, question, args.repeats, cold=cold)
            except Exception as exc:  # others' compressors may be missing or broken: report, go on
                print(f"{label:<32}{'not available':>21}  ({type(exc).__name__}: {str(exc)[:60]})")
                continue
            per_k = total / tokens * 1000
            verdict = "ok" if per_k <= bar else "OVER"
            print(f"{label:<32}{total:>10.1f}{per_k:>11.2f}{bar:>7.0f}  {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
