"""``tersegate serve``: a real process that serves, stops cleanly, and refuses bad configs."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import openai
import pytest
from harness import MakeProxy, Upstream, tersegate_command


@pytest.mark.slow
def test_serve_subprocess_forwards_and_stops_on_sigterm(spawn_proxy: MakeProxy, upstream: Upstream) -> None:
    proxy = spawn_proxy()
    c = openai.OpenAI(base_url=proxy.base_url, api_key="sk-client", max_retries=0)
    reply = c.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert reply.choices[0].message.content == "Hello from the fake upstream."
    proxy.stop()
    # uvicorn shuts down gracefully, then re-raises the signal it caught (exit status -SIGTERM).
    assert proxy.proc is not None and proxy.proc.returncode in (0, -signal.SIGTERM)
    assert "Application shutdown complete" in proxy.log_text()


def test_serve_refuses_to_start_on_a_bad_config(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("auth: maybe\nteams:\n  default: {policy: 3}\n", encoding="utf-8")
    out = subprocess.run(
        [*tersegate_command(), "serve", "--config", "config.yaml", "--port", "0"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert out.returncode == 1
    assert "config.yaml:1: " in out.stderr and "auth" in out.stderr
    assert "config.yaml:3: " in out.stderr
    assert "not starting" in out.stderr


def test_help_lists_the_commands() -> None:
    out = subprocess.run([*tersegate_command(), "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    assert "serve" in out.stdout and "check" in out.stdout
