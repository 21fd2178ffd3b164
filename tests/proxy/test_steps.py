"""Steps per rule (issue 20, Must 3) and a size cap per compressor by its cost (Must 1).

Policies are YAML files read by the real loader; ``tersegate check`` and ``tersegate compress
--explain`` run as subprocesses; a real ``tersegate serve`` forwards a 200,000-character tool
output to the fake upstream.
"""

from __future__ import annotations

import os
import random
import subprocess
import time
from pathlib import Path

import httpx
import orjson
import pytest
from harness import MakeProxy, Upstream, run_tersegate, tersegate_command, wait_compression_ready

from compressors.base import Target
from compressors.tokenizer import tokenizer_for
from proxy.policy.model import load_policy

CONFIG = """\
upstreams:
  openai: {base_url: "http://127.0.0.1:9/v1"}
teams:
  default: {policy: chain}
"""

CHAIN = """\
name: chain
latency_budget_ms: 20000
rules:
  - name: tool-output
    match: {roles: [tool]}
    preserve: [numbers]
    steps:
      - {compressor: normalize}
      - compressor: truncate
        max_tokens: 2000
        options: {mode: middle, unit: line}
  - name: user
    match: {roles: [user], min_tokens: 300}
    compressor: tokens
    rate: 0.6
"""


def write(folder: Path, policy: str, *, name: str = "chain", config: str = CONFIG) -> Path:
    (folder / "policies").mkdir(exist_ok=True)
    (folder / "policies" / f"{name}.yaml").write_text(policy, encoding="utf-8")
    path = folder / "config.yaml"
    path.write_text(config, encoding="utf-8")
    return path


_WORDS = [
    "session",
    "invoice",
    "customer",
    "retry",
    "ledger",
    "token",
    "cache",
    "region",
    "quota",
    "stream",
    "parser",
    "billing",
]


def file_read(chars: int) -> str:
    """A tool output the size of a big file read: distinct numbered lines of code, trailing blanks
    on each (normalize removes those), the line an agent needs in the middle."""
    rng = random.Random(chars)
    lines: list[str] = []
    size = 0
    while size < chars + 200:  # the bug line below is shorter
        a, b, c = rng.sample(_WORDS, 3)
        lines.append(f"{len(lines) + 1:6d}\t    {a}_{b} = load_{c}({b}, {a}.{c})   ")
        size += len(lines[-1]) + 1
    lines[len(lines) // 2] = f"{len(lines) // 2 + 1:6d}\t    raise KeyError('customer_id')  # the bug"
    return "\n".join(lines)


def chat_with_tool_output(output: str) -> bytes:
    return orjson.dumps(
        {
            "model": "gpt-4o",
            "messages": [
                {"role": "user", "content": "Why does billing fail?"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "read_file", "arguments": '{"path": "billing.py"}'},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "call_1", "content": output},
            ],
        }
    )


def compress_explained(config: Path, output: str) -> subprocess.CompletedProcess[bytes]:
    """``tersegate compress --explain`` of a chat turn whose tool output is ``output``."""
    run = subprocess.run(
        [*tersegate_command(), "compress", "--config", str(config), "--team", "default", "--explain"],
        input=chat_with_tool_output(output),
        capture_output=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert run.returncode == 0, run.stderr.decode()
    return run


def test_steps_load_in_order_with_the_target_on_the_last(tmp_path: Path) -> None:
    write(tmp_path, CHAIN)
    policy, warnings = load_policy(tmp_path / "policies" / "chain.yaml", expected_name="chain")
    assert warnings == []
    chain, single = policy.rules
    assert [step.compressor_name for step in chain.steps] == ["normalize", "truncate"]
    assert chain.steps[0].target == Target(rate=1.0)
    assert chain.steps[1].target == Target(max_tokens=2000)
    assert chain.steps[1].compressor.options["mode"] == "middle"  # parsed once, at load
    # The rule's preserve is every step's default.
    assert all(step.preserve is not None and step.preserve.categories == {"numbers"} for step in chain.steps)
    assert chain.compressor_name == "normalize>truncate"
    # The single-compressor form is one step, as before.
    assert [step.compressor_name for step in single.steps] == ["tokens"]
    assert single.target == Target(rate=0.6)
    assert single.compressor is not None and single.compressor.cost_class == "model"
    assert [step.compressor.cost_class for step in chain.steps] == ["linear", "linear"]


def test_editing_a_step_changes_the_rule_identity(tmp_path: Path) -> None:
    first = tmp_path / "a"
    second = tmp_path / "b"
    first.mkdir()
    second.mkdir()
    write(first, CHAIN)
    write(second, CHAIN.replace("max_tokens: 2000", "max_tokens: 1500"))
    a, _ = load_policy(first / "policies" / "chain.yaml")
    b, _ = load_policy(second / "policies" / "chain.yaml")
    assert a.rules[0].identity != b.rules[0].identity  # the memo never reuses the old chain's forms
    assert a.rules[1].identity == b.rules[1].identity


BAD = """\
name: chain
rules:
  - name: mixed
    compressor: truncate
    steps:
      - {compressor: normalize}
  - name: empty
    steps: []
  - name: broken
    steps:
      - {compressor: normalize}
      - {compressor: zip}
      - compressor: truncate
        rate: 2
        options: {mode: sideways}
      - {max_tokens: 100}
      - {compressor: normalize, colour: red}
  - name: dropping
    action: drop
    match: {older_than_turns: 3}
    steps: [{compressor: normalize}]
"""


def test_tersegate_check_reports_bad_steps_at_their_lines(tmp_path: Path) -> None:
    path = write(tmp_path, BAD)
    run = run_tersegate("check", "--config", str(path))
    assert run.returncode == 1
    file = tmp_path / "policies" / "chain.yaml"
    for line, message in [
        (4, "rules[0] (mixed): compressor goes in a step when the rule has steps"),
        (8, "rules[1] (empty).steps must be a non-empty list"),
        (12, "rules[2] (broken).steps[1].compressor: unknown compressor 'zip'"),
        (14, "rules[2] (broken).steps[2].rate: must be in (0, 1]"),
        (15, "rules[2] (broken).steps[2].options: truncate: mode"),
        (16, "rules[2] (broken).steps[3]: missing required key 'compressor'"),
        (17, "rules[2] (broken).steps[4]: unknown key 'colour'"),
        (21, "rules[3] (dropping): a drop rule has no steps"),
    ]:
        assert f"{file}:{line}: {message}" in run.stderr, (line, run.stderr)


@pytest.mark.slow
def test_compress_explain_shows_each_step(tmp_path: Path) -> None:
    # A model step between two linear ones, on a part above max_part_chars: it is skipped (and
    # says so), the linear steps still run.
    policy = CHAIN.replace(
        "      - compressor: truncate\n",
        "      - {compressor: tokens, rate: 0.8}\n      - compressor: truncate\n",
    )
    path = write(tmp_path, policy, config=CONFIG + "compression: {max_part_chars: 60000}\n")
    output = file_read(120_000)
    run = compress_explained(path, output)
    sent = orjson.loads(run.stdout)["messages"][2]["content"]
    explain = run.stderr.decode()
    rows = [line for line in explain.splitlines() if "step " in line]
    assert [row.split("│")[4].strip() for row in rows] == ["normalize", "tokens", "truncate"], explain
    figures = [[int(row.split("│")[i].strip()) for i in (5, 6)] for row in rows]
    before = tokenizer_for("gpt-4o").count(output)
    normalized, skipped, cut = figures
    assert normalized[0] == before and normalized[1] < before  # trailing blanks gone
    assert skipped[0] == skipped[1] == normalized[1]
    assert "skipped" in rows[1] and "max_part_chars" in explain
    assert cut[0] == normalized[1] and cut[1] <= 2000 * 1.05
    assert tokenizer_for("gpt-4o").count(sent) == cut[1]
    assert sent.splitlines()[0] == output.splitlines()[0].rstrip()


@pytest.mark.slow
def test_serve_forwards_a_200k_char_tool_output_normalized_and_cut(
    spawn_proxy: MakeProxy, upstream: Upstream
) -> None:
    settings = {"teams": {"default": {"policy": "chain"}}, "audit": {"path": "audit.jsonl"}}
    proxy = wait_compression_ready(spawn_proxy(settings, policies={"chain": CHAIN}))
    output = file_read(200_000)
    assert len(output) >= 200_000
    forwarded = []
    for _ in range(2):  # the next turn re-sends the output: the memo has its final form
        response = httpx.post(
            proxy.url + "/v1/chat/completions",
            content=chat_with_tool_output(output),
            headers={"content-type": "application/json", "authorization": "Bearer sk-c"},
            timeout=60,
        )
        assert response.status_code == 200
        forwarded.append(upstream.last().json()["messages"][2]["content"])
    sent = forwarded[0]
    assert forwarded[1] == sent
    tokens = tokenizer_for("gpt-4o").count(sent)
    assert tokens <= 2000 * 1.05  # was forwarded whole: above the old 50,000-character cap
    lines = sent.splitlines()
    first, last = output.splitlines()[0], output.splitlines()[-1]
    assert lines[0] == first.rstrip() and lines[-1] == last.rstrip()  # normalize, then a middle cut
    assert any("omitted" in line for line in lines)
    first_turn, second_turn = [
        orjson.loads(line) for line in (proxy.config_path.parent / "audit.jsonl").read_bytes().splitlines()
    ]
    assert first_turn["fail_open"] is None
    assert first_turn["tokens_after"] < first_turn["tokens_before"] // 10
    assert second_turn["tokens_after"] == first_turn["tokens_after"]
    assert second_turn["compress_ms"] < first_turn["compress_ms"]  # nothing new to compress


@pytest.mark.slow
def test_a_huge_tool_output_for_linear_steps_never_delays_others(
    spawn_proxy: MakeProxy, upstream: Upstream
) -> None:
    # 6 MB (below max_parse_bytes) goes to the workers now that linear steps take any size; they
    # cannot finish in the 300 ms budget, so the part goes as it came, and /healthz never waits.
    from test_bounded import Probe

    policy = CHAIN.replace("latency_budget_ms: 20000", "latency_budget_ms: 300")
    settings = {"teams": {"default": {"policy": "chain"}}, "audit": {"path": "audit.jsonl"}}
    proxy = wait_compression_ready(spawn_proxy(settings, policies={"chain": policy}))
    output = file_read(6_000_000)
    health = Probe(proxy.url)
    time.sleep(1.5)  # the probe's first answers (connection set-up), then a quiet baseline
    started = time.monotonic()
    response = httpx.post(
        proxy.url + "/v1/chat/completions",
        content=chat_with_tool_output(output),
        headers={"content-type": "application/json", "authorization": "Bearer sk-c"},
        timeout=120,
    )
    ended = time.monotonic()
    time.sleep(0.3)
    health.finish()
    assert response.status_code == 200
    assert upstream.last().json()["messages"][2]["content"] == output
    assert health.failures == 0
    quiet = health.p99(started - 1.2, started)
    assert health.p99(started, ended + 0.3) < 100 + 3 * quiet, (quiet, ended - started)
    [record] = [
        orjson.loads(line) for line in (proxy.config_path.parent / "audit.jsonl").read_bytes().splitlines()
    ]
    assert record["fail_open"] == "latency_budget"


@pytest.mark.slow
def test_a_failing_step_fails_open(tmp_path: Path) -> None:
    # The second step's model cannot load: the part goes as it came, and --explain says why.
    policy = CHAIN.replace(
        "      - compressor: truncate\n        max_tokens: 2000\n        options: {mode: middle, unit: line}\n",
        "      - {compressor: relevance, rate: 0.5, options: {scorer: embedding, model: /nonexistent/model}}\n",
    )
    path = write(tmp_path, policy)
    output = "\n\n".join(
        f"Paragraph {i}: the service restarted after failure {i % 5}.   " for i in range(200)
    )
    run = compress_explained(path, output)
    assert orjson.loads(run.stdout)["messages"][2]["content"] == output  # not even normalized
    assert "fail-open: compressor_error: relevance: FileNotFoundError" in run.stderr.decode()


@pytest.mark.slow
def test_a_long_message_keeps_its_question_through_linear_steps(
    make_proxy: MakeProxy, upstream: Upstream
) -> None:
    # Above max_part_chars the question is found in the message's tail, and kept where it sits.
    policy = """\
name: chain
latency_budget_ms: 20000
rules:
  - name: pasted-log
    match: {roles: [user], min_tokens: 300}
    steps:
      - {compressor: normalize}
      - {compressor: truncate, rate: 0.1, options: {mode: head}}
"""
    proxy = make_proxy(
        {"teams": {"default": {"policy": "chain"}}, "compression": {"max_part_chars": 20_000}},
        policies={"chain": policy},
    )
    assert proxy.services is not None and proxy.services.rewriter.warmed.wait(120)  # type: ignore[attr-defined]
    question = "Question: which handler raises KeyError('customer_id')?\nAnswer:"
    text = file_read(60_000) + "\n\n" + question
    body = orjson.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": text}]})
    response = httpx.post(
        proxy.base_url + "/chat/completions", content=body, headers={"Authorization": "Bearer k"}
    )
    assert response.status_code == 200
    sent = upstream.last().json()["messages"][0]["content"]
    assert sent.endswith("\n\n" + question)
    assert sent.startswith(text.splitlines()[0].rstrip())
    assert len(sent) < len(text) // 5
