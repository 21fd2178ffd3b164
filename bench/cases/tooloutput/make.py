"""How the tool-output cases were made: real commands on public code, run once, outputs kept here.

Each case is ``<name>.txt`` (the output, as the agent's tool got it) and ``<name>.json``: the command, where it
ran (repo@commit, or the local environment), the query an agent would have (task + the call), and ``facts``:
exact substrings of the output that the next step needs and that compression must keep.

Sources are snapshots of public repositories (encode/starlette, encode/httpx, pallets/click) fetched as git
mirrors (``git archive`` of the commit named in each case), a throw-away venv with starlette's test
dependencies, and the packages installed in /work/venv. Re-running this script rewrites the outputs (timings
and some log fields differ run to run; the facts are chosen to be stable). Not run by the tests.

    python bench/cases/tooloutput/make.py --work /tmp/casework --venv /tmp/casework/venv
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).parent
MIRRORS = Path("/work/.mirror")
REPOS = {
    "starlette": ("encode+starlette", "cb8f84f5284dc301ca7a31eb732b9e140769dd48"),
    "httpx": ("encode+httpx", "ae1b9f66238f75ced3ced5e4485408435de10768"),
    "click": ("pallets+click", "2c8cd3ac958a7eb316d67f2d316c27086c4c0369"),
}


def checkout(work: Path, name: str) -> Path:
    """A fresh tree of the pinned commit (bugs introduced below go into it, never into the mirror)."""
    mirror, commit = REPOS[name]
    dest = work / f"{name}-tree"
    subprocess.run(["rm", "-rf", str(dest)], check=True)
    dest.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "--git-dir", str(MIRRORS / mirror / "repo"), "archive", commit],
        check=True,
        capture_output=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env, check=False)
    return done.stdout + done.stderr


def save(name: str, output: str, *, command: str, where: str, query: str, facts: list[str]) -> None:
    missing = [fact for fact in facts if fact not in output]
    if missing:
        raise SystemExit(f"{name}: facts not in the output: {missing}")
    (HERE / f"{name}.txt").write_text(output)
    meta = {"command": command, "where": where, "query": query, "facts": facts}
    (HERE / f"{name}.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"{name}: {len(output)} chars")


def where(name: str) -> str:
    mirror, commit = REPOS[name]
    return f"{mirror.replace('+', '/')}@{commit}"


def starlette_pytest(work: Path, venv: Path) -> None:
    tree = checkout(work, "starlette")
    source = tree / "starlette" / "responses.py"
    # the bug: RedirectResponse defaults to 308 instead of 307
    source.write_text(source.read_text().replace("status_code: int = 307,", "status_code: int = 308,", 1))
    cmd = [
        str(venv / "bin/python"),
        "-m",
        "pytest",
        "-v",
        "-p",
        "no:cacheprovider",
        "-o",
        "filterwarnings=ignore",
    ]
    out = run([*cmd, "tests"], tree)
    save(
        "starlette_pytest_v",
        out,
        command="python -m pytest -v tests   (RedirectResponse's default status changed 307 -> 308)",
        where=where("starlette"),
        query="Task: the redirect tests fail after my change to responses.py, fix it. Call: Bash "
        '{"command": "python -m pytest -v tests"}',
        facts=[
            *[line for line in out.splitlines() if " FAILED" in line][:4],
            "assert 308 == 307",
            next(line for line in out.splitlines() if " failed, " in line),
        ],
    )


def click_pytest(work: Path, venv: Path) -> None:
    tree = checkout(work, "click")
    source = tree / "src" / "click" / "types.py"
    # the bug: a closed upper bound described as open
    source.write_text(source.read_text().replace('rop = "<" if self.max_open else "<="', 'rop = "<"', 1))
    env = {**os.environ, "PYTHONPATH": str(tree / "src")}
    cmd = [
        str(venv / "bin/python"),
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "-o",
        "filterwarnings=ignore",
    ]
    out = run([*cmd, "tests"], tree, env)
    save(
        "click_pytest_q",
        out,
        command="python -m pytest -q tests   (IntRange's closed upper bound described as open)",
        where=where("click"),
        query="Task: the range help text is wrong since my edit of types.py. Call: Bash "
        '{"command": "python -m pytest -q tests"}',
        facts=[
            *[line for line in out.splitlines() if line.startswith("FAILED ")][:3],
            out.strip().splitlines()[-1],
        ],
    )


def cat_n(work: Path) -> None:
    tree = checkout(work, "httpx")
    out = run(["cat", "-n", "httpx/_client.py"], tree)
    lines = out.splitlines()
    send = next(line for line in lines if "    def send(" in line)
    follow = next(line for line in lines if "follow_redirects = (" in line)
    save(
        "httpx_client_cat_n",
        out,
        command="cat -n httpx/_client.py",
        where=where("httpx"),
        query="Task: Client.send ignores follow_redirects set on the client; find where it is resolved. "
        'Call: Bash {"command": "cat -n httpx/_client.py"}',
        facts=[send, follow],
    )


def claude_read(work: Path) -> None:
    tree = checkout(work, "click")
    text = (tree / "src/click/core.py").read_text().splitlines()[:2000]
    # Claude Code's Read tool: the line number right-aligned in 6 columns, an arrow, the line (2,000 lines max)
    out = "\n".join(f"{i:>6}\u2192{line}" for i, line in enumerate(text, 1)) + "\n"
    invoke = next(f"{i:>6}\u2192{line}" for i, line in enumerate(text, 1) if "    def invoke(" in line)
    save(
        "click_core_read",
        out,
        command='Claude Code Read {"file_path": "src/click/core.py"} (first 2,000 lines, its "     1\u2192" format)',
        where=where("click"),
        query="Task: Context.invoke should forward default values of the callee; look at Context.invoke. "
        'Call: Read {"file_path": "src/click/core.py"}',
        facts=[invoke],
    )


APP = """
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route


async def item(request):
    return JSONResponse({"id": int(request.path_params["id"])})


async def ratio(request):
    a, b = int(request.path_params["a"]), int(request.path_params["b"])
    return JSONResponse({"ratio": a / b})


app = Starlette(routes=[Route("/items/{id}", item), Route("/ratio/{a}/{b}", ratio)])
"""


def uvicorn_log(work: Path, venv: Path) -> None:
    tree = checkout(work, "starlette")
    (tree / "app.py").write_text(APP)
    env = {**os.environ, "PYTHONPATH": str(tree)}
    log = work / "uvicorn.log"
    with socket.socket() as probe:  # a free port on loopback
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    with log.open("w") as sink:
        server = subprocess.Popen(
            [str(venv / "bin/python"), "-m", "uvicorn", "app:app", "--port", port, "--log-level", "debug"],
            cwd=tree,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
        try:
            time.sleep(2)
            for i in range(1400):
                path = "/ratio/7/0" if i == 903 else (f"/ratio/{i}/3" if i % 50 == 0 else f"/items/{i}")
                with contextlib.suppress(OSError):
                    urllib.request.urlopen(f"http://127.0.0.1:{port}{path}").read()
        finally:
            server.terminate()
            server.wait()
    out = log.read_text()
    save(
        "uvicorn_log",
        out,
        command="uvicorn app:app --log-level debug, 1,400 requests, one of them dividing by zero",
        where=where("starlette") + " (app.py in this script, uvicorn from PyPI)",
        query="Task: users report a 500 on the ratio endpoint; find the cause in the server log. "
        'Call: Bash {"command": "cat server.log"}',
        facts=[
            "ZeroDivisionError: division by zero",
            '"GET /ratio/7/0 HTTP/1.1" 500 Internal Server Error',
            'return JSONResponse({"ratio": a / b})',
        ],
    )


def git_log_stat(work: Path) -> None:
    mirror, commit = REPOS["starlette"]
    git = ["git", "--git-dir", str(MIRRORS / mirror / "repo")]
    out = run([*git, "log", "--stat", "-n", "120", commit], work)
    subject = next(line for line in out.splitlines() if "GZip" in line or "gzip" in line)
    save(
        "starlette_git_log_stat",
        out,
        command="git log --stat -n 120",
        where=where("starlette"),
        query="Task: find the commit that changed the GZip middleware and who wrote it. "
        'Call: Bash {"command": "git log --stat -n 120"}',
        facts=[subject, "Version 0.47.3 (#2985)"],
    )


def git_diff(work: Path) -> None:
    mirror, commit = REPOS["starlette"]
    git = ["git", "--git-dir", str(MIRRORS / mirror / "repo")]
    out = run([*git, "diff", "0.46.0", commit, "--", "starlette/"], work)
    save(
        "starlette_git_diff",
        out,
        command=f"git diff 0.46.0 {commit[:10]} -- starlette/",
        where=where("starlette"),
        query="Task: what changed in starlette/middleware/gzip.py since 0.46.0? "
        'Call: Bash {"command": "git diff 0.46.0 HEAD -- starlette/"}',
        facts=[
            line for line in out.splitlines() if line.startswith("diff --git a/starlette/middleware/gzip")
        ][:1],
    )


def grep_rn(work: Path) -> None:
    tree = checkout(work, "starlette")
    out = run(["grep", "-rn", "websocket", "starlette"], tree)
    hits = [line for line in out.splitlines() if line.startswith("starlette/routing.py") and "scope[" in line]
    save(
        "starlette_grep",
        out,
        command="grep -rn websocket starlette",
        where=where("starlette"),
        query="Task: a websocket route matches http scopes; check the scope type tests in starlette/routing.py. "
        'Call: Grep {"pattern": "websocket", "path": "starlette"}',
        facts=hits[:3],
    )


def small_pytest(work: Path, venv: Path) -> None:
    tree = checkout(work, "starlette")
    cmd = [
        str(venv / "bin/python"),
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "-o",
        "filterwarnings=ignore",
    ]
    out = run([*cmd, "tests/test_convertors.py"], tree)
    save(
        "starlette_small_pytest",
        out,
        command="python -m pytest -q tests/test_convertors.py",
        where=where("starlette"),
        query='Task: check the status module still works. Call: Bash {"command": "pytest -q tests/test_convertors.py"}',
        facts=[out.strip().splitlines()[-1]],
    )


def pip_list(_: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "pip", "list", "--format", "json"], capture_output=True, text=True, check=True
    ).stdout
    pretty = json.dumps(json.loads(out), indent=4) + "\n"
    save(
        "pip_list_json",
        pretty,
        command="pip list --format json | python -m json.tool",
        where="/work/venv (tersegate's environment)",
        query='Task: which httpx version is installed? Call: Bash {"command": "pip list --format json"}',
        facts=['"httpx"', '"0.29.0"'],
    )


def mypy_click_tests(work: Path, venv: Path) -> None:
    tree = checkout(work, "click")
    env = {**os.environ, "PYTHONPATH": str(tree / "src")}
    cmd = [str(venv / "bin/python"), "-m", "mypy", "--strict", "--no-incremental", "--cache-dir=/dev/null"]
    out = run([*cmd, "tests/test_options.py", "tests/test_basic.py", "tests/test_termui.py"], tree, env)
    lines = out.splitlines()
    # --pretty (click's config) wraps the code onto the next line: the fact is the error line above it
    rare = [lines[i - 1] for i, line in enumerate(lines) if line in ("[name-defined]", "[arg-type]")][:2]
    save(
        "click_tests_mypy",
        out,
        command="mypy --strict tests/test_options.py tests/test_basic.py tests/test_termui.py",
        where=where("click"),
        query="Task: make tests/test_termui.py type-check. Call: Bash "
        '{"command": "mypy --strict tests/test_options.py tests/test_basic.py tests/test_termui.py"}',
        facts=[*rare, out.strip().splitlines()[-1]],
    )


def ruff_starlette(work: Path) -> None:
    tree = checkout(work, "starlette")
    ruff = str(Path(sys.executable).parent / "ruff")
    cmd = [ruff, "check", "--no-cache", "--isolated", "--select", "ALL", "--output-format", "concise"]
    out = run([*cmd, "starlette"], tree)
    lines = out.splitlines()
    codes: dict[str, list[str]] = {}
    for line in lines:
        parts = line.split(" ")
        if line.startswith("starlette/") and len(parts) > 1:
            codes.setdefault(parts[1], []).append(line)
    rare = sorted(code for code, found in codes.items() if len(found) == 1)[:2]
    save(
        "starlette_ruff",
        out,
        command="ruff check --isolated --select ALL --output-format concise starlette",
        where=where("starlette"),
        query=f"Task: fix the {rare[0]} and {rare[1]} findings. Call: Bash "
        '{"command": "ruff check --select ALL --output-format concise starlette"}',
        facts=[
            codes[rare[0]][0],
            codes[rare[1]][0],
            next(line for line in lines if line.startswith("Found ")),
        ],
    )


CASES = {
    "starlette_pytest_v": starlette_pytest,
    "click_pytest_q": click_pytest,
    "uvicorn_log": uvicorn_log,
    "mypy": mypy_click_tests,
    "small_pytest": small_pytest,
}
PLAIN = {
    "cat_n": cat_n,
    "claude_read": claude_read,
    "git_log_stat": git_log_stat,
    "git_diff": git_diff,
    "grep": grep_rn,
    "pip_list": pip_list,
    "ruff": ruff_starlette,
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--venv", type=Path, required=True)
    parser.add_argument("only", nargs="*")
    args = parser.parse_args()
    for name, with_venv in CASES.items():
        if not args.only or name in args.only:
            with_venv(args.work, args.venv)
    for name, plain in PLAIN.items():
        if not args.only or name in args.only:
            plain(args.work)


if __name__ == "__main__":
    main()
