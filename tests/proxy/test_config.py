"""``tersegate check``: config and policy problems reported as ``file:line: message``, exit 1."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from harness import tersegate_command

from proxy.config.model import (
    AuditConfig,
    CompressionConfig,
    Config,
    ListenConfig,
    TeamConfig,
    UpstreamConfig,
    load_config,
)
from proxy.policy.model import Match, Policy, load_policy

ROOT = Path(__file__).resolve().parents[2]

GOOD = """\
listen: {host: 127.0.0.1, port: 8080}
auth: passthrough
default_team: default
upstreams:
  openai:
    base_url: https://api.openai.com/v1
default_upstream: openai
policies_dir: policies
teams:
  default: {policy: default}
"""


def check(folder: Path, text: str) -> subprocess.CompletedProcess[str]:
    (folder / "config.yaml").write_text(text, encoding="utf-8")
    (folder / "policies").mkdir(exist_ok=True)
    return subprocess.run(
        [*tersegate_command(), "check", "--config", "config.yaml"],
        capture_output=True,
        text=True,
        cwd=folder,
        timeout=60,
    )


@pytest.mark.slow
def test_shipped_config_is_valid() -> None:
    out = subprocess.run(
        [*tersegate_command(), "check"], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert "config.yaml: ok" in out.stdout


@pytest.mark.slow
def test_unknown_key_wrong_type_and_missing_policy_file(tmp_path: Path) -> None:
    text = GOOD.replace("auth: passthrough", "auth: passthrough\ncolour: blue").replace(
        "    base_url: https://api.openai.com/v1",
        "    base_url: https://api.openai.com/v1\n    timeout_s: soon",
    )
    out = check(tmp_path, text)
    assert out.returncode == 1
    lines = out.stderr.splitlines()
    assert any(line.startswith("config.yaml:3: ") and "unknown key 'colour'" in line for line in lines), lines
    assert any(line.startswith("config.yaml:8: ") and "timeout_s" in line for line in lines), lines
    # The policy file is checked too, pointing at the team's line.
    out = check(tmp_path, GOOD)
    assert out.returncode == 1
    assert any(
        line.startswith("config.yaml:10: ") and "default.yaml not found" in line
        for line in out.stderr.splitlines()
    ), out.stderr
    (tmp_path / "policies" / "default.yaml").write_text("name: default\nrules: []\n", encoding="utf-8")
    out = check(tmp_path, GOOD)
    assert out.returncode == 0, out.stderr


def test_invalid_yaml_and_missing_file(tmp_path: Path) -> None:
    out = check(tmp_path, "listen: {host: [\n")
    assert out.returncode == 1 and out.stderr.startswith("config.yaml:")
    out = subprocess.run(
        [*tersegate_command(), "check", "--config", "nope.yaml"], capture_output=True, text=True, cwd=tmp_path
    )
    assert out.returncode == 1 and "nope.yaml:0: file not found" in out.stderr


def test_keys_left_out_take_the_models_defaults(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(
        "upstreams: {openai: {base_url: 'http://127.0.0.1:9/v1'}}\n"
        "teams: {default: {}}\naudit: {}\ncompression: {}\nlisten: {}\n",
        encoding="utf-8",
    )
    config = load_config(path)
    assert config.upstreams == {"openai": UpstreamConfig("openai", "http://127.0.0.1:9/v1")}
    assert config.teams == {"default": TeamConfig("default")}
    assert (config.audit, config.compression, config.listen) == (
        AuditConfig(),
        CompressionConfig(),
        ListenConfig(),
    )
    plain = Config(path=path)
    for name in ("auth", "default_team", "default_upstream", "max_body_bytes", "log_level"):
        assert getattr(config, name) == getattr(plain, name), name
    assert config.policies_dir == tmp_path / plain.policies_dir

    policy_path = tmp_path / "p.yaml"
    policy_path.write_text(
        "name: p\nrules:\n  - {name: tidy, compressor: normalize, match: {}}\n", encoding="utf-8"
    )
    policy, _ = load_policy(policy_path)
    assert policy == Policy(name="p", file=str(policy_path), rules=policy.rules)
    assert policy.rules[0].match == Match()


def test_audit_inline_writes_is_one_of_three_modes(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    head = "upstreams: {openai: {base_url: 'http://127.0.0.1:9/v1'}}\nteams: {default: {}}\n"
    path.write_text(head + "audit: {path: a.jsonl, inline_writes: never}\n", encoding="utf-8")
    assert load_config(path).audit.inline_writes == "never"
    out = check(tmp_path, GOOD + "audit: {path: a.jsonl, inline_writes: sometimes}\n")
    assert out.returncode == 1
    assert "audit.inline_writes: must be one of when_idle, always, never" in out.stderr, out.stderr
