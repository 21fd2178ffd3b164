"""Drain on SIGTERM / Ctrl-C (issue 13, defect 4), against a real ``tersegate serve``.

The proxy stops accepting, lets requests and streams in flight finish up to ``shutdown_grace_s``,
then ends what is left with an SSE error event in OpenAI's shape; every request that reached the
upstream has its audit record; the process exits 0 without a traceback.
"""

from __future__ import annotations

import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson
import pytest
from harness import MakeProxy, Upstream, run_tersegate

GRACE_S = 3.0


@dataclass
class Outcome:
    status: int = 0
    frames: list[bytes] = field(default_factory=list)
    error: str | None = None


def chat(model: str, *, stream: bool) -> bytes:
    body = {"model": model, "stream": stream, "messages": [{"role": "user", "content": "hi"}]}
    return orjson.dumps(body)


def call(url: str, model: str, *, stream: bool, headers: dict[str, str], out: Outcome) -> None:
    try:
        with httpx.stream(
            "POST",
            url + "/v1/chat/completions",
            content=chat(model, stream=stream),
            headers={"content-type": "application/json", "authorization": "Bearer sk-c", **headers},
            timeout=30,
        ) as response:
            out.status = response.status_code
            buffered = b""
            for chunk in response.iter_bytes():
                buffered += chunk
            out.frames = [f for f in buffered.split(b"\n\n") if f.strip()]
    except httpx.HTTPError as exc:
        out.error = type(exc).__name__


def wait_for(predicate: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(predicate) and predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def audit_records(path: Path) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_drains_streams_then_ends_the_rest_with_an_error_frame(
    spawn_proxy: MakeProxy, upstream: Upstream, sig: signal.Signals
) -> None:
    proxy = spawn_proxy({"audit": {"path": "audit.jsonl"}, "shutdown_grace_s": GRACE_S})
    assert proxy.proc is not None
    plan = (
        [("heartbeat", True, {"x-fake-gap": "1.5"})] * 8  # finish inside the grace
        + [("slow", False, {"x-fake-delay": "1.5"})] * 4  # non-streaming, finish inside the grace
        + [("forever", True, {})] * 8  # never finish: cut at the grace, with an error frame
    )
    outcomes = [Outcome() for _ in plan]
    threads = [
        threading.Thread(
            target=call,
            args=(
                proxy.url,
                m,
            ),
            kwargs={"stream": s, "headers": h, "out": o},
        )
        for (m, s, h), o in zip(plan, outcomes, strict=True)
    ]
    for thread in threads:
        thread.start()
    wait_for(lambda: len(upstream.requests) == len(plan), 10)
    signalled = time.monotonic()
    proxy.proc.send_signal(sig)
    time.sleep(0.5)
    with pytest.raises(httpx.TransportError):  # no longer accepting
        httpx.get(proxy.url + "/healthz", timeout=1)
    code = proxy.proc.wait(GRACE_S + 10)
    took = time.monotonic() - signalled
    for thread in threads:
        thread.join(10)

    assert code == 0
    assert GRACE_S - 0.5 < took < GRACE_S + 5
    log = proxy.log_text()
    assert "Traceback" not in log and "KeyboardInterrupt" not in log
    for (model, _, _), out in zip(plan, outcomes, strict=True):
        assert out.error is None and out.status == 200, (model, out)
        if model == "heartbeat":
            assert out.frames[-1] == b"data: [DONE]"
        elif model == "forever":
            error = orjson.loads(out.frames[-1].removeprefix(b"data: "))["error"]
            assert error["code"] == "shutting_down" and error["type"] == "server_error"
    records = audit_records(proxy.config_path.parent / "audit.jsonl")
    assert len(records) == len(plan)
    cut = [r for r in records if r.get("error") == "shutdown"]
    assert len(cut) == plan.count(("forever", True, {}))
    verify = run_tersegate("audit", "verify", "--config", str(proxy.config_path))
    assert verify.returncode == 0, verify.stderr


def test_idle_proxy_exits_0_at_once(spawn_proxy: MakeProxy) -> None:
    proxy = spawn_proxy()
    assert proxy.proc is not None
    started = time.monotonic()
    proxy.proc.send_signal(signal.SIGTERM)
    assert proxy.proc.wait(10) == 0
    assert time.monotonic() - started < 15  # not the 30 s grace: nothing was in flight
