"""``tersegate compress --explain`` and ``report`` on Anthropic Messages requests."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import anthropic
import httpx
import pytest
from harness import MakeProxy, Upstream, tersegate_command
from samples import write_agent_trace
from test_anthropic import anthropic_config

import evaldata

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))
from anthropic_shape import turns  # noqa: E402

TRACE = "swe-agent-traces/marshmallow-1867__function_calling_replace_from_source.traj"


@pytest.fixture(params=["built", pytest.param("evaldata", marks=pytest.mark.evaldata(TRACE))])
def trace(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """A function-calling agent's trace: made here, or one of SWE-agent's."""
    return write_agent_trace(tmp_path / "built.traj") if request.param == "built" else evaldata.path(TRACE)


def compress(config: Path, request: bytes, *args: str) -> subprocess.CompletedProcess[bytes]:
    env = {
        "COLUMNS": "160",
        "PATH": "/usr/bin:/bin",
        **{k: v for k, v in os.environ.items() if k == "PYTHONPATH"},
    }
    return subprocess.run(
        [*tersegate_command(), "compress", "--config", str(config), *args],
        input=request,
        capture_output=True,
        timeout=120,
        env=env,
    )


def masked(body: bytes) -> bytes:
    return re.sub(rb"hash=[0-9a-f]{24}", b"hash=<id>", body)


def anthropic_proxy(make: MakeProxy) -> object:
    agents = (REPO / "policies" / "agents.yaml").read_text(encoding="utf-8")
    return make(
        anthropic_config(audit={"path": "audit/audit.jsonl"}, teams={"default": {"policy": "agents"}}),
        # A SWE-agent trace's outputs are mostly under the shipped 3,000-token target: a smaller
        # one, so that this turn has parts to compress.
        policies={
            "agents": agents.replace("latency_budget_ms: 300", "latency_budget_ms: 30000")
            .replace("max_tokens: 3000", "max_tokens: 400")
            # without retrieve: a dry run's own hash= ids tokenize to other counts than the
            # server's, and tooloutput fits lines to the target counting its markers
            .replace("retrieve: true", "retrieve: false")
        },
    )


@pytest.mark.slow
def test_compress_explains_an_anthropic_request_as_the_server_forwards_it(
    make_proxy: MakeProxy, upstream: Upstream, trace: Path
) -> None:
    proxy = anthropic_proxy(make_proxy)
    request = json.dumps(turns(trace)[-1], indent=1).encode()
    response = httpx.post(
        proxy.url + "/v1/messages",  # type: ignore[attr-defined]
        content=request,
        headers={"x-api-key": "k", "anthropic-version": "2023-06-01", "content-type": "application/json"},
        timeout=60,
    )
    assert response.status_code == 200
    run = compress(proxy.config_path, request, "--team", "default", "--route", "/v1/messages", "--explain")  # type: ignore[attr-defined]
    assert run.returncode == 0, run.stderr.decode()
    # Byte for byte, but for the ids in hash= markers: they are keyed with the fleet's shared secret,
    # which a dry run never reads (docs/retrieve.md), so its ids are its own.
    assert masked(run.stdout) == masked(upstream.last().body + b"\n")
    assert len(run.stdout) < len(request)
    table = run.stderr.decode()
    assert "tool (" in table and "tool-output" in table and "system" in table
    before, after = (
        response.headers["x-tersegate-tokens-before"],
        response.headers["x-tersegate-tokens-after"],
    )
    found = re.search(r"tokens (\d+) -> (\d+)", table)
    assert found is not None and int(before) > int(after) and found.group(1) == before
    # Another id (24 hex) may tokenize into a few more or fewer tokens: allow 8 per marker.
    assert abs(int(found.group(2)) - int(after)) <= 8 * run.stdout.count(b"hash=")


@pytest.mark.slow
def test_report_sums_anthropic_dollars(make_proxy: MakeProxy, upstream: Upstream) -> None:
    proxy = anthropic_proxy(make_proxy)
    client = anthropic.Anthropic(base_url=proxy.url, api_key="sk-ant-test", max_retries=0)  # type: ignore[attr-defined]
    for _ in range(2):
        client.messages.create(
            model="claude-sonnet-4-5-20250929",
            max_tokens=10,
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"x-fake-cache-write-1h": "1"},
        )
    out = subprocess.run(
        [
            *tersegate_command(),
            "report",
            "--config",
            str(proxy.config_path),
            "--format",
            "json",
            "--no-index",
        ],  # type: ignore[attr-defined]
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    [row] = (
        json.loads(out.stdout)["rows"] if isinstance(json.loads(out.stdout), dict) else json.loads(out.stdout)
    )
    assert row["model"] == "claude-sonnet-4-5-20250929" and row["requests"] == 2
    assert row["cost_after_usd"] > 0
