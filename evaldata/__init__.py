"""The public evaluation data the tests and benchmarks read, and one way to read it.

The data is not part of the repository (about 14 MiB, each file under its own
licence; see ``evaldata/sources.py`` and the README's "Evaluation data"): it lies in
``../shared/evaldata`` beside the checkout (a worktree also finds it two levels up),
or wherever ``TERSEGATE_EVALDATA`` points. ``python -m evaldata.fetch`` downloads it where a network exists.

This package is not shipped in the wheel. Tests import it from the repository
root (pytest's ``pythonpath``); benchmarks, run as ``python bench/x.py``, put the
root on ``sys.path`` first.
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path
from typing import Any

__all__ = [
    "GSM8K_PROMPT",
    "HALVE_POLICY",
    "KV75",
    "KV_PROMPT",
    "NQ",
    "OPENAPI",
    "QA_PROMPT",
    "TRACES",
    "agent_messages",
    "document",
    "jsonl",
    "kv_rows",
    "missing",
    "nq_rows",
    "path",
    "qa_prompt",
    "root",
    "text",
    "trace_paths",
    "turns",
]

# The strawman the cost replays measure (bench/replay.py, bench/replay_engine.py,
# tests/proxy/test_cost_truth.py): halve every observation, when first sent (``age=""``) or once
# it is two turns old (``age=", older_than_turns: 2"``). Observations arrive as tool messages
# (function calling) or user messages (text agents).
HALVE_POLICY = """\
name: {name}
latency_budget_ms: 60000
rules:
  - name: halve-observations
    match: {{roles: [tool, user], min_tokens: 100{age}}}
    compressor: truncate
    rate: 0.5
    options: {{mode: middle, unit: line}}
"""

ENV = "TERSEGATE_EVALDATA"
REPO = Path(__file__).resolve().parents[1]

# The files the tests and benchmarks read, relative to the data's root.
NQ = "lost-in-the-middle/nq-open-oracle.jsonl.gz"
KV75 = "lost-in-the-middle/kv-retrieval-75_keys.jsonl.gz"
QA_PROMPT = "lost-in-the-middle/qa.prompt"
KV_PROMPT = "lost-in-the-middle/kv_retrieval.prompt"
GSM8K_PROMPT = "gsm8k/prompt_hardest.txt"
OPENAPI = "openai-openapi/openapi.json"
TRACES = tuple(
    f"swe-agent-traces/{name}.traj"
    for name in (
        "ctf_web_i_got_id_demo",
        "gpt4__pydicom-1458",
        "gpt4__swe-agent-test-repo-i1",
        "marshmallow-1867__function_calling_replace",
        "marshmallow-1867__function_calling_replace_from_source",
    )
)


def root() -> Path:
    """Where the data lies: ``$TERSEGATE_EVALDATA``, else ``../shared/evaldata`` beside the checkout
    (or two levels up, beside the folder of a git worktree such as ``wt/<name>``)."""
    configured = os.environ.get(ENV)
    if configured:
        return Path(configured).expanduser()
    beside = REPO.parent / "shared" / "evaldata"
    worktree = REPO.parents[1] / "shared" / "evaldata"
    return worktree if not beside.is_dir() and worktree.is_dir() else beside


def path(name: str) -> Path:
    return root() / name


def missing(*names: str) -> list[str]:
    """Which of ``names`` (default: every file the tests read) are not there."""
    wanted = names or (NQ, KV75, QA_PROMPT, KV_PROMPT, GSM8K_PROMPT, OPENAPI, *TRACES)
    return [name for name in wanted if not path(name).is_file()]


def text(name: str) -> str:
    return path(name).read_text(encoding="utf-8")


def jsonl(name: str, limit: int | None = None) -> list[dict[str, Any]]:
    """The rows of a ``.jsonl`` (or ``.jsonl.gz``) file, the first ``limit`` only if given."""
    file = path(name)
    rows: list[dict[str, Any]] = []
    with (
        gzip.open(file, "rt", encoding="utf-8") if file.suffix == ".gz" else file.open(encoding="utf-8") as f
    ):
        for line in f:
            if limit is not None and len(rows) >= limit:
                break
            rows.append(json.loads(line))
    return rows


def nq_rows(limit: int | None = None) -> list[dict[str, Any]]:
    """NaturalQuestions-Open oracle rows: ``question``, ``answers``, ``ctxs`` (one gold passage)."""
    return jsonl(NQ, limit)


def kv_rows(limit: int | None = None) -> list[dict[str, Any]]:
    """Key-value retrieval rows with 75 UUID pairs: ``ordered_kv_records``, ``key``, ``value``."""
    return jsonl(KV75, limit)


def document(row: dict[str, Any], number: int) -> str:
    """An NQ row's passage as a search result of the paper's ``qa.prompt``: ``Document [n](Title: ...) text``."""
    ctx = row["ctxs"][0]
    return f"Document [{number}](Title: {ctx['title']}) {ctx['text']}"


def qa_prompt(documents: list[str], question: str) -> str:
    """The paper's QA prompt over ``documents`` (see :func:`document`), ending ``Question: ...\nAnswer:``."""
    return text(QA_PROMPT).format(search_results="\n".join(documents), question=question)


def trace_paths() -> list[Path]:
    return [path(name) for name in TRACES]


def agent_messages(trace: str | Path) -> list[dict[str, Any]]:
    """A SWE-agent trace's history as the agent sent it to an OpenAI-compatible API.

    Only the API's fields are kept; a tool result carries the ``tool_call_id`` of the call it
    answers (the trace lists it as ``tool_call_ids``), without which the real API answers 400.
    """
    file = trace if isinstance(trace, Path) else path(trace)
    messages = []
    for m in json.loads(file.read_text(encoding="utf-8"))["history"]:
        message: dict[str, Any] = {"role": m["role"], "content": m["content"]}
        if m.get("tool_calls"):
            message["tool_calls"] = m["tool_calls"]
        if m.get("tool_call_ids"):
            message["tool_call_id"] = m["tool_call_ids"][0]
        messages.append(message)
    return messages


def turns(messages: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """The request of each turn: the history up to (not including) each assistant reply."""
    return [messages[:k] for k, m in enumerate(messages) if m["role"] == "assistant" and k > 0]
