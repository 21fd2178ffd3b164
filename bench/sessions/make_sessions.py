"""Build long coding-agent sessions whose every tool output is a real output of a real command.

A session script (``bench/sessions/scripts/<name>.py``) prepares a public code base (a clone at a
pinned commit, one bug committed on top as a "regression", a service log produced by really
running the buggy code) and lists the agent's steps: the assistant's words and one tool call
each. The words and calls are scripted; every output is what the command printed when this
generator ran it. Each step also names its ``facts``: regular expressions whose matches in the
real output are what the NEXT step needs (a FAILED test id, a traceback's last line and
file:line, the line the agent then edits); a pattern that matches nothing stops the build, so the
script and reality cannot drift apart silently.

    python bench/sessions/make_sessions.py --workdir /tmp/tersegate-sessions \\
        --python /tmp/tersegate-sessions/venv/bin/python [--only starlette_cookie]

Prerequisites (bench/sessions/README.md): a throwaway venv with each code base's test
dependencies from PyPI, and each repository's snapshot (``--source name=path-or-url``).
The result: ``bench/sessions/<name>.json.gz`` (the steps, provenance, system prompt, task and
tool definitions). bench/sessions/shapes.py turns it into OpenAI chat and Anthropic Messages
requests, turn by turn.
"""

from __future__ import annotations

import argparse
import gzip
import importlib
import json
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SCRIPTS = ("starlette_cookie", "click_intrange")
MAX_MATCHES = 8  # per fact pattern: a FAILED list or a grep's hits, not a whole log
EDIT_TOOL = """\
import json, sys
from pathlib import Path
args = json.load(sys.stdin)
path = Path(args["path"])
text = path.read_text()
count = text.count(args["old_string"])
if count != 1:
    sys.exit(f"error: old_string found {count} times in {path}, expected exactly once")
start = text[: text.index(args["old_string"])].count("\\n")
path.write_text(text.replace(args["old_string"], args["new_string"]))
lines = path.read_text().splitlines()
end = start + args["new_string"].count("\\n")
print(f"The file {path} has been updated. Here's a snippet of the edited file:")
for n in range(max(start - 4, 0), min(end + 5, len(lines))):
    print(f"{n + 1:6}\\t{lines[n]}")
"""


@dataclass(frozen=True)
class Step:
    """One tool call of the agent: what it says, which tool with which arguments, what to keep."""

    say: str
    tool: str  # bash | read_file | grep | edit_file
    args: dict[str, Any]
    facts: tuple[str, ...] = ()  # regular expressions (re.M) over the real output


@dataclass
class Script:
    """What a session script hands the generator (see module docs)."""

    name: str
    repo: str  # owner/name on GitHub
    commit: str
    system: str
    task: str
    steps: list[Step]
    final: str
    setup: list[str] = field(default_factory=list)  # shell commands run before step 1, for provenance


def command_of(step: Step, tools_dir: Path) -> tuple[str, str | None]:
    """``(shell command, stdin)`` that performs a tool call."""
    a = step.args
    if step.tool == "bash":
        return a["command"], None
    if step.tool == "read_file":
        cmd = f"cat -n {shlex.quote(a['path'])}"
        if "offset" in a:
            cmd += f" | sed -n '{a['offset']},{a['offset'] + a.get('limit', 2000) - 1}p'"
        return cmd, None
    if step.tool == "grep":
        flags = "-rn" + ("i" if a.get("ignore_case") else "")
        include = f" --include={shlex.quote(a['glob'])}" if "glob" in a else ""
        return f"grep {flags}{include} -E {shlex.quote(a['pattern'])} {shlex.quote(a.get('path', '.'))}", None
    if step.tool == "edit_file":
        return f"python3 {tools_dir / 'edit_file.py'}", json.dumps(a)
    raise ValueError(f"unknown tool {step.tool!r}")


def run(command: str, cwd: Path, env: dict[str, str], stdin: str | None = None) -> tuple[str, int, float]:
    """``(stdout and stderr interleaved, exit code, seconds)`` of one shell command."""
    t0 = time.monotonic()
    done = subprocess.run(
        ["bash", "-c", command],
        cwd=cwd,
        env=env,
        input=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=900,
    )
    return done.stdout, done.returncode, time.monotonic() - t0


def facts_of(patterns: tuple[str, ...], output: str, where: str) -> list[str]:
    """The exact substrings the patterns find; a pattern that finds nothing is a script error."""
    found: list[str] = []
    for pattern in patterns:
        matches = [m.group(0) for m in re.finditer(pattern, output, re.M) if m.group(0)]
        if not matches:
            raise SystemExit(f"{where}: fact {pattern!r} not in the real output:\n{output[-3000:]}")
        for match in matches[:MAX_MATCHES]:
            if match not in found:
                found.append(match)
    return found


def environment(python: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "TERSEGATE"))}
    env.update(
        PATH=f"{python.parent}:{env.get('PATH', '/usr/bin:/bin')}",
        VIRTUAL_ENV=str(python.parent.parent),
        PYTHONDONTWRITEBYTECODE="1",
        COLUMNS="80",
        TZ="UTC",
        GIT_PAGER="cat",
        PAGER="cat",
        NO_COLOR="1",
    )
    return env


def build(script: Script, repo_dir: Path, env: dict[str, str], tools_dir: Path) -> dict[str, Any]:
    steps = []
    for n, step in enumerate(script.steps, 1):
        command, stdin = command_of(step, tools_dir)
        output, code, seconds = run(command, repo_dir, env, stdin)
        where = f"{script.name} step {n} ({command[:60]})"
        steps.append(
            {
                "n": n,
                "say": step.say,
                "tool": step.tool,
                "args": step.args,
                "command": command,
                "exit_code": code,
                "seconds": round(seconds, 2),
                "output": output,
                "facts": facts_of(step.facts, output, where),
            }
        )
        print(f"  {n:2} {step.tool:9} {len(output):7,} chars exit {code}  {command[:70]}", flush=True)
    return {
        "name": script.name,
        "repo": script.repo,
        "commit": script.commit,
        "setup": script.setup,
        "system": script.system,
        "task": script.task,
        "tools": TOOLS,
        "steps": steps,
        "final": script.final,
        "generated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


TOOLS: list[dict[str, Any]] = [
    {
        "name": "bash",
        "description": "Run a shell command in the repository and return its stdout and stderr.",
        "parameters": {
            "type": "object",
            "properties": {"command": {"type": "string", "description": "The command to run."}},
            "required": ["command"],
        },
    },
    {
        "name": "read_file",
        "description": "Read a file with line numbers (cat -n); offset and limit select lines.",
        "parameters": {
            "type": "object",
            "properties": {
                "path": {"type": "string"},
                "offset": {"type": "integer", "description": "First line to read (1-based)."},
                "limit": {"type": "integer", "description": "How many lines to read."},
            },
            "required": ["path"],
        },
    },
    {
        "name": "grep",
        "description": "Search files recursively for an extended regular expression (grep -rnE).",
        "parameters": {
            "type": "object",
            "properties": {
                "pattern": {"type": "string"},
                "path": {"type": "string"},
                "glob": {"type": "string", "description": "Only files matching this glob."},
                "ignore_case": {"type": "boolean"},
            },
            "required": ["pattern"],
        },
    },
    {
        "name": "edit_file",
        "description": "Replace one exact occurrence of old_string by new_string in a file.",
        "parameters": {
            "type": "object",
            "properties": {
                "path": {"type": "string"},
                "old_string": {"type": "string"},
                "new_string": {"type": "string"},
            },
            "required": ["path", "old_string", "new_string"],
        },
    },
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/tersegate-sessions"))
    parser.add_argument("--python", type=Path, required=True, help="the throwaway venv's python")
    parser.add_argument("--source", action="append", default=[], help="name=path or URL of a repository")
    parser.add_argument("--only", action="append", choices=SCRIPTS)
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args()
    sources = dict(s.split("=", 1) for s in args.source)
    sys.path.insert(0, str(HERE.parent.parent))
    env = environment(args.python.absolute())
    tools_dir = args.workdir / "tools"
    tools_dir.mkdir(parents=True, exist_ok=True)
    (tools_dir / "edit_file.py").write_text(EDIT_TOOL, encoding="utf-8")
    for name in args.only or SCRIPTS:
        module = importlib.import_module(f"bench.sessions.scripts.{name}")
        print(f"{name}: preparing", flush=True)
        script, repo_dir = module.prepare(args.workdir, sources, env)
        session = build(script, repo_dir, env, tools_dir)
        path = args.out / f"{name}.json.gz"
        data = json.dumps(session, indent=1, ensure_ascii=False).encode()
        path.write_bytes(gzip.compress(data, mtime=0))
        print(f"{name}: {len(session['steps'])} steps, {len(data):,} bytes -> {path}")


if __name__ == "__main__":
    main()
