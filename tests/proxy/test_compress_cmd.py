"""``tersegate compress`` prints exactly the bytes the server forwards, and explains each part."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import httpx
import pytest
from harness import MakeProxy, Upstream, tersegate_command
from samples import write_agent_trace

import evaldata

REPO = Path(__file__).resolve().parents[2]
TRACE = "swe-agent-traces/marshmallow-1867__function_calling_replace_from_source.traj"


def masked(body: bytes) -> bytes:
    return re.sub(rb"hash=[0-9a-f]{24}", b"hash=<id>", body)


@pytest.fixture(params=["built", pytest.param("evaldata", marks=pytest.mark.evaldata(TRACE))])
def trace(request: pytest.FixtureRequest, tmp_path: Path) -> str | Path:
    """A function-calling agent's trace: made here, or one of SWE-agent's."""
    return write_agent_trace(tmp_path / "built.traj") if request.param == "built" else TRACE


def agent_request(trace: str | Path, turn: int) -> bytes:
    messages = evaldata.agent_messages(trace)[:turn]
    return json.dumps({"model": "gpt-4o", "messages": messages}, indent=1).encode()


def compress(config: Path, request: bytes, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [*tersegate_command(), "compress", "--config", str(config), *args],
        input=request,
        capture_output=True,
        timeout=120,
        # PYTHONPATH kept: a worktree's code, not the installed package's, is what runs
        env={"COLUMNS": "160", "PATH": "/usr/bin:/bin", "PYTHONPATH": os.environ.get("PYTHONPATH", "")},
    )


@pytest.mark.slow
def test_compress_prints_what_the_server_forwards(
    make_proxy: MakeProxy, upstream: Upstream, trace: str | Path
) -> None:
    agents = (REPO / "policies" / "agents.yaml").read_text(encoding="utf-8")
    # A SWE-agent trace's outputs are mostly under the shipped 3,000-token target: a smaller one.
    # (and a generous budget: a loaded machine must not make the server fail open where the CLI did not)
    # and without retrieve: tooloutput fits lines to the target counting its markers' tokens, and a
    # dry run's hash= ids (its own, see below) tokenize to other counts than the server's.
    agents = (
        agents.replace("max_tokens: 3000", "max_tokens: 400")
        .replace("latency_budget_ms: 300", "latency_budget_ms: 30000")
        .replace("retrieve: true", "retrieve: false")
    )
    proxy = make_proxy(
        {"teams": {"default": {}, "agents": {"policy": "agents"}}}, policies={"agents": agents}
    )
    assert proxy.services is not None and proxy.services.rewriter.warmed.wait(120)  # type: ignore[attr-defined]
    request = agent_request(trace, 20)
    response = httpx.post(
        proxy.base_url + "/chat/completions",
        content=request,
        headers={"Authorization": "Bearer k", "X-Tersegate-Team": "agents"},
        timeout=60,
    )
    assert response.status_code == 200
    run = compress(proxy.config_path, request, "--team", "agents", "--explain")
    assert run.returncode == 0, run.stderr.decode()
    # Byte for byte, but for the ids in hash= markers: they are keyed with the fleet's shared secret,
    # which a dry run never reads (docs/retrieve.md), so its ids are its own.
    assert masked(run.stdout) == masked(upstream.last().body + b"\n")
    assert len(run.stdout) < len(request)
    table = run.stderr.decode()
    for column in ("msg", "role", "rule", "compressor", "before", "after", "ms"):
        assert column in table
    assert "tool (open)" in table and "tool-output" in table and "tooloutput" in table
    before, after = (
        response.headers["x-tersegate-tokens-before"],
        response.headers["x-tersegate-tokens-after"],
    )
    found = re.search(r"tokens (\d+) -> (\d+)", table)
    assert found is not None and found.group(1) == before
    # Another id (24 hex) may tokenize into a few more or fewer tokens: allow 8 per marker.
    assert abs(int(found.group(2)) - int(after)) <= 8 * run.stdout.count(b"hash=")


def test_unchanged_requests_come_back_as_the_original_bytes(tmp_path: Path, trace: str | Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        'upstreams:\n  openai: {base_url: "http://127.0.0.1:9/v1"}\nteams:\n  default: {}\n', encoding="utf-8"
    )
    request = agent_request(trace, 6)
    run = compress(config, request, "--team", "default")
    assert run.returncode == 0, run.stderr.decode()
    assert run.stdout == request + b"\n"


def test_unknown_team_and_bad_json_are_errors(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text('upstreams:\n  openai: {base_url: "http://127.0.0.1:9/v1"}\nteams:\n  default: {}\n')
    run = compress(config, b"{}", "--team", "nobody")
    assert run.returncode == 1 and b"team 'nobody' is not in" in run.stderr
    run = compress(config, b"{not json", "--team", "default")
    assert run.returncode == 1 and b"tersegate compress:" in run.stderr


def _question_policy_config(tmp_path: Path, compressor: str, options: str) -> Path:
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "qa.yaml").write_text(
        "name: qa\nmode: enforce\nmin_saving_tokens: 50\nlatency_budget_ms: 60000\nrules:\n"
        f"  - {{name: long, match: {{roles: [user], min_tokens: 300}}, compressor: {compressor},"
        f" rate: 0.25, options: {options}}}\n",
        encoding="utf-8",
    )
    config = tmp_path / "config.yaml"
    config.write_text(
        'upstreams:\n  openai: {base_url: "http://127.0.0.1:9/v1"}\npolicies_dir: policies\n'
        "teams:\n  default: {}\n  qa: {policy: qa}\n",
        encoding="utf-8",
    )
    return config


@pytest.mark.slow
@pytest.mark.parametrize(("compressor", "options"), [("relevance", "{scorer: bm25}"), ("tokens", "{}")])
def test_a_long_one_line_question_message_is_compressed(
    tmp_path: Path, compressor: str, options: str
) -> None:
    # Was: the whole line taken as the question, kept verbatim, and "below min_saving_tokens".
    docs = " ".join(
        f"Document [{i}](Title: Mill town {i}) The town of Alder{i} stands on the river and has {i} mills."
        for i in range(1, 60)
    )
    asked = "Question: which town has 37 mills?"
    content = f"{asked} Answer using these documents. {docs}"
    request = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": content}]}).encode()
    run = compress(
        _question_policy_config(tmp_path, compressor, options), request, "--team", "qa", "--explain"
    )
    assert run.returncode == 0, run.stderr.decode()
    out = json.loads(run.stdout)["messages"][0]["content"]
    assert len(out) < 0.6 * len(content), run.stderr.decode()
    assert "below min_saving_tokens" not in run.stderr.decode()
    if compressor == "relevance":  # its question kept verbatim and used as the query
        assert out.startswith(asked) and "Alder37 " in out


@pytest.mark.slow
def test_a_part_that_saves_nothing_says_why(tmp_path: Path) -> None:
    # One sentence, so relevance cannot drop a unit: the note was "below min_saving_tokens".
    content = " ".join(f"word{i} and more" for i in range(200))
    request = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": content}]}).encode()
    config = _question_policy_config(tmp_path, "relevance", "{scorer: bm25, units: sentences}")
    run = compress(config, request, "--team", "qa", "--explain")
    assert run.returncode == 0, run.stderr.decode()
    assert json.loads(run.stdout)["messages"][0]["content"] == content
    table = " ".join(run.stderr.decode().split())
    assert "below min_saving_tokens" not in table
    assert "over the budget" in table
