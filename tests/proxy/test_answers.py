"""Clear answers (issue 13, defect 11): what a client or operator is told must say what happened.

An unknown team is a permission problem (403 naming the team header), not a bad key; a mode
override the policy refuses is answered with a header saying so; ``mode: off`` unquoted (YAML reads
false) means off; ``tersegate audit verify`` with no path checks the config's audit file.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx
import openai
import pytest
from harness import MakeProxy, Upstream, run_tersegate, tersegate_command, wait_compression_ready

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello"}]}
SPACED = "The ticket   says   the   printer   jams.\n\n\n\n" * 120  # normalize shrinks it

TIDY = """\
name: tidy
min_saving_tokens: 0
allow_client_override: {override}
mode: {mode}
rules:
  - name: long-user
    match: {{roles: [user], min_tokens: 200}}
    compressor: normalize
"""


def tidy(*, override: bool = False, mode: str = "enforce") -> dict[str, str]:
    return {"tidy": TIDY.format(override=str(override).lower(), mode=mode)}


def ask(proxy_url: str, mode: str) -> httpx.Response:
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": SPACED}]}
    headers = {"Authorization": "Bearer sk-client", "X-Tersegate-Mode": mode}
    return httpx.post(proxy_url + "/v1/chat/completions", json=body, headers=headers, timeout=30)


@pytest.mark.slow
def test_unknown_team_is_403_naming_the_team_header(spawn_proxy: MakeProxy, upstream: Upstream) -> None:
    proxy = spawn_proxy({"teams": {"default": {}, "search": {}}})
    client = openai.OpenAI(base_url=proxy.base_url, api_key="sk-good-key", max_retries=0)
    with pytest.raises(openai.PermissionDeniedError) as caught:
        client.chat.completions.create(**CHAT, extra_headers={"X-Tersegate-Team": "nobody"})  # type: ignore[call-overload]
    assert caught.value.status_code == 403
    assert "X-Tersegate-Team" in caught.value.message and "'nobody'" in caught.value.message
    assert isinstance(caught.value.body, dict) and caught.value.body["code"] == "unknown_team"
    assert upstream.requests == []


@pytest.mark.slow
def test_refused_mode_override_is_answered_with_a_header(spawn_proxy: MakeProxy, upstream: Upstream) -> None:
    strict = wait_compression_ready(
        spawn_proxy({"teams": {"default": {"policy": "tidy"}}}, policies=tidy(override=False))
    )
    refused = ask(strict.url, "off")
    assert refused.status_code == 200
    assert refused.headers["x-tersegate-mode"] == "enforce"
    assert refused.headers["x-tersegate-mode-override"].startswith("refused")
    assert len(upstream.last().body) < len(SPACED)  # compressed anyway

    open_ = wait_compression_ready(
        spawn_proxy({"teams": {"default": {"policy": "tidy"}}}, policies=tidy(override=True))
    )
    applied = ask(open_.url, "off")
    assert applied.headers["x-tersegate-mode"] == "off"
    assert applied.headers["x-tersegate-mode-override"] == "applied"
    unknown = ask(open_.url, "turbo")
    assert unknown.headers["x-tersegate-mode"] == "enforce"
    assert unknown.headers["x-tersegate-mode-override"].startswith("refused")
    assert "turbo" not in unknown.headers["x-tersegate-mode-override"]  # client text is not echoed
    plain = httpx.post(open_.base_url + "/chat/completions", json=CHAT, headers={"Authorization": "Bearer k"})
    assert "x-tersegate-mode-override" not in plain.headers


@pytest.mark.slow
def test_unquoted_mode_off_means_off(spawn_proxy: MakeProxy, upstream: Upstream) -> None:
    proxy = wait_compression_ready(
        spawn_proxy({"teams": {"default": {"policy": "tidy"}}}, policies=tidy(mode="off"))
    )
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": SPACED}]}
    response = httpx.post(
        proxy.base_url + "/chat/completions", json=body, headers={"Authorization": "Bearer k"}
    )
    assert response.status_code == 200 and response.headers["x-tersegate-mode"] == "off"
    assert upstream.last().json() == body


def test_unquoted_mode_on_is_rejected_with_a_hint(tmp_path: Path) -> None:
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "tidy.yaml").write_text(TIDY.format(override="false", mode="on"))
    config = tmp_path / "config.yaml"
    config.write_text(
        "upstreams: {openai: {base_url: 'http://127.0.0.1:9/v1'}}\nteams: {default: {policy: tidy}}\n"
    )
    result = subprocess.run(
        [*tersegate_command(), "check", "--config", str(config)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert "tidy.yaml:4: policy.mode" in result.stderr and "quote it" in result.stderr


@pytest.mark.slow
def test_audit_verify_defaults_to_the_configs_audit_path(spawn_proxy: MakeProxy, upstream: Upstream) -> None:
    proxy = spawn_proxy({"audit": {"path": "logs/audit.jsonl"}})
    client = openai.OpenAI(base_url=proxy.base_url, api_key="sk-client", max_retries=0)
    for _ in range(3):
        client.chat.completions.create(**CHAT)  # type: ignore[call-overload]
    folder = proxy.config_path.parent
    by_config = run_tersegate("audit", "verify", "--config", str(proxy.config_path))
    assert by_config.returncode == 0, by_config.stderr
    assert "ok: 3 records" in by_config.stdout
    in_folder = run_tersegate("audit", "verify", cwd=folder)  # config.yaml in the working directory
    assert in_folder.returncode == 0 and "ok: 3 records" in in_folder.stdout
