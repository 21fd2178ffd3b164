"""Characters tiktoken encodes in the proxy's process per request, through a served proxy.

A proxy served in this process (tests/harness.py) with the audit on and a policy that halves tool
outputs, in front of the fake upstream; a 5-turn agent conversation in OpenAI chat and one in
Anthropic Messages (each turn adds a ~17k-character tool output and a 3k-character question). Every
``tiktoken.Encoding.encode_ordinary`` call in this process is counted: the policy engine's counts,
the audit cache model's ids, compaction. Compression itself runs in worker processes (not counted).
``--baseline DIR`` runs the same conversation from another checkout (``PYTHONPATH=DIR``) and prints
both side by side.

    PYTHONPATH=. python bench/tokens_once.py [--baseline /tmp/tersegate-before]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(os.environ.get("PYTHONPATH", ".").split(os.pathsep)[0]).resolve()
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import orjson  # noqa: E402
import tiktoken  # noqa: E402
from fake_upstream import FakeUpstream, ServerThread  # noqa: E402
from harness import UPSTREAM_KEY, RunningProxy, Upstream, serve_in_process  # noqa: E402

CODE = (ROOT / "proxy" / "audit" / "cache_rules.py").read_text(encoding="utf-8")
LOG = "\n".join(f"src/module_{i}.py:{i}: warning: unused import os (W0611)" for i in range(300))
HALVE = (
    "name: halve\nmode: enforce\nlatency_budget_ms: 30000\nrules: [{name: halve, match: {roles: [tool], "
    "min_tokens: 200}, compressor: truncate, rate: 0.5, options: {mode: middle, unit: line}}]\n"
)
CONFIG: dict[str, Any] = {
    "upstreams": {
        "fake": {"base_url": "{upstream}", "api_key_env": "FAKE_UPSTREAM_KEY", "timeout_s": 30},
        "claude": {"api": "anthropic", "base_url": "{upstream_root}", "api_key_env": "FAKE_UPSTREAM_KEY"},
    },
    "default_anthropic_upstream": "claude",
    "audit": {"path": "audit/audit.jsonl"},
    "teams": {"default": {"policy": "halve"}},
}
TURNS = 5


def chat_turn(messages: list[Any], k: int) -> tuple[str, dict[str, Any]]:
    if not messages:
        messages.append({"role": "system", "content": "You lint code.\n" + CODE[:4000]})
    call = {
        "id": f"call_{k}",
        "type": "function",
        "function": {"name": "bash", "arguments": '{"cmd":"lint"}'},
    }
    messages += [
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": f"call_{k}", "content": f"run {k}\n" + LOG},
        {"role": "user", "content": f"Turn {k}: what failed? " + CODE[k * 500 : k * 500 + 3000]},
    ]
    return "/v1/chat/completions", {"model": "gpt-4o", "messages": messages}


def messages_turn(messages: list[Any], k: int) -> tuple[str, dict[str, Any]]:
    if not messages:
        messages.append({"role": "user", "content": "Lint it."})
    use = {"type": "tool_use", "id": f"toolu_{k:020d}", "name": "bash", "input": {"cmd": f"lint {k}"}}
    result = {
        "type": "tool_result",
        "tool_use_id": use["id"],
        "content": f"Run {k}\n" + LOG.replace("os", "sys"),
    }
    question = {"type": "text", "text": f"Step {k}: what failed? " + CODE[k * 500 : k * 500 + 3000]}
    messages += [{"role": "assistant", "content": [use]}, {"role": "user", "content": [result, question]}]
    system = [
        {"type": "text", "text": "You lint all code.\n" + CODE[:6000], "cache_control": {"type": "ephemeral"}}
    ]
    body = {"model": "claude-sonnet-4-5", "max_tokens": 10, "system": system, "messages": messages}
    return "/v1/messages", body


def measure(proxy: RunningProxy, encoded: list[int]) -> list[tuple[str, int]]:
    """``(request, characters encoded while it was served and audited)`` per turn."""
    audit = proxy.config_path.parent / "audit" / "audit.jsonl"
    out = []
    with httpx.Client(timeout=60) as client:
        shapes: list[tuple[str, Callable[[list[Any], int], tuple[str, dict[str, Any]]]]] = [
            ("chat", chat_turn),
            ("messages", messages_turn),
        ]
        for name, turn in shapes:
            messages: list[Any] = []
            for k in range(1, TURNS + 1):
                path, body = turn(messages, k)
                written = len(audit.read_bytes().splitlines()) if audit.exists() else 0
                encoded[0] = 0
                headers = {"Authorization": "Bearer sk-x", "x-api-key": "sk-ant-x"}
                response = client.post(proxy.url + path, content=orjson.dumps(body), headers=headers)
                assert response.status_code == 200, response.text
                while len(audit.read_bytes().splitlines()) <= written:  # the audit is done
                    time.sleep(0.01)
                out.append((f"{name} turn {k}", encoded[0]))
    return out


def run() -> list[tuple[str, int]]:
    os.environ["FAKE_UPSTREAM_KEY"] = UPSTREAM_KEY
    encoded, lock, original = [0], threading.Lock(), tiktoken.Encoding.encode_ordinary

    def counting(self: tiktoken.Encoding, text: str) -> list[int]:
        with lock:
            encoded[0] += len(text)
        return original(self, text)

    app = FakeUpstream()
    server = ServerThread(app).start()
    proxy = serve_in_process(Path(tempfile.mkdtemp()), CONFIG, Upstream(app, server), {"halve": HALVE})
    tiktoken.Encoding.encode_ordinary = counting  # type: ignore[method-assign]
    try:
        return measure(proxy, encoded)
    finally:
        tiktoken.Encoding.encode_ordinary = original  # type: ignore[method-assign]
        proxy.stop()
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", help="also run from this checkout, side by side")
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)  # the baseline's child run
    args = parser.parse_args()
    ours = run()
    if args.json:
        print(orjson.dumps(ours).decode())
        return
    theirs: list[Any] = []
    if args.baseline:
        env = {**os.environ, "PYTHONPATH": args.baseline}
        child = [sys.executable, str(Path(args.baseline) / "bench" / "tokens_once.py"), "--json"]
        if not (Path(args.baseline) / "bench" / "tokens_once.py").exists():
            child[1] = str(Path(__file__).resolve())  # this script, run on the other checkout's code
        done = subprocess.run(child, env=env, capture_output=True, text=True, check=True)
        theirs = orjson.loads(done.stdout.strip().splitlines()[-1])
    print(f"| request | chars encoded, this tree |{' baseline | ratio |' if theirs else ''}")
    print(f"|---|---:|{'---:|---:|' if theirs else ''}")
    for i, (name, chars) in enumerate(ours):
        extra = f" {theirs[i][1]:,} | {chars / theirs[i][1]:.2f} |" if theirs else ""
        print(f"| {name} | {chars:,} |{extra}")


if __name__ == "__main__":
    main()
