"""``tersegate check`` on the upstream API keys: ``api``, ``deployments``,
``default_anthropic_upstream`` and per-team ``anthropic_upstream``, each error at its line."""

from __future__ import annotations

from pathlib import Path

from test_config import check

GOOD = """\
auth: passthrough
default_team: default
upstreams:
  openai: {base_url: https://api.openai.com/v1}
  anthropic:
    api: anthropic
    base_url: https://api.anthropic.com
    api_key_env: ANTHROPIC_API_KEY
  azure:
    api: azure
    base_url: https://example.openai.azure.com
    deployments: {gpt4o-prod: gpt-4o}
default_upstream: openai
default_anthropic_upstream: anthropic
teams:
  default: {}
  coding: {anthropic_upstream: anthropic, upstream: azure}
"""


def test_the_contract_config_is_valid(tmp_path: Path) -> None:
    out = check(tmp_path, GOOD)
    assert out.returncode == 0, out.stderr
    assert "3 upstream(s)" in out.stdout


def test_each_bad_key_is_reported_at_its_line(tmp_path: Path) -> None:
    bad = (
        GOOD.replace("api: anthropic\n", "api: claude\n", 1)  # line 6
        .replace(
            "base_url: https://example.openai.azure.com", "base_url: https://example.openai.azure.com/v1"
        )
        .replace(
            "  openai: {base_url: https://api.openai.com/v1}",
            "  openai: {base_url: https://api.openai.com/v1, deployments: {a: b}}",
        )
        .replace("default_anthropic_upstream: anthropic", "default_anthropic_upstream: openai")
        .replace("coding: {anthropic_upstream: anthropic", "coding: {anthropic_upstream: nowhere")
    )
    out = check(tmp_path, bad)
    assert out.returncode == 1
    lines = out.stderr.splitlines()

    def at(line: int, words: str) -> bool:
        return any(x.startswith(f"config.yaml:{line}: ") and words in x for x in lines)

    assert at(6, "upstreams.anthropic.api: must be openai, anthropic or azure"), lines
    assert at(11, "upstreams.azure.base_url: is the API root for api: azure"), lines
    assert at(4, "upstreams.openai.deployments: only an upstream with api: azure"), lines
    assert at(14, "default_anthropic_upstream 'openai' has api: openai, not api: anthropic"), lines
    assert at(17, "teams.coding.anthropic_upstream 'nowhere' is not in upstreams"), lines
