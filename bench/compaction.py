"""History compaction on a long agent session: invoice and audit, through a real proxy, per cached discount.

The session: an agent reading a public code base (an installed package's sources: httpx by
default) with real commands (``ls``, ``cat``, ``grep -rn``), each output the command's real output,
the assistant's words pointing at a name in the output it just read; 45 tool steps by default.
Each turn is sent through the in-process proxy (the ``serve`` app, audit on) to
tests/prefix_cache_upstream.py, once per team: ``none`` (passthrough), ``agents-no-compaction``
(the shipped agents policy with ``compaction: false``) and ``agents`` (shipped). Models: gpt-4o
(cached input 50% off), gpt-4.1 (75%), gpt-5 (90%), and the same session as Claude Code sends it
to Anthropic (claude-sonnet-4-5: breakpoints 1 h on the system prompt, 5 min on the newest block).

Reported per team and model: input tokens, cached share, invoice vs none (priced from the usage
the upstream reported), audit before vs the passthrough invoice and audit after vs the invoice,
batch turns, fail-open turns (audit records with a ``fail_open`` reason; the policies run with a 60 s
latency budget, to show what they save rather than how busy the machine is), and facts kept: of the
names each assistant reply pointed at in the output before it, how many the last turn still forwards.
Figures move by ~0.1 point between runs: each run is a new deployment whose random retrieval secret
gives other ``hash=`` ids, and 24 hex characters do not always tokenize to the same length.

    PYTHONPATH=. python bench/compaction.py [--steps 45] [--package starlette] [--sessions FILE.json ...]

``--sessions`` adds sessions given as JSON lists of chat messages (e.g. bench/sessions/),
``--swe-agent`` the five SWE-agent traces (about 12 turns each); ``--steps 0`` leaves out the
code-reading session; ``--set margin=3 keep_tokens=2000`` overrides the agents policy's compaction.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO / "bench"), str(REPO)]

from anthropic_shape import MODEL as ANTHROPIC_MODEL  # noqa: E402
from anthropic_shape import turns as anthropic_turns  # noqa: E402
from fake_upstream import ServerThread  # noqa: E402
from prefix_cache_upstream import PrefixCacheUpstream  # noqa: E402
from replay import billed, serve_config  # noqa: E402
from sessions.shapes import newest_output  # noqa: E402

import evaldata  # noqa: E402
from evaldata import agent_messages, turns  # noqa: E402
from proxy.audit.pricing import PriceBook  # noqa: E402
from proxy.cli.serve import uvicorn_config  # noqa: E402
from proxy.config.model import load_config  # noqa: E402
from proxy.server.app import create_app  # noqa: E402
from proxy.server.services import build_services  # noqa: E402

MODELS = {"gpt-4o": "50%", "gpt-4.1": "75%", "gpt-5": "90%", ANTHROPIC_MODEL: "90%, writes 1.25x/2x"}
TEAMS = ("none", "agents-no-compaction", "agents")


def _run(command: list[str], cwd: Path) -> str:
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)
    return (done.stdout + done.stderr)[:60_000]


def _call(i: int, command: str) -> dict[str, Any]:
    arguments = json.dumps({"command": command})
    return {"id": f"call_{i}", "type": "function", "function": {"name": "bash", "arguments": arguments}}


def code_session(package: str, steps: int) -> list[dict[str, Any]]:
    """An agent reading ``package``'s sources with real commands (see module docs)."""
    spec = importlib.util.find_spec(package)
    assert spec is not None and spec.submodule_search_locations, package
    root = Path(next(iter(spec.submodule_search_locations))).parent
    files = sorted(
        p.relative_to(root).as_posix() for p in (root / package).rglob("*.py") if p.stat().st_size > 1500
    )
    messages: list[dict[str, Any]] = [
        {
            "role": "system",
            "content": "You are a coding agent working in a Python repository. Use the bash tool.",
        },
        {"role": "user", "content": f"Explain how {package} handles a request end to end, citing functions."},
    ]
    words, command = "Let me look at the layout first.", f"ls -la {package}"
    for i in range(steps):
        messages.append({"role": "assistant", "content": words, "tool_calls": [_call(i, command)]})
        output = _run(["bash", "-c", command], root)
        messages.append({"role": "tool", "tool_call_id": f"call_{i}", "content": output})
        names = re.findall(r"^\s*(?:async )?def (\w{4,})", output, re.M) or re.findall(
            r"\b(\w+\.py)\b", output
        )
        name = names[len(names) // 2] if names else package
        target = files[(i // 2) % len(files)]
        if i % 2 == 0:
            words, command = f"{name} looks central; where else is it used?", f"grep -rn {name} {package}"
        else:
            words, command = f"{name} is used there. Next: {target}.", f"cat {target}"
    messages.append({"role": "assistant", "content": "That is the whole path of a request."})
    return messages


def facts(messages: list[dict[str, Any]]) -> list[tuple[int, str]]:
    """``(index of a tool output, a name the next assistant reply pointed at in it)``."""
    out = []
    for i in range(len(messages) - 1):
        if messages[i]["role"] == "tool" and messages[i + 1]["role"] == "assistant":
            found = re.match(r"(\w+) (?:looks central|is used there)", messages[i + 1].get("content") or "")
            if found and found.group(1) in messages[i]["content"]:
                out.append((i, found.group(1)))
    return out


class Recording(PrefixCacheUpstream):
    """The upstream, also keeping the last body it received per cache scope (what was forwarded)."""

    def __init__(self) -> None:
        super().__init__()
        self.last: dict[str, dict[str, Any]] = {}
        self.newest: dict[str, list[str]] = {}  # per scope, each turn's newest tool output as forwarded

    def _scope(self, headers: dict[str, str], body: dict[str, Any]) -> str:
        key = super()._scope(headers, body)
        self.last[key] = body
        self.newest.setdefault(key, []).append(newest_output(body) or "")
        return key


def write_config(folder: Path, upstream_url: str, knobs: dict[str, Any]) -> Path:
    (folder / "policies").mkdir()
    shipped = yaml.safe_load((REPO / "policies" / "agents.yaml").read_text(encoding="utf-8"))
    shipped["latency_budget_ms"] = 60000  # what the policy saves, not how busy this machine is
    tuned = {**shipped.get("compaction"), **knobs}
    for name, compaction in (("agents", tuned), ("agents-no-compaction", False)):
        policy = {**shipped, "name": name, "compaction": compaction}
        (folder / "policies" / f"{name}.yaml").write_text(yaml.safe_dump(policy), encoding="utf-8")
    return serve_config(folder, upstream_url, TEAMS[1:])


def send_all(base_url: str, sessions: list[list[dict[str, Any]]]) -> None:
    with httpx.Client(timeout=600) as client:
        for team in TEAMS:
            for s, messages in enumerate(sessions):
                requests = [
                    ("/chat/completions", {"model": m, "messages": t})
                    for m in MODELS
                    if m != ANTHROPIC_MODEL
                    for t in turns(messages)
                ]
                requests += [("/messages", body) for body in anthropic_turns(messages)]
                for path, body in requests:
                    response = client.post(
                        base_url + path,
                        content=orjson.dumps(body),
                        headers={"Authorization": f"Bearer sk-{team}-{s}", "X-Tersegate-Team": team},
                    )
                    response.raise_for_status()


def tables(upstream: PrefixCacheUpstream, audit: Path) -> None:
    prices = PriceBook()
    acc: dict[tuple[str, str], list[float]] = {}
    for _, scope, usage in upstream.served:
        key, model, _ = scope.split("|")
        team = key.removeprefix("Bearer sk-").rsplit("-", 1)[0]
        dollars, prompt, cached = billed(usage, prices.price_for(model))
        row = acc.setdefault((team, model), [0.0, 0, 0, 0.0, 0.0, 0, 0, 0.0, 0])
        row[0] += dollars
        row[1] += prompt
        row[2] += cached
    previous: dict[tuple[str, str], int] = {}
    for line in audit.read_bytes().splitlines():
        r = orjson.loads(line)
        row = acc[(r["team"], r["model"])]
        row[3] += r["cost_before_usd"]
        row[4] += r["cost_after_usd"]
        # A batch turn: the history forwarded shrank (it only grows otherwise; a new session too).
        shrank = r["tokens_after"] < previous.get((r["team"], r["model"]), 0) and "compaction" in r["rules"]
        previous[(r["team"], r["model"])] = r["tokens_after"]
        row[5] += shrank
        row[6] += shrank and r["saved_usd"] < 0
        row[7] += r["saved_usd"] if shrank else 0.0
        row[8] += r["fail_open"] is not None
    print(
        "| team | model (cached discount) | input tokens | cached share | invoice $ | invoice vs none | "
        "audit before vs none invoice | audit after vs invoice | batch turns | of them saved_usd < 0 | "
        "saved_usd on batch turns | fail-open turns |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for model, discount in MODELS.items():
        base = acc[("none", model)][0]
        for team in TEAMS:
            d, p, c, before, after, batches, losses, saved, failed = acc[(team, model)]
            print(
                f"| {team} | {model} ({discount}) | {int(p):,} | {100 * c / p:.1f}% | {d:.4f} | {100 * (d / base - 1):+.1f}% | "
                f"{100 * (before / base - 1):+.2f}% | {100 * (after / d - 1):+.3f}% | {int(batches)} | {int(losses)} | "
                f"{saved:+.4f} | {int(failed)} |"
            )


def facts_kept(sessions: list[list[dict[str, Any]]], upstream: Recording) -> None:
    print(
        "\n| session | steps | history tokens (o200k, last turn) | names pointed at | kept by agents (last turn) "
        "| kept in the newest output when it was newest (gpt-5, Anthropic) |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    from compressors.tokenizer import tokenizer_for

    count = tokenizer_for("gpt-5").count
    for s, messages in enumerate(sessions):
        wanted = facts(messages)
        sent = {
            k.split("|")[1]: v for k, v in upstream.last.items() if k.startswith(f"Bearer sk-agents-{s}|")
        }
        kept = [
            sum(name in orjson.dumps(sent[m]).decode() for _, name in wanted)
            for m in ("gpt-5", ANTHROPIC_MODEL)
        ]
        steps = sum(m["role"] == "tool" for m in messages)
        tokens = sum(count(m.get("content") or "") for m in turns(messages)[-1])
        # the step that needs a name reads it in the newest output: turn j + 1 forwards tool output j
        outputs = [i for i, m in enumerate(messages) if m["role"] == "tool"]
        newest = []
        for m in ("gpt-5", ANTHROPIC_MODEL):
            forwarded = next(
                v for k, v in upstream.newest.items() if k.startswith(f"Bearer sk-agents-{s}|{m}|")
            )
            newest.append(sum(name in forwarded[outputs.index(i) + 1] for i, name in wanted))
        print(
            f"| {s} | {steps} | {tokens:,} | {len(wanted)} | {kept[0]} (gpt-5), {kept[1]} (Anthropic) "
            f"| {newest[0]}, {newest[1]} |"
        )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=45)
    parser.add_argument("--package", default="httpx")
    parser.add_argument("--sessions", type=Path, nargs="*", default=[])
    parser.add_argument("--swe-agent", action="store_true", help="add the five SWE-agent traces (short)")
    parser.add_argument("--set", nargs="*", default=[], help="compaction knobs to override: margin=2 ...")
    args = parser.parse_args()
    knobs = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.set)}
    sessions = [code_session(args.package, args.steps)] if args.steps else []
    sessions += [json.loads(p.read_text()) for p in args.sessions]
    if args.swe_agent:
        sessions += [agent_messages(p) for p in evaldata.trace_paths()]
    upstream = Recording()
    up = ServerThread(upstream).start()
    with tempfile.TemporaryDirectory() as folder:
        services = build_services(load_config(write_config(Path(folder), up.url + "/v1", knobs)))
        app = create_app(services)
        proxy = ServerThread(app, config=uvicorn_config(app, host="127.0.0.1", port=0, log_level="warning"))
        proxy.start()
        t0 = time.perf_counter()
        await asyncio.to_thread(send_all, proxy.url + "/v1", sessions)
        proxy.stop()
        up.stop()
        print(
            f"{len(sessions)} session(s), {len(upstream.served)} requests in {time.perf_counter() - t0:.0f} s\n"
        )
        tables(upstream, Path(folder) / "audit.jsonl")
    facts_kept(sessions, upstream)


if __name__ == "__main__":
    asyncio.run(main())
