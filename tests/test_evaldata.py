"""The evaluation data's helpers (evaldata/): traces as an API client sends them, the sources table,
the fetch script's check (no download), and what a run without the data says."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import httpx
import pytest
from harness import MakeProxy

import evaldata
from evaldata.fetch import check
from evaldata.sources import SOURCES, blob_hash

ROOT = Path(__file__).resolve().parents[1]


def write_trace(path: Path) -> None:
    """A two-turn function-calling trace in SWE-agent's format (``tool_call_ids``, extra fields)."""
    call = {"id": "call_1", "type": "function", "function": {"name": "open", "arguments": '{"path": "a.py"}'}}
    history = [
        {"role": "system", "content": "You are an agent.", "agent": "main"},
        {"role": "user", "content": "Fix the bug.", "agent": "main"},
        {"role": "assistant", "content": "Opening.", "tool_calls": [call], "thought": "look"},
        {"role": "tool", "content": "print('hi')", "tool_call_ids": ["call_1"], "agent": "main"},
        {"role": "assistant", "content": "Done.", "tool_calls": None, "thought": "ok"},
    ]
    path.write_text(json.dumps({"history": history, "info": {}}), encoding="utf-8")


def test_trace_messages_carry_tool_call_ids_and_turns_end_before_each_reply(tmp_path: Path) -> None:
    trace = tmp_path / "t.traj"
    write_trace(trace)
    messages = evaldata.agent_messages(trace)
    assert messages[3] == {"role": "tool", "content": "print('hi')", "tool_call_id": "call_1"}
    assert all(set(m) <= {"role", "content", "tool_calls", "tool_call_id"} for m in messages)
    assert [len(turn) for turn in evaldata.turns(messages)] == [2, 4]


def test_the_upstream_accepts_trace_turns_and_refuses_a_tool_message_without_its_call_id(
    make_proxy: MakeProxy, tmp_path: Path
) -> None:
    trace = tmp_path / "t.traj"
    write_trace(trace)
    proxy = make_proxy()
    last = evaldata.turns(evaldata.agent_messages(trace))[-1]
    statuses = []
    for messages in (last, [{k: v for k, v in m.items() if k != "tool_call_id"} for m in last]):
        response = httpx.post(
            proxy.base_url + "/chat/completions",
            json={"model": "gpt-4o", "messages": messages},
            headers={"Authorization": "Bearer sk-x"},
            timeout=30,
        )
        statuses.append(response.status_code)
    assert statuses == [200, 400]
    assert response.json()["error"]["code"] == "missing_required_parameter"


def test_every_file_the_tests_read_has_a_source() -> None:
    listed = {f"{s.folder}/{name}" for s in SOURCES for name, _, _ in s.files}
    wanted = [evaldata.NQ, evaldata.KV75, evaldata.QA_PROMPT, evaldata.KV_PROMPT, evaldata.GSM8K_PROMPT]
    assert {*wanted, evaldata.OPENAPI, *evaldata.TRACES} <= listed
    for source in SOURCES:
        assert re.fullmatch(r"[0-9a-f]{40}", source.commit) and source.licence
        assert (
            source.url("a/b.txt")
            == f"https://raw.githubusercontent.com/{source.repo}/{source.commit}/a/b.txt"
        )


def test_blob_hash_is_gits() -> None:
    out = subprocess.run(["git", "hash-object", "--stdin"], input=b"hello\n", capture_output=True, check=True)
    assert blob_hash(b"hello\n") == out.stdout.decode().strip()


def test_check_names_what_is_missing_or_changed(tmp_path: Path) -> None:
    source = SOURCES[0]
    name, _, _ = source.files[0]
    (tmp_path / source.folder).mkdir()
    (tmp_path / source.folder / name).write_text("not the licence\n", encoding="utf-8")
    problems = check(tmp_path)
    assert len(problems) == sum(len(s.files) for s in SOURCES)
    assert problems[0] == f"{tmp_path / source.folder / name}: differs from {source.repo}@{source.commit[:8]}"
    assert problems[1].endswith(": missing")
    run = subprocess.run(
        [sys.executable, "-m", "evaldata.fetch", "--check", "--dest", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert run.returncode == 1 and run.stderr.splitlines() == problems


@pytest.mark.evaldata
def test_the_local_copy_matches_the_sources_table() -> None:
    assert check(evaldata.root()) == []


def test_evaldata_is_not_shipped_in_the_wheel() -> None:
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"][
        "packages"
    ]
    assert not [p for p in packages if p.split(".")[0] == "evaldata"]


@pytest.mark.slow
def test_a_run_without_the_data_says_once_how_many_were_skipped_and_how_to_get_it(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/compressors/test_units.py"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        env={**os.environ, evaldata.ENV: str(tmp_path / "absent")},
    )
    assert run.returncode == 0, run.stdout + run.stderr
    notes = [line for line in run.stdout.splitlines() if "evaluation data is absent" in line]
    assert len(notes) == 1, run.stdout
    skipped = int(re.search(r"(\d+) skipped", run.stdout.splitlines()[-1]).group(1))  # type: ignore[union-attr]
    assert notes[0].startswith(f"{skipped} tests skipped:") and "python -m evaldata.fetch" in notes[0]
    assert skipped >= 2
