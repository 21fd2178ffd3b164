"""Codex CLI, headless (``codex exec``), through ``tersegate serve`` to a scripted model (docs/clients.md).

Codex speaks the Responses API, streamed, with its shell as the ``exec_command`` function tool; the
model asks it to run the test suite of a real checkout with a bug, Codex sends the output back as a
``function_call_output``, the agents policy compresses it on the way, and the model's answer quotes
the FAILED line it received.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import agentrun
import pytest
from agentrun import API_KEY, TEAM
from fake_model import ANSWER_PREFIX
from harness import MakeProxy

PROMPT = "Run the test suite and tell me which test fails."


def codex_config(proxy_url: str) -> str:
    """~/.codex/config.toml pointing Codex at tersegate (the README's provider entry)."""
    return f"""model_provider = "tersegate"
model = "gpt-5-codex"
# Codex keeps ~10k bytes of a command's output for models it has no metadata for; keep it whole.
tool_output_token_limit = 40000

[model_providers.tersegate]
name = "tersegate"
base_url = "{proxy_url}/v1"
env_key = "OPENAI_API_KEY"
wire_api = "responses"
http_headers = {{ "X-Tersegate-Team" = "{TEAM}" }}
"""


def codex_command(proxy_url: str, home: Path) -> tuple[list[str], dict[str, str]]:
    codex_home = home / ".codex"
    codex_home.mkdir()
    (codex_home / "config.toml").write_text(codex_config(proxy_url), encoding="utf-8")
    env = agentrun.client_env(home, CODEX_HOME=str(codex_home), OPENAI_API_KEY=API_KEY)
    # danger-full-access: no sandbox to set up around the temp checkout; exec never asks to approve.
    codex = agentrun.client_or_skip("codex")
    return [codex, "exec", "--skip-git-repo-check", "--ephemeral", "-s", "danger-full-access", PROMPT], env


def call_output(body: dict[str, Any]) -> str | None:
    """The newest input item's function_call_output text, if it is one."""
    items = body.get("input")
    last = items[-1] if isinstance(items, list) and items else {}
    if last.get("type") != "function_call_output":
        return None
    output = last["output"]
    return output if isinstance(output, str) else "\n".join(b.get("text", "") for b in output)


@pytest.mark.slow
def test_codex_runs_a_command_through_the_agents_policy(tmp_path: Path, spawn_proxy: MakeProxy) -> None:
    task = agentrun.run_task(tmp_path, spawn_proxy, "codex", codex_command)
    run, fact = task.run, task.fact

    # What the user sees: exit 0 and the model's answer, quoting the FAILED line it was sent.
    assert run.returncode == 0, run.describe()
    assert run.stdout.strip().splitlines()[-1] == ANSWER_PREFIX + fact, run.describe()

    # The model got the command's output compressed by the agents policy, with the client's own key.
    responses = [r for r in run.requests if r.method == "POST" and r.path == "/v1/responses"]
    outputs = [t for t in (call_output(r.json()) for r in responses) if t is not None]
    assert len(outputs) == 1, [(r.method, r.path) for r in run.requests]
    agentrun.check_forwarded(outputs[0], task.original, fact)
    assert all(r.headers.get("authorization") == f"Bearer {API_KEY}" for r in responses)
    agentrun.check_audit(run, "/v1/responses", len(responses))
