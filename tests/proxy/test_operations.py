"""Operators can see what happens (issue 13, defect 10), on real ``tersegate serve`` processes.

At ``info``: one line per upstream failure and per fail-open (rate-limited, no key, no prompt text);
an optional JSON-lines access log; ``/healthz`` reports each upstream's last known state and stays
200 (liveness); a stream failing after its headers is audited with the failure's status and
``partial``; client disconnects are audited 499 whether streaming or not.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from harness import MakeProxy, Upstream, free_port

SECRET = "sk-client-never-logged-0123"
PROMPT = "the secret prompt text about printers " * 100
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": PROMPT}]}
HEADERS = {"authorization": f"Bearer {SECRET}"}


def lines(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()] if path.exists() else []


def wait_for_lines(path: Path, count: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 10
    while len(found := lines(path)) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    return found


@pytest.mark.slow
def test_upstream_failures_are_logged_once_each_and_shown_by_healthz(spawn_proxy: MakeProxy) -> None:
    down = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    proxy = spawn_proxy({"upstreams": {"fake": {"base_url": down, "api_key_env": "FAKE_UPSTREAM_KEY"}}})
    assert httpx.get(proxy.url + "/healthz").json()["upstreams"]["fake"]["state"] == "unknown"
    with httpx.Client(timeout=30) as client:
        for _ in range(30):
            r = client.post(proxy.base_url + "/chat/completions", json=CHAT, headers=HEADERS)
            assert r.status_code == 502
    time.sleep(1.2)
    r = httpx.post(proxy.base_url + "/chat/completions", json=CHAT, headers=HEADERS, timeout=30)
    health = httpx.get(proxy.url + "/healthz")
    assert health.status_code == 200 and health.json()["status"] == "ok"  # liveness is the proxy's
    fake = health.json()["upstreams"]["fake"]
    assert fake["state"] == "failing" and fake["last_error"] == "upstream_unreachable"
    assert fake["failures_in_a_row"] == 31 and fake["last_success"] is None
    log = proxy.log_text()
    failures = [line for line in log.splitlines() if "upstream failure" in line]
    assert 2 <= len(failures) <= 4, failures  # rate-limited: not one per request
    assert " INFO " in failures[0] and "upstream=fake error=upstream_unreachable" in failures[0]
    assert "similar" in failures[-1]
    assert SECRET not in log and "secret prompt" not in log


@pytest.mark.slow
def test_healthz_shows_an_upstream_that_answers(spawn_proxy: MakeProxy, upstream: Upstream) -> None:
    proxy = spawn_proxy()
    httpx.post(proxy.base_url + "/chat/completions", json=CHAT, headers=HEADERS, timeout=30)
    fake = httpx.get(proxy.url + "/healthz").json()["upstreams"]["fake"]
    assert fake["state"] == "ok" and fake["last_success"] is not None and fake["last_failure"] is None


@pytest.mark.slow
def test_fail_open_is_logged_without_text(spawn_proxy: MakeProxy, upstream: Upstream) -> None:
    support = (Path(__file__).resolve().parents[2] / "policies" / "support.yaml").read_text()
    proxy = spawn_proxy(
        {"teams": {"default": {"policy": "support"}}},
        policies={"support": support.replace("latency_budget_ms: 300", "latency_budget_ms: 0.001")},
    )
    r = httpx.post(proxy.base_url + "/chat/completions", json=CHAT, headers=HEADERS, timeout=30)
    assert r.status_code == 200 and upstream.last().json() == CHAT  # forwarded as sent
    log = proxy.log_text()
    [line] = [line for line in log.splitlines() if "fail-open" in line]
    assert " INFO " in line and "reason=latency_budget" in line and "team=default" in line
    assert r.headers["x-tersegate-request-id"] in line
    assert SECRET not in log and "secret prompt" not in log


@pytest.mark.slow
def test_access_log_has_one_json_line_per_request(spawn_proxy: MakeProxy, upstream: Upstream) -> None:
    proxy = spawn_proxy({"access_log": "logs/access.jsonl", "teams": {"default": {}, "ops": {}}})
    httpx.post(proxy.base_url + "/chat/completions", json=CHAT, headers=HEADERS, timeout=30)
    error = {**CHAT, "model": "error-429"}
    httpx.post(proxy.base_url + "/chat/completions", json=error, headers=HEADERS, timeout=30)
    httpx.get(proxy.base_url + "/models", headers={**HEADERS, "x-tersegate-team": "ops"}, timeout=30)
    httpx.get(proxy.url + "/healthz")  # the proxy's own endpoints are not in it
    path = proxy.config_path.parent / "logs" / "access.jsonl"
    found = wait_for_lines(path, 3)
    assert [(x["route"], x["status"], x["team"]) for x in found] == [
        ("/v1/chat/completions", 200, "default"),
        ("/v1/chat/completions", 429, "default"),
        ("/v1/models", 200, "ops"),
    ]
    assert all(x["request_id"] and x["ms"] >= 0 and x["upstream"] == "fake" for x in found)
    text = path.read_text()
    assert SECRET not in text and "secret prompt" not in text


@pytest.mark.slow
def test_stream_cut_after_headers_is_audited_as_such(spawn_proxy: MakeProxy, upstream: Upstream) -> None:
    proxy = spawn_proxy(
        {
            "audit": {"path": "audit.jsonl"},
            "upstreams": {
                "fake": {
                    "base_url": "{upstream}",
                    "api_key_env": "FAKE_UPSTREAM_KEY",
                    "stream_idle_timeout_s": 0.5,
                }
            },
        }
    )
    stalled = {**CHAT, "model": "stall", "stream": True}
    with httpx.stream(
        "POST", proxy.base_url + "/chat/completions", json=stalled, headers=HEADERS, timeout=30
    ) as r:
        assert r.status_code == 200
        body = r.read()
    assert b'"code":"upstream_timeout"' in body
    [record] = wait_for_lines(proxy.config_path.parent / "audit.jsonl", 1)
    assert record["status"] == 504 and record["partial"] is True and record["error"] == "upstream_timeout"


@pytest.mark.slow
def test_client_disconnect_is_audited_499_either_way(spawn_proxy: MakeProxy, upstream: Upstream) -> None:
    proxy = spawn_proxy({"audit": {"path": "audit.jsonl"}})
    slow = {**CHAT, "model": "slow"}
    with pytest.raises(httpx.ReadTimeout):  # the client gives up on a non-streaming answer
        httpx.post(
            proxy.base_url + "/chat/completions",
            json=slow,
            headers={**HEADERS, "x-fake-delay": "5"},
            timeout=1,
        )
    endless = {**CHAT, "model": "forever", "stream": True}
    with httpx.stream(
        "POST", proxy.base_url + "/chat/completions", json=endless, headers=HEADERS, timeout=30
    ) as r:
        next(r.iter_raw())  # one chunk, then the client goes away
    records = wait_for_lines(proxy.config_path.parent / "audit.jsonl", 2)
    assert sorted((x["stream"], x["status"], x["client_disconnected"]) for x in records) == [
        (False, 499, True),
        (True, 499, True),
    ]
