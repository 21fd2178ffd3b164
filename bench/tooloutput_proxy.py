"""The real tool outputs of bench/cases/tooloutput through ``tersegate serve`` with the shipped `agents` policy.

Each case is sent the way an agent sends it, with the official SDKs: on ``/v1/chat/completions``
(openai: the task as a user message, the assistant's tool call, the output as a ``tool`` message) and
on ``/v1/messages`` (anthropic: the same turn with ``tool_use`` and the output as a ``tool_result``),
each case in its own conversation, to a real ``tersegate serve`` subprocess (policies/agents.yaml
copied unchanged: its 300 ms latency budget, shipped config otherwise) in front of the fake upstreams
(tests/fake_upstream.py, which also answers Messages). The upstream records what was forwarded.

Per case and route: tokens of the output before and as forwarded (exact o200k counts, on both
routes, so they compare), the facts the next step needs found in the forwarded output, the engine's
compress time (the audit's ``compress_ms``) per 1k tokens of the output, and whether the request
failed open. The machine is shared: the milliseconds are what this run saw, under that load.

    PYTHONPATH=. python bench/tooloutput_proxy.py [--out bench/results/tooloutput_proxy.md]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, NamedTuple

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

import anthropic  # noqa: E402
import openai  # noqa: E402
import yaml  # noqa: E402
from fake_upstream import FakeUpstream, ServerThread  # noqa: E402
from harness import free_port, tersegate_command, wait_compression_ready, wait_healthy  # noqa: E402

from compressors import tokenizer_for  # noqa: E402
from compressors.markers import find_markers  # noqa: E402

CASES = REPO / "bench" / "cases" / "tooloutput"
SYSTEM = "You are a coding agent. Use the tools to inspect and fix the repository."
_QUERY = re.compile(r"^Task: (?P<task>.*?) Call: (?P<name>\w+) (?P<args>\{.*\})$", re.S)


class Case(NamedTuple):
    name: str
    text: str
    task: str
    tool: str
    args: dict[str, Any]
    facts: list[str]


class Row(NamedTuple):
    case: str
    route: str
    before: int
    after: int
    facts: int
    kept: int
    ms_per_1k: float
    fail_open: str | None
    markers: int
    forwarded: str


def cases() -> list[Case]:
    out = []
    for path in sorted(CASES.glob("*.json")):
        meta = json.loads(path.read_text())
        found = _QUERY.match(meta["query"])
        assert found is not None, path
        args = json.loads(found["args"])
        text = path.with_suffix(".txt").read_text()
        out.append(Case(path.stem, text, found["task"], found["name"], args, meta["facts"]))
    return out


def session_cases(min_chars: int = 800) -> list[Case]:
    """Each step output of the long real sessions (bench/sessions) as a case of its own: the
    session's task, the step's call, its facts (the latency check on the biggest real outputs)."""
    from bench.sessions.shapes import load, names

    out = []
    for name in names():
        session = load(name)
        for step in session["steps"]:
            if len(step["output"]) >= min_chars:
                case = f"{name}#{step['n']} `{step['command'][:40]}`"
                out.append(
                    Case(case, step["output"], session["task"], step["tool"], step["args"], step["facts"])
                )
    return out


def _config(folder: Path, upstream: str) -> Path:
    (folder / "policies").mkdir()
    shutil.copy(REPO / "policies" / "agents.yaml", folder / "policies" / "agents.yaml")
    config = {
        "listen": {"host": "127.0.0.1", "port": 0},
        "auth": "passthrough",
        "default_team": "agents",
        "upstreams": {
            "openai": {"base_url": upstream + "/v1", "api_key_env": "NO_KEY"},
            "anthropic": {"base_url": upstream, "api_key_env": "NO_KEY", "api": "anthropic"},
        },
        "default_upstream": "openai",
        "policies_dir": str(folder / "policies"),
        "teams": {"agents": {"policy": "agents"}},
        "audit": {"path": str(folder / "audit.jsonl")},
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def send_chat(client: openai.OpenAI, case: Case) -> str:
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": case.tool, "arguments": json.dumps(case.args)},
    }
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o",
        messages=[
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": case.task},
            {"role": "assistant", "content": None, "tool_calls": [call]},  # type: ignore[list-item]
            {"role": "tool", "tool_call_id": "call_1", "content": case.text},
        ],
    )
    return raw.headers["x-tersegate-request-id"]


def send_messages(client: anthropic.Anthropic, case: Case) -> str:
    raw = client.messages.with_raw_response.create(
        model="claude-sonnet-4-5",
        max_tokens=1024,
        system=SYSTEM,
        messages=[
            {"role": "user", "content": case.task},
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "tu_1", "name": case.tool, "input": case.args}],
            },
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "tu_1", "content": case.text}],
            },
        ],
    )
    return raw.headers["x-tersegate-request-id"]


def forwarded_output(body: dict[str, Any]) -> str:
    last = body["messages"][-1]
    if last["role"] == "tool":
        return str(last["content"])
    content = last["content"][0]["content"]
    return content if isinstance(content, str) else "".join(p.get("text", "") for p in content)


def run(folder: Path, chosen: list[Case]) -> list[Row]:
    upstream = FakeUpstream()
    server = ServerThread(upstream).start()
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "NO_KEY": "sk-unused"}
    log = (folder / "proxy.log").open("wb")
    cmd = [*tersegate_command(), "serve", "--config", str(_config(folder, server.url)), "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=folder)
    url = f"http://127.0.0.1:{port}"
    sent: list[tuple[Case, str, str, dict[str, Any]]] = []
    try:
        wait_healthy(url, proc, timeout=60)
        wait_compression_ready(url, timeout=180)
        chat = openai.OpenAI(base_url=url + "/v1", api_key="sk-bench", max_retries=0, timeout=120)
        claude = anthropic.Anthropic(base_url=url, api_key="sk-ant-bench", max_retries=0, timeout=120)
        for case in chosen:
            sent.append((case, "chat", send_chat(chat, case), upstream.last().json()))
            sent.append((case, "messages", send_messages(claude, case), upstream.last().json()))
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        server.stop()
        log.close()
    audit = {}
    for line in (folder / "audit.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "request_id" in record:
            audit[record["request_id"]] = record
    tokenizer = tokenizer_for("gpt-4o")
    rows = []
    for case, route, request_id, body in sent:
        text = forwarded_output(body)
        record = audit[request_id]
        before = tokenizer.count(case.text)
        rows.append(
            Row(
                case.name,
                route,
                before,
                tokenizer.count(text),
                len(case.facts),
                sum(fact in text for fact in case.facts),
                float(record.get("compress_ms") or 0.0) / max(1, before) * 1000,
                record.get("fail_open"),
                len(find_markers(text)),
                text,
            )
        )
    return rows


def _excerpt(text: str, lines: int = 3) -> str:
    """What is forwarded, in short: the first few kept lines and markers, for the table."""
    out = [line[:70] for line in text.splitlines() if line.strip()][:lines]
    return "<br>".join(f"`{line.replace('|', '/').replace('`', ' ')}`" for line in out)


def report(rows: list[Row], title: str) -> str:
    out = [
        title,
        "",
        "`PYTHONPATH=. python bench/tooloutput_proxy.py [--sessions]`: each case sent as an agent sends it (task, the",
        "assistant's tool call, the output) with the official `openai` SDK on `/v1/chat/completions` (`tool`",
        "message) and the `anthropic` SDK on `/v1/messages` (`tool_result`), through a real `tersegate serve`",
        "with policies/agents.yaml unchanged (300 ms latency budget) to tests/fake_upstream.py, which records",
        "what was forwarded. Tokens are exact o200k counts on both routes; ms per 1k tokens is the audit's",
        "`compress_ms` over the output's tokens (a shared 2-core machine, under load from other jobs).",
        "",
        "| case | route | tokens before | forwarded | smaller | facts kept | markers | ms / 1k tokens | fail-open | forwarded (first lines) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in rows:
        smaller = 1 - r.after / r.before if r.before else 0.0
        out.append(
            f"| {r.case} | {r.route} | {r.before:,} | {r.after:,} | {smaller:.0%} | {r.kept}/{r.facts} | {r.markers} "
            f"| {r.ms_per_1k:.2f} | {r.fail_open or 'no'} | {_excerpt(r.forwarded)} |"
        )
    for route in ("chat", "messages"):
        mine = [r for r in rows if r.route == route]
        big = [r for r in mine if r.before >= 200]
        before, after = sum(r.before for r in big), sum(r.after for r in big)
        small = [r for r in mine if r.before < 200]
        out.append(
            f"| **sum, {route} (outputs of 200+ tokens)** | | **{before:,}** | **{after:,}** "
            f"| **{1 - after / before:.1%}** | **{sum(r.kept for r in mine)}/{sum(r.facts for r in mine)}** | | "
            f"max {max(r.ms_per_1k for r in mine):.2f} | {sum(r.fail_open is not None for r in mine)} fail-open | "
            f"under 200 tokens untouched: {all(r.after == r.before for r in small)} |"
        )
    out.append("")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "tooloutput_proxy.md")
    parser.add_argument("--dump", type=Path, help="write each forwarded output here (<case>.<route>.txt)")
    parser.add_argument(
        "--sessions", action="store_true", help="also every step output of bench/sessions (800+ chars)"
    )
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="tooloutput-proxy-"))
    chosen = cases() + (session_cases() if args.sessions else [])
    rows = run(folder, chosen)
    if args.dump is not None:
        args.dump.mkdir(parents=True, exist_ok=True)
        for row in rows:
            name = re.sub(r"[^\w.#-]+", "_", row.case)
            (args.dump / f"{name}.{row.route}.txt").write_text(row.forwarded, encoding="utf-8")
    title = "## Through the proxy: the shipped `agents` policy on `tersegate serve` (chat and Messages)"
    text = report([r for r in rows if "#" not in r.case], title)
    if args.sessions:
        text += "\n" + report(
            [r for r in rows if "#" in r.case], "## The same, every step output of bench/sessions"
        )
    print(text)
    args.out.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
