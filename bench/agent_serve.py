"""bench/agent_replay.py --serve: the sessions through real ``tersegate serve`` subprocesses.

One ``tersegate serve`` per policy (its own config: the shipped 50,000-character part cap, lifted
for the ``first30`` strawman as in-process), JSONL audit on, all forwarding to one
tests/prefix_cache_upstream.py on loopback. Each (policy, session) replays under its own client
key, so it has its own cache scope upstream and in the audit's cache model. Returns the invoice
(priced from the usage the upstream reported) and the audit's before/after sums per API and
policy, and the facts lost from each forwarded newest tool output.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx
import orjson
import yaml
from agent_replay import APIS, GENEROUS_MS, STRAWMAN_PART_CHARS, bodies_of, policy_yaml, price_of
from fake_upstream import ServerThread
from harness import free_port, tersegate_command, wait_compression_ready, wait_healthy
from prefix_cache_upstream import PrefixCacheUpstream
from replay import billed

from bench.sessions.shapes import Session, newest_output

REPO = Path(__file__).resolve().parents[1]


class RecordingUpstream(PrefixCacheUpstream):
    """The prefix-cache upstream, also keeping each request's newest tool output per scope."""

    def __init__(self) -> None:
        super().__init__()
        self.newest: dict[str, list[str | None]] = {}

    def _openai_usage(self, scope: str, body: dict[str, Any]) -> dict[str, Any]:
        self.newest.setdefault(scope, []).append(newest_output(body))
        return super()._openai_usage(scope, body)

    def _anthropic_usage(self, scope: str, body: dict[str, Any]) -> dict[str, Any]:
        self.newest.setdefault(scope, []).append(newest_output(body))
        return super()._anthropic_usage(scope, body)


def _config(folder: Path, label: str, upstream_url: str) -> Path:
    (folder / "policies").mkdir()
    team: dict[str, Any] = {}
    text = policy_yaml(label)
    if text is not None:
        policy = yaml.safe_load(text)
        policy.update(name=label, latency_budget_ms=GENEROUS_MS)
        (folder / "policies" / f"{label}.yaml").write_text(yaml.safe_dump(policy), encoding="utf-8")
        team = {"policy": label}
    config = {
        "listen": {"host": "127.0.0.1", "port": 0},
        "auth": "passthrough",
        "default_team": f"{label}-openai",
        "upstreams": {"fake": {"base_url": upstream_url, "api_key_env": "NO_KEY", "timeout_s": 300}},
        "default_upstream": "fake",
        "policies_dir": str(folder / "policies"),
        # A team per API: each replay its own compress-once memo, as in-process.
        "teams": {f"{label}-{api}": team for api in APIS},
        "audit": {"path": str(folder / "audit.jsonl")},
        "compression": {"max_part_chars": STRAWMAN_PART_CHARS.get(label, 50_000)},
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def _serve_one(label: str, sessions: list[Session], apis: list[str], upstream_url: str) -> Path:
    """Replay every session through one ``tersegate serve``; returns its audit file."""
    folder = Path(tempfile.mkdtemp(prefix=f"agent-serve-{label}-"))
    path = _config(folder, label, upstream_url)
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "NO_KEY": "sk-unused"}
    with (folder / "proxy.log").open("wb") as log:
        proc = subprocess.Popen(
            [*tersegate_command(), "serve", "--config", str(path), "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=folder,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc, timeout=60)
        wait_compression_ready(url, timeout=180)
        with httpx.Client(timeout=600) as client:
            for session in sessions:
                for api in apis:
                    for body in bodies_of(session, api):
                        response = client.post(
                            url + APIS[api][1],
                            content=orjson.dumps(body),
                            headers={
                                "Authorization": f"Bearer sk-{label}-{session['name']}",
                                "X-Tersegate-Team": f"{label}-{api}",
                            },
                        )
                        response.raise_for_status()
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    return folder / "audit.jsonl"


def serve_replays(sessions: list[Session], apis: list[str], labels: list[str]) -> dict[str, Any]:
    """``{"invoice": {api: {label: $}}, "audit": {api: {label: (before $, after $)}}, "lost": {api: {label: n}}}``."""
    upstream = RecordingUpstream()
    server = ServerThread(upstream).start()
    audits = {}
    try:
        for label in labels:
            audits[label] = _serve_one(label, sessions, apis, server.url + "/v1")
            print(f"served {label}", file=sys.stderr, flush=True)
    finally:
        server.stop()
    api_of = {model: api for api, (model, _) in APIS.items()}
    invoice: dict[str, dict[str, float]] = {api: {} for api in apis}
    for _, scope, usage in upstream.served:
        key, model, _ = scope.split("|")
        # The longest label first: "agents-nocompact-<session>" also starts with "agents-".
        label = next(lb for lb in sorted(labels, key=len, reverse=True) if key.startswith(f"Bearer sk-{lb}-"))
        api = api_of[model]
        invoice[api][label] = invoice[api].get(label, 0.0) + billed(usage, price_of(api))[0]
    audit: dict[str, dict[str, tuple[float, float]]] = {api: {} for api in apis}
    for label, path in audits.items():
        for line in path.read_bytes().splitlines():
            record = orjson.loads(line)
            api = api_of[record["model"]]
            before, after = audit[api].get(label, (0.0, 0.0))
            audit[api][label] = (before + record["cost_before_usd"], after + record["cost_after_usd"])
    lost = _lost(upstream, sessions, labels)
    return {"invoice": invoice, "audit": audit, "lost": lost}


def _lost(
    upstream: RecordingUpstream, sessions: list[Session], labels: list[str]
) -> dict[str, dict[str, int]]:
    """Facts missing from the forwarded newest outputs: ``{api: {label: count}}`` over every session."""
    api_of = {model: api for api, (model, _) in APIS.items()}
    lost: dict[str, dict[str, int]] = {api: {} for api in APIS}
    for label in labels:
        for session in sessions:
            for scope, newest in upstream.newest.items():
                key, model, _ = scope.split("|")
                if key != f"Bearer sk-{label}-{session['name']}":
                    continue
                counts = lost[api_of[model]]
                for step, text in zip(session["steps"], newest[1:], strict=True):
                    missing = [f for f in step["facts"] if f not in (text or "")]
                    counts[label] = counts.get(label, 0) + len(missing)
    return lost
