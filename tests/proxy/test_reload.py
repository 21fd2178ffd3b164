"""Hot reload: SIGHUP and file changes load the new policies; an invalid edit keeps the last good set."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from typing import Any

import httpx
import orjson
import pytest
from harness import MakeProxy, Upstream, wait_compression_ready
from test_readyz import RAG_POLICY

TEXT = "A  line   with    runs   of    spaces.\n\n\n\n\n" * 200  # normalize saves plenty

OFF = "name: tidy\nrules: []\n"
TIDY = """\
name: tidy
rules:
  - name: user-text
    match: {roles: [user]}
    compressor: normalize
"""
BROKEN = TIDY.replace("roles: [user]", "roles: [robot]")  # an unknown role: rejected


def send(proxy: Any) -> httpx.Response:
    body = orjson.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": TEXT}]})
    response = httpx.post(
        proxy.base_url + "/chat/completions", content=body, headers={"Authorization": "Bearer k"}, timeout=30
    )
    assert response.status_code == 200
    return response


def compressed(upstream: Upstream) -> bool:
    return bool(upstream.last().json()["messages"][0]["content"] != TEXT)


def eventually(check: Callable[[], bool], timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return False


def reloads(proxy: Any, outcome: str) -> float:
    for line in httpx.get(proxy.url + "/metrics").text.splitlines():
        if line.startswith(f'tersegate_policy_reloads_total{{outcome="{outcome}"}}'):
            return float(line.split()[-1])
    return 0.0


@pytest.mark.slow
def test_sighup_reloads_a_running_server(spawn_proxy: MakeProxy, upstream: Upstream) -> None:
    proxy = spawn_proxy({"teams": {"default": {"policy": "tidy"}}}, policies={"tidy": OFF})
    send(proxy)
    assert not compressed(upstream)
    (proxy.config_path.parent / "policies" / "tidy.yaml").write_text(TIDY, encoding="utf-8")
    assert proxy.proc is not None
    proxy.proc.send_signal(signal.SIGHUP)
    assert eventually(lambda: (send(proxy), compressed(upstream))[1]), proxy.log_text()
    assert eventually(lambda: "(SIGHUP)" in proxy.log_text()), proxy.log_text()
    assert proxy.proc.poll() is None  # SIGHUP did not stop the server


@pytest.mark.slow
def test_file_change_reloads_and_invalid_edit_keeps_last_good(
    make_proxy: MakeProxy, upstream: Upstream
) -> None:
    proxy = make_proxy({"teams": {"default": {"policy": "tidy"}}}, policies={"tidy": TIDY})
    policy_file = proxy.config_path.parent / "policies" / "tidy.yaml"
    send(proxy)
    assert compressed(upstream)

    policy_file.write_text(BROKEN, encoding="utf-8")
    assert eventually(lambda: reloads(proxy, "error") >= 1)
    send(proxy)
    assert compressed(upstream)  # still the last good policy

    policy_file.write_text(OFF, encoding="utf-8")
    assert eventually(lambda: reloads(proxy, "ok") >= 1)
    send(proxy)
    assert not compressed(upstream)


@pytest.mark.slow
def test_config_change_switches_a_team_policy(make_proxy: MakeProxy, upstream: Upstream) -> None:
    quiet = OFF.replace("tidy", "quiet")
    proxy = make_proxy({"teams": {"default": {"policy": "quiet"}}}, policies={"quiet": quiet, "tidy": TIDY})
    send(proxy)
    assert not compressed(upstream)
    text = proxy.config_path.read_text(encoding="utf-8")
    assert "policy: quiet" in text
    proxy.config_path.write_text(text.replace("policy: quiet", "policy: tidy"), encoding="utf-8")
    assert eventually(lambda: (send(proxy), compressed(upstream))[1]), proxy.log_text()
    assert proxy.services is not None and proxy.services.config.teams["default"].policy == "tidy"


RAG = RAG_POLICY.replace("name: rag", "name: tidy")  # an embedding model: seconds to load


def fail_opens(proxy: Any) -> float:
    return sum(
        float(line.split()[-1])
        for line in httpx.get(proxy.url + "/metrics").text.splitlines()
        if line.startswith("tersegate_fail_open_total{")
    )


@pytest.mark.slow
def test_a_reload_warms_the_new_model_while_the_old_policy_serves(
    spawn_proxy: MakeProxy, upstream: Upstream
) -> None:
    """A reload to a policy whose model takes seconds to load: the workers warm it one at a
    time while the old policy goes on compressing every request, then the new one takes over."""
    proxy = spawn_proxy({"teams": {"default": {"policy": "tidy"}}}, policies={"tidy": TIDY})
    assert proxy.proc is not None

    def fresh(i: int) -> httpx.Response:  # a new text each time: the memo cannot answer it
        text = f"Document [{i}](Title: Run {i}) " + TEXT
        body = orjson.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": text}]})
        response = httpx.post(
            proxy.base_url + "/chat/completions", content=body, headers={"Authorization": "Bearer k"}
        )
        assert response.status_code == 200
        return response

    wait_compression_ready(proxy)
    fresh(0)
    (proxy.config_path.parent / "policies" / "tidy.yaml").write_text(RAG, encoding="utf-8")
    proxy.proc.send_signal(signal.SIGHUP)
    served = 0
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and "(SIGHUP)" not in proxy.log_text():
        served += 1
        response = fresh(served)
        assert int(response.headers["x-tersegate-tokens-after"]) < int(
            response.headers["x-tersegate-tokens-before"]
        )
    assert "(SIGHUP)" in proxy.log_text(), proxy.log_text()
    assert served > 0  # requests went on during the warm-up
    assert fail_opens(proxy) == 0, proxy.log_text()
    assert "warm: tidy/documents (relevance)" in proxy.log_text()
    # The new policy: relevance keeps some documents, not a tidied copy of the whole text.
    documents = "\n\n".join(
        f"Document [{i}](Title: T{i}) " + f"Fact {i} about subject {i}. " * 40 for i in range(8)
    )
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": documents + "\n\nQuestion: fact 3?"}]}
    reply = httpx.post(proxy.base_url + "/chat/completions", json=body, timeout=30)
    assert (
        int(reply.headers["x-tersegate-tokens-after"]) < int(reply.headers["x-tersegate-tokens-before"]) * 0.6
    )
    assert fail_opens(proxy) == 0, proxy.log_text()
