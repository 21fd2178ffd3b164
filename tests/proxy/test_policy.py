"""Policy files: the schema contract, defaults, and ``file:line`` errors from ``tersegate check``."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from harness import tersegate_command

from compressors.base import Target
from proxy.config.model import load_config
from proxy.config.yamlsource import ConfigErrors
from proxy.exchange import COMPRESSIBLE_ROUTES
from proxy.policy.model import load_policies, load_policy

REPO = Path(__file__).resolve().parents[2]
SHIPPED = ("default", "rag", "agents", "support")

CONFIG = """\
upstreams:
  openai: {base_url: "http://127.0.0.1:9/v1"}
teams:
  default: {policy: minimal}
  other:
    policy: missing
"""


def write(folder: Path, policies: dict[str, str], config: str = CONFIG) -> Path:
    (folder / "policies").mkdir(exist_ok=True)
    for name, text in policies.items():
        (folder / "policies" / f"{name}.yaml").write_text(text, encoding="utf-8")
    path = folder / "config.yaml"
    path.write_text(config, encoding="utf-8")
    return path


def test_minimal_policy_gets_every_default(tmp_path: Path) -> None:
    path = write(tmp_path, {"minimal": "name: minimal\nrules: []\n"})
    policy, warnings = load_policy(path.parent / "policies" / "minimal.yaml", expected_name="minimal")
    assert warnings == []
    assert policy.mode == "enforce"
    assert policy.routes == COMPRESSIBLE_ROUTES
    assert policy.models == ("*",)
    assert policy.min_saving_tokens == 50
    assert policy.latency_budget_ms == 300
    assert policy.allow_client_override is False
    assert policy.query.kind == "last_user"
    assert policy.rules == ()


def test_the_issue_contract_example_loads(tmp_path: Path) -> None:
    text = """\
name: rag
mode: enforce                  # enforce | shadow | off
routes: ["/v1/chat/completions", "/v1/responses"]
models: ["*"]
min_saving_tokens: 50
latency_budget_ms: 300
allow_client_override: false
query: {pattern: "Question: (.*)"}
rules:
  - name: retrieved-documents
    match: {roles: [user], min_tokens: 400}
    compressor: relevance
    rate: 0.25                 # or max_tokens: 1500
    options: {scorer: embedding}
    preserve: [code, urls, numbers]
  - name: tool-output
    match: {roles: [tool]}
    compressor: normalize
"""
    write(tmp_path, {"rag": text})
    policy, _ = load_policy(tmp_path / "policies" / "rag.yaml", expected_name="rag")
    first, second = policy.rules
    assert first.compressor is not None and first.compressor.name == "relevance"
    assert first.compressor.options["scorer"] == "embedding"
    assert first.target == Target(rate=0.25)
    assert first.match.roles == frozenset({"user"}) and first.match.min_tokens == 400
    assert first.preserve is not None and first.preserve.categories == {"code", "urls", "numbers"}
    assert second.compressor is not None and second.compressor.name == "normalize"
    assert policy.query.pattern is not None and policy.query.pattern.pattern == "Question: (.*)"
    assert policy.applies("/v1/responses", "gpt-4o") and not policy.applies("/v1/completions", "gpt-4o")


def test_every_problem_is_reported_at_its_line(tmp_path: Path) -> None:
    bad = """\
name: bad
mode: enforc
colour: red
query: {pattern: "no group"}
rules:
  - name: a
    match: {roles: [tool, robot]}
    compressor: truncate
    options: {mode: sideways}
  - name: b
    compressor: zip
  - name: c
    compressor: relevance
    options: {nonsense: 1}
  - name: a
    compressor: normalize
    rate: 2
  - name: d
    action: drop
    match: {roles: [tool]}
"""
    path = write(tmp_path, {"minimal": "name: minimal\nrules: []\n", "bad": bad})
    with pytest.raises(ConfigErrors) as caught:
        load_policies(load_config(path), all_files=True)
    lines = str(caught.value).splitlines()
    file = str(tmp_path / "policies" / "bad.yaml")

    def at(line: int, words: str) -> bool:
        return any(x.startswith(f"{file}:{line}: ") and words in x for x in lines)

    assert at(2, "mode: must be enforce, shadow or off")
    assert at(3, "unknown key 'colour'")
    assert at(4, "exactly one group")
    assert at(7, "unknown role 'robot'")
    assert at(9, "mode must be one of head, tail, middle")
    assert at(11, "unknown compressor 'zip'")
    assert at(14, "unknown option(s) nonsense")
    assert at(15, "duplicate rule name 'a'")
    assert at(17, "rate: must be in (0, 1]")
    assert at(18, "drop is only allowed with match.older_than_turns")
    # The missing policy of team "other" points at its line in config.yaml.
    assert any(x.startswith(f"{path}:5: teams.other.policy: policy file") for x in lines)


def test_age_dependent_rules_load_with_a_cache_warning(tmp_path: Path) -> None:
    text = """\
name: minimal
rules:
  - name: old-tool-output
    match: {roles: [tool], older_than_turns: 2}
    compressor: truncate
  - name: drop-old
    action: drop
    match: {roles: [user], older_than_turns: 10, skip_last_user: true}
"""
    config = CONFIG.replace("  other:\n    policy: missing\n", "")
    path = write(tmp_path, {"minimal": text}, config)
    policies = load_policies(load_config(path))
    warnings = [str(w) for w in policies.warnings]
    assert len(warnings) == 3
    assert all("warning:" in w and "prompt caching" in w for w in warnings)
    # The figure bench/replay.py measured (bench/results/cost.md).
    assert all("raised the bill by 23.7% at a 90% cached discount" in w for w in warnings)
    assert warnings[0].startswith(f"{tmp_path / 'policies' / 'minimal.yaml'}:4: ")
    assert policies.for_team("default") is not None


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_policies_load_without_warnings(name: str) -> None:
    policy, warnings = load_policy(REPO / "policies" / f"{name}.yaml", expected_name=name)
    assert warnings == []
    assert policy.rules, "a shipped policy that does nothing"
    for rule in policy.rules:
        assert rule.match.older_than_turns is None and not rule.match.skip_last_user
        assert rule.match.roles is not None and "system" not in rule.match.roles


def test_tersegate_check_prints_file_line_errors(tmp_path: Path) -> None:
    config = CONFIG.replace("  other:\n    policy: missing\n", "")
    path = write(
        tmp_path, {"minimal": "name: minimal\nrules:\n  - name: x\n    compresor: normalize\n"}, config
    )
    run = subprocess.run(
        [*tersegate_command(), "check", "--config", str(path)], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 1
    assert f"{tmp_path / 'policies' / 'minimal.yaml'}:4: rules[0] (x): unknown key 'compresor'" in run.stderr


def test_tersegate_check_passes_the_shipped_config() -> None:
    run = subprocess.run(
        [*tersegate_command(), "check", "--config", str(REPO / "config.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert "0 warning(s)" in run.stdout
