"""What the client tests share: a real checkout with a bug, the scripted model, ``tersegate serve``.

The checkout is the installed networkx package copied into a temp folder with one regression
committed on top (``dag_longest_path_length`` picks the lightest of parallel edges), so the model's
command, ``pytest -v`` on two of its test modules, prints ~15k characters (~3,900 tokens) of real
output with one FAILED test. The proxy runs as a user runs it: ``tersegate serve`` in a subprocess
(the harness's ``spawn_proxy``), its config in a temp folder, team ``agents`` with the shipped
``policies/agents.yaml``, chosen by the ``X-Tersegate-Team`` header the client is configured to send (the default team has no policy, so a
client whose header did not arrive is not compressed and the test says so).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from fake_model import FakeModel, Script
from fake_upstream import ServerThread
from harness import MakeProxy

from compressors.markers import find_markers

ROOT = Path(__file__).resolve().parents[2]
TEAM = "agents"
API_KEY = "sk-test-clients-0123456789abcdef"  # must never show up in the proxy's log or audit
TEST_FILES = "networkx/algorithms/tests/test_dag.py networkx/algorithms/tests/test_simple_paths.py"
FAILED_TEST = "networkx/algorithms/tests/test_dag.py::TestDagLongestPathLength::test_multigraph_weighted"
FACT = re.compile(r"^FAILED ")  # the short summary's line; the model quotes it
_BUG = (
    "i = max(G[u][v], key=lambda x: G[u][v][x].get(weight, default_weight))",
    "i = min(G[u][v], key=lambda x: G[u][v][x].get(weight, default_weight))",
)


def client_or_skip(name: str) -> str:
    """The path of the client binary ``name``, or skip the test saying it is not installed."""
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"`{name}` is not on PATH (install it to run this client test)")
    return found


def make_checkout(folder: Path) -> Path:
    """networkx, copied from where it is installed, with the regression applied; returns its root."""
    spec = importlib.util.find_spec("networkx")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("networkx is not installed: it is the real code base the agent runs tests on")
    checkout = folder / "checkout"
    shutil.copytree(spec.submodule_search_locations[0], checkout / "networkx", ignore=_no_bytecode)
    dag = checkout / "networkx" / "algorithms" / "dag.py"
    source = dag.read_text(encoding="utf-8")
    if source.count(_BUG[0]) != 1:
        pytest.skip(
            "this networkx version's dag_longest_path_length differs from the one the bug is made for"
        )
    dag.write_text(source.replace(*_BUG), encoding="utf-8")
    return checkout


def _no_bytecode(_folder: str, names: list[str]) -> list[str]:
    return [n for n in names if n == "__pycache__"]


def agent_command() -> str:
    # An absolute interpreter: Codex runs commands in a shell whose PATH may not hold the venv.
    # pytest's summary line grows a " - <message>" tail on a wide terminal or under CI (CI or
    # BUILD_NUMBER set): pinned, so the client's shell and this test's run print the same output.
    return (
        f"env -u CI -u BUILD_NUMBER COLUMNS=80 {sys.executable} -m pytest -v -p no:cacheprovider"
        f" -p no:asyncio {TEST_FILES}"
    )


def run_command(checkout: Path) -> str:
    """The command's real output, run here as the client runs it (stdout and stderr together)."""
    done = subprocess.run(
        agent_command(), shell=True, cwd=checkout, capture_output=True, text=True, timeout=120, check=False
    )
    return done.stdout + done.stderr


def proxy_config(model_url: str) -> dict[str, Any]:
    """The keys that differ from the harness's base config: the fake model as both upstreams, the
    audit on, team ``agents`` on the shipped policy (the default team has none)."""
    return {
        "upstreams": {
            "openai": {"base_url": model_url + "/v1", "timeout_s": 120},
            "anthropic": {"api": "anthropic", "base_url": model_url, "timeout_s": 120},
        },
        "default_upstream": "openai",
        "default_anthropic_upstream": "anthropic",
        "audit": {"path": "audit/audit.jsonl"},
        "compression": {"memo": {"backend": "sqlite", "path": "state/memo.sqlite"}},
        "teams": {"default": {}, TEAM: {"policy": "agents"}},
    }


# (proxy URL, the client's temp HOME) -> (argv, environment) of one headless client run
ClientCommand = Callable[[str, Path], tuple[list[str], dict[str, str]]]


@dataclass
class Task:
    """One run of the task: the command's real output (run here), its FAILED line, the client's run."""

    original: str
    fact: str
    run: Outcome


def run_task(
    tmp_path: Path,
    spawn_proxy: MakeProxy,
    binary: str,
    client: ClientCommand,
    expand_query: str | None = None,
) -> Task:
    """Skip without ``binary``; make the checkout, run the command once here, then the client."""
    client_or_skip(binary)
    checkout = make_checkout(tmp_path)
    original = run_command(checkout)
    script = Script(command=agent_command(), fact=FACT, workdir=str(checkout), expand_query=expand_query)
    return Task(original, failed_line(original), run_agent(tmp_path, spawn_proxy, checkout, client, script))


def run_agent(
    tmp_path: Path, spawn_proxy: MakeProxy, checkout: Path, client: ClientCommand, script: Script
) -> Outcome:
    """The client, in ``checkout``, through ``tersegate serve`` to the scripted model; what it left."""
    app = FakeModel(script)
    server = ServerThread(app).start()
    try:
        # The shipped policy with a 1,000-token target: Claude Code caps a Bash result at about 10,000
        # characters (~2,800 tokens here, whatever BASH_MAX_OUTPUT_LENGTH says), under the shipped
        # 3,000-token target, where the shipped policy rightly forwards it as it came.
        shipped = (ROOT / "policies" / "agents.yaml").read_text(encoding="utf-8")
        assert "max_tokens: 3000" in shipped
        shipped = shipped.replace("max_tokens: 3000", "max_tokens: 1000")
        proxy = spawn_proxy(proxy_config(server.url), policies={"agents": shipped})
        home = tmp_path / "home"
        home.mkdir()
        argv, env = client(proxy.url, home)
        done = subprocess.run(
            argv, cwd=checkout, env=env, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL
        )
        proxy.stop()  # drains: every record is on disk
    finally:
        server.stop()
    folder = proxy.config_path.parent
    audit = audit_records(folder)
    return Outcome(done.returncode, done.stdout, done.stderr, app.requests, audit, proxy.log_text(), folder)


def client_env(home: Path, **extra: str) -> dict[str, str]:
    """A clean environment: a temp HOME, no proxy variables or keys of the machine's user."""
    keep = ("PATH", "LANG", "LC_ALL", "TZ", "TMPDIR")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env.update(HOME=str(home), TERM="dumb", NO_COLOR="1", **extra)
    return env


@dataclass
class Outcome:
    """What a client run left behind."""

    returncode: int
    stdout: str
    stderr: str
    requests: list[Any]  # what the fake model received (fake_upstream.Recorded)
    audit: list[dict[str, Any]]
    proxy_log: str
    folder: Path

    def describe(self) -> str:
        return f"exit {self.returncode}\nstdout: {self.stdout[-2000:]}\nstderr: {self.stderr[-2000:]}\nproxy log: {self.proxy_log[-2000:]}"


def audit_records(folder: Path) -> list[dict[str, Any]]:
    records = []
    for path in sorted((folder / "audit").glob("*.jsonl")):
        records += [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
    return records


def files_holding(folder: Path, secret: str) -> list[str]:
    """Every file under ``folder`` (logs, audit, memo, index) whose bytes contain ``secret``."""
    needle = secret.encode()
    return [str(p) for p in folder.rglob("*") if p.is_file() and needle in p.read_bytes()]


def check_forwarded(forwarded: str, original: str, fact: str) -> None:
    """The tool output as the model got it: much smaller than the command printed, an omission
    marker in the product's grammar, and the FAILED line kept whole, byte for byte."""
    assert len(forwarded) < 0.7 * len(original), (len(forwarded), len(original))
    assert find_markers(forwarded), forwarded[:2000]
    assert fact in forwarded.splitlines()


def check_audit(run: Outcome, route: str, model_requests: int) -> None:
    """One record per model request, under the agents team, the tool turn shrunk; no key anywhere."""
    assert len(run.audit) == model_requests, run.audit
    assert {(r["team"], r["policy"], r["route"], r["status"]) for r in run.audit} == {
        (TEAM, "agents", route, 200)
    }
    assert any(r["tokens_after"] < r["tokens_before"] for r in run.audit), run.audit
    assert files_holding(run.folder, API_KEY) == []


def failed_line(output: str) -> str:
    lines = [line for line in output.splitlines() if FACT.search(line)]
    assert lines == [f"FAILED {FAILED_TEST}"], f"the real run's FAILED lines: {lines}"
    return lines[0]
