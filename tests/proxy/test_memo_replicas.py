"""Compress-once across processes (issue 12, Must 2 and 6): real ``tersegate serve`` replicas.

A SWE-agent trace is replayed turn by turn, alternating between two replicas, with a question-aware
policy (``tokens``/selfinfo, whose query is the newest user message). Each forwarded request must
start with the previous one byte for byte (what the provider's prompt cache needs). Replicas that
share Redis (or one SQLite file) do so even when one is SIGKILLed and restarted mid-trace; replicas
with their own memo (the control) do not. A Redis killed mid-run costs nothing but the sharing.
"""

from __future__ import annotations

import itertools
import re
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis
from harness import MakeProxy, RunningProxy, Upstream
from redis_server import RedisServer, redis_server
from test_workers import wait_ready

import evaldata
from proxy.audit.chains import audit_chains

__all__ = ["redis_server"]

TRACE = "swe-agent-traces/ctf_web_i_got_id_demo.traj"
needs_trace = pytest.mark.evaldata(TRACE)

TURNS = 12  # of the trace's 21: enough for the control to break, quick enough for every run
QUESTION_AWARE = """\
name: qa
min_saving_tokens: 0
latency_budget_ms: 60000
rules:
  - name: observations
    match: {roles: [user, tool], min_tokens: 150}
    compressor: tokens
    rate: 0.6
    options: {scorer: selfinfo}
"""


def config(memo: dict[str, Any]) -> dict[str, Any]:
    # One compression worker a replica: what is shared here is the memo, and every replica
    # started (up to six a test) warms each of its workers.
    return {"teams": {"default": {"policy": "qa"}}, "compression": {"memo": memo, "workers": 1}}


def post(proxy: RunningProxy, messages: list[dict[str, Any]]) -> None:
    response = httpx.post(
        proxy.base_url + "/chat/completions",
        content=orjson.dumps({"model": "gpt-4o", "messages": messages}),
        headers={"Authorization": "Bearer sk-client"},
        timeout=120,
    )
    assert response.status_code == 200, response.text


def prefix_breaks(forwarded: list[list[bytes]]) -> int:
    """Turns whose forwarded request does not start with the previous turn's, byte for byte."""
    return sum(later[: len(earlier)] != earlier for earlier, later in itertools.pairwise(forwarded))


def replay_alternating(
    spawn: MakeProxy, upstream: Upstream, memo: dict[str, Any], *, restart_at: int | None = None
) -> tuple[int, int]:
    """(prefix breaks, turn pairs) replaying TRACE round-robin through two replicas; at turn
    ``restart_at`` the second replica is SIGKILLed and a new one takes its place."""
    replicas = [spawn(config(memo), policies={"qa": QUESTION_AWARE}) for _ in range(2)]
    forwarded: list[list[bytes]] = []
    for k, messages in enumerate(evaldata.turns(evaldata.agent_messages(TRACE))[:TURNS]):
        if k == restart_at:
            replicas[1].kill()
            replicas[1] = spawn(config(memo), policies={"qa": QUESTION_AWARE})
        post(replicas[k % 2], messages)
        forwarded.append([orjson.dumps(m) for m in upstream.last().json()["messages"]])
    return prefix_breaks(forwarded), len(forwarded) - 1


@pytest.mark.slow
@needs_trace
def test_replicas_sharing_redis_keep_every_prefix_across_a_sigkill(
    spawn_proxy: MakeProxy, upstream: Upstream, redis_server: RedisServer
) -> None:
    breaks, pairs = replay_alternating(
        spawn_proxy, upstream, {"backend": "redis", "url": redis_server.url}, restart_at=6
    )
    assert (breaks, pairs) == (0, TURNS - 1)


@pytest.mark.slow
@needs_trace
def test_control_replicas_with_their_own_memo_break_prefixes(
    spawn_proxy: MakeProxy, upstream: Upstream
) -> None:
    breaks, pairs = replay_alternating(spawn_proxy, upstream, {"backend": "memory"})
    print(f"control: {breaks} prefix breaks in {pairs} turn pairs")
    assert pairs == TURNS - 1 and breaks >= 3  # what the shared store removes


@pytest.mark.slow
@needs_trace
def test_two_processes_on_one_sqlite_file_keep_every_prefix_across_a_restart(
    spawn_proxy: MakeProxy, upstream: Upstream, tmp_path: Path
) -> None:
    memo = {"backend": "sqlite", "path": str(tmp_path / "state" / "memo.sqlite")}
    breaks, pairs = replay_alternating(spawn_proxy, upstream, memo, restart_at=6)
    assert (breaks, pairs) == (0, TURNS - 1)


@pytest.mark.slow
@needs_trace
def test_two_workers_on_the_sqlite_memo_keep_every_prefix_across_a_restart(
    spawn_proxy: MakeProxy, upstream: Upstream, tmp_path: Path
) -> None:
    """``listen.workers: 2`` with the shipped sqlite memo: the kernel hands each turn's new
    connection to either worker, and the whole server is stopped and started again mid-trace."""
    audit = tmp_path / "audit" / "audit.jsonl"
    settings = {
        **config({"backend": "sqlite", "path": str(tmp_path / "state" / "memo.sqlite")}),
        "listen": {"host": "127.0.0.1", "port": 0, "workers": 2},
        "audit": {"path": str(audit)},
    }

    def start() -> RunningProxy:
        proxy = spawn_proxy(settings, policies={"qa": QUESTION_AWARE})
        wait_ready(proxy, 2)
        return proxy

    proxy = start()
    forwarded: list[list[bytes]] = []
    for k, messages in enumerate(evaldata.turns(evaldata.agent_messages(TRACE))[:TURNS]):
        if k == TURNS // 2:
            proxy.stop()  # SIGTERM: both workers drain and exit
            proxy = start()
        post(proxy, messages)
        forwarded.append([orjson.dumps(m) for m in upstream.last().json()["messages"]])
    proxy.stop()
    served = [sum(len(f.read_bytes().splitlines()) for f in chain) for chain in audit_chains(audit)]
    print(f"workers: 2 + sqlite + restart: records per worker process {served}")
    assert sum(served) == TURNS and len([n for n in served if n]) >= 2
    assert prefix_breaks(forwarded) == 0


def metric(proxy: RunningProxy, name: str) -> float:
    text = httpx.get(proxy.url + "/metrics", timeout=10).text
    return sum(float(m.group(1)) for m in re.finditer(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.MULTILINE))


@pytest.mark.slow
def test_a_redis_killed_mid_run_costs_the_sharing_not_the_service(
    spawn_proxy: MakeProxy, upstream: Upstream, redis_server: RedisServer
) -> None:
    proxy = spawn_proxy(
        config({"backend": "redis", "url": redis_server.url}), policies={"qa": QUESTION_AWARE}
    )
    observation = "\n".join(f"step {i}: the build printed warning W{i} about module m{i}" for i in range(25))

    def turn(n: int) -> list[dict[str, Any]]:
        return [
            {"role": "system", "content": "You are an agent."},
            {"role": "user", "content": f"Task {n}: why does the build warn?\n{observation}"},
        ]

    post(proxy, turn(0))
    assert metric(proxy, "tersegate_memo_lookups_total") > 0
    assert metric(proxy, "tersegate_memo_store_errors_total") == 0
    redis_server.kill()
    started = time.monotonic()
    for n in range(1, 21):  # all served, compressed from the process's own memo or afresh
        post(proxy, turn(n))
        assert len(upstream.last().json()["messages"][1]["content"]) < len(turn(n)[1]["content"])
    assert time.monotonic() - started < 20  # no per-request timeout stalls
    assert metric(proxy, "tersegate_memo_store_errors_total") >= 2
    log = proxy.log_text()
    assert log.count("memo store redis unreachable") == 1  # once a minute, not once per request
    assert "Task" not in log and "warning W" not in log  # no prompt text in logs
    redis_server.start()
    time.sleep(1.2)  # past the retry pause
    post(proxy, turn(21))
    post(proxy, turn(22))
    assert "memo store redis is reachable again" in proxy.log_text()
    # The forms decided while Redis was down reached it once it was back (for the other replicas).
    client = redis.Redis.from_url(redis_server.url)
    assert len(client.keys("tersegate:memo:default:*")) >= 22
    client.close()
