"""Session 1: a Starlette regression (``max_age`` cookies raise CookieError), found from a server log.

The bug: ``Response.set_cookie`` writes the cookie attribute ``max_age`` instead of ``max-age``;
``http.cookies`` rejects it, so every ``set_cookie(max_age=...)`` (and ``delete_cookie``) raises.
The service in ``../service`` (a small Starlette app under uvicorn, hit by a load script) logs one
500 with the traceback. The agent reads the log, runs the suite (three full ``pytest -v`` runs),
reads and greps, fixes the line, adds a regression test, and runs ruff and mypy.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from bench.sessions.make_sessions import Script, Step
from bench.sessions.scripts.prepare import clone, commit_bug, pip_editable

COMMIT = "cb8f84f5284dc301ca7a31eb732b9e140769dd48"  # encode/starlette "Version 0.47.3 (#2985)"
SOURCE = "https://github.com/encode/starlette"

SERVICE_APP = """\
import logging
import os
import secrets

from starlette.applications import Starlette
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse
from starlette.routing import Route

log = logging.getLogger("shop")
ITEMS = {n: {"id": n, "name": f"item-{n}", "price": round(3.5 * n, 2)} for n in range(1, 200)}


async def health(request):
    return PlainTextResponse("ok")


async def item(request):
    n = request.path_params["n"]
    if n not in ITEMS:
        log.warning("item %s not found", n)
        return JSONResponse({"detail": "not found"}, status_code=404)
    log.info("item %s served to %s", n, request.cookies.get("session", "anonymous"))
    return JSONResponse(ITEMS[n])


async def login(request):
    form = await request.form()
    user = form.get("user", "")
    response = RedirectResponse("/", status_code=303)
    token = secrets.token_hex(8)
    log.info("login user=%s remember=%s", user, form.get("remember", "0"))
    if form.get("remember") == "1":
        response.set_cookie("session", token, max_age=30 * 24 * 3600, httponly=True)
    else:
        response.set_cookie("session", token, httponly=True)
    return response


app = Starlette(
    routes=[
        Route("/health", health),
        Route("/items/{n:int}", item),
        Route("/login", login, methods=["POST"]),
    ]
)
"""

SERVICE_RUN = '''\
"""Serve app.py with uvicorn and replay a morning of traffic against it; the log goes to server.log."""
import logging.config
import random
import sys
import threading
import time

import httpx
import uvicorn

sys.path.insert(0, sys.argv[1])  # the starlette checkout
sys.path.insert(0, ".")
from app import app  # noqa: E402

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
logging.config.dictConfig({
    "version": 1,
    "formatters": {"plain": {"format": FORMAT}},
    "handlers": {"file": {"class": "logging.FileHandler", "filename": "server.log", "mode": "w",
                          "formatter": "plain"}},
    "loggers": {name: {"handlers": ["file"], "level": "INFO", "propagate": False}
                for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "shop")},
})
config = uvicorn.Config(app, host="127.0.0.1", port=int(sys.argv[2]), log_config=None, access_log=True)
server = uvicorn.Server(config)
thread = threading.Thread(target=server.run)
thread.start()
while not server.started:
    time.sleep(0.05)
rng = random.Random(7)
logins = 0


def send(client, method, url, **kwargs):
    try:
        return client.request(method, url, **kwargs)
    except httpx.TransportError:  # the server closes a connection after a 500: reconnect once
        return client.request(method, url, **kwargs)


with httpx.Client(base_url=f"http://127.0.0.1:{sys.argv[2]}") as client:
    for n in range(int(sys.argv[3])):
        roll = rng.random()
        if roll < 0.03:
            logins += 1
            remember = "1" if logins == int(sys.argv[4]) else "0"
            send(client, "POST", "/login", data={"user": f"user{rng.randrange(90)}", "remember": remember})
        elif roll < 0.08:
            send(client, "GET", "/health")
        else:
            send(client, "GET", f"/items/{rng.randrange(1, 215)}")
server.should_exit = True
thread.join()
'''

SYSTEM = """\
You are a coding agent working in a git checkout of a Python library. You act only through the
tools: `bash` runs a shell command in the repository root, `read_file` shows a file with line
numbers, `grep` searches recursively, `edit_file` replaces one exact string in a file. Before you
change code, find the cause: read the failing tests, the traceback and the code it points at.
Keep changes minimal, match the project's style, add a regression test for every bug you fix, and
run the test suite, the linter (ruff) and the type checker (mypy) before you say you are done.
Never commit; the user reviews the diff. Quote the exact lines you rely on. When a test fails for
a reason unrelated to your change (the environment, a pre-existing failure), show that it fails
without your change too, and say so in your summary instead of changing the test."""

TASK = """\
Since we moved our shop service to Starlette's current main (the checkout in this directory), \
logins with "remember me" ticked answer 500. The service's log from this morning is in \
../service/server.log. Please find the cause, fix it in Starlette, add a regression test, and make \
sure the test suite, ruff and mypy are clean. Don't commit."""

FINAL = """\
Fixed. `Response.set_cookie` wrote the cookie attribute as `max_age` (starlette/responses.py:107, \
introduced by the last commit), which `http.cookies` rejects with `CookieError: Invalid attribute \
'max_age'`; every `set_cookie(max_age=...)` and every `delete_cookie()` raised. It is `max-age` \
again, with a regression test (`test_set_cookie_max_age`), a release note, and the service's \
"remember me" login answers 303 again. The suite passes except the two \
`test_staticfiles_with_invalid_dir_permissions_returns_401` cases, which fail the same way without \
my change: they rely on file permissions, and this sandbox runs as root. ruff and mypy are clean."""

FAILED_LINE = r"^tests/\S+::\S+ FAILED.*$"
PASSED_LINE = r"^tests/test_responses\.py::test_(?:set|delete)_cookie\S* PASSED.*$"
SUMMARY = r"^=+ .*(?:passed|failed).* in [\d.]+s.* =+$"


def prepare(workdir: Path, sources: dict[str, str], env: dict[str, str]) -> tuple[Script, Path]:
    repo = workdir / "starlette"
    python = env["VIRTUAL_ENV"] + "/bin/python"
    setup = clone(sources.get("starlette", SOURCE), COMMIT, repo, env)
    setup += commit_bug(
        repo,
        "starlette/responses.py",
        'cookie[key]["max-age"] = max_age',
        'cookie[key]["max_age"] = max_age',
        "responses: name set_cookie's attributes after its parameters",
        env,
    )
    setup += pip_editable(python, repo, env)
    service = workdir / "service"
    service.mkdir(exist_ok=True)
    (service / "app.py").write_text(SERVICE_APP, encoding="utf-8")
    (service / "run.py").write_text(SERVICE_RUN, encoding="utf-8")
    load = [python, "run.py", str(repo), "8765", "420", "7"]
    subprocess.run(load, cwd=service, env=env, check=True, timeout=300)
    setup += ["cd service && python run.py ../starlette 8765 420 7  # writes server.log"]
    return Script("starlette_cookie", "encode/starlette", COMMIT, SYSTEM, TASK, STEPS, FINAL, setup), repo


def bash(say: str, command: str, *facts: str) -> Step:
    return Step(say, "bash", {"command": command}, facts)


def read(say: str, path: str, *facts: str, offset: int | None = None, limit: int | None = None) -> Step:
    args: dict[str, object] = {"path": path}
    if offset is not None:
        args.update(offset=offset, limit=limit or 2000)
    return Step(say, "read_file", args, facts)


def grep(say: str, pattern: str, path: str, *facts: str) -> Step:
    return Step(say, "grep", {"pattern": pattern, "path": path}, facts)


def edit(say: str, path: str, old: str, new: str, *facts: str) -> Step:
    return Step(say, "edit_file", {"path": path, "old_string": old, "new_string": new}, facts)


REGRESSION_TEST = """

def test_set_cookie_max_age(test_client_factory: TestClientFactory) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        response = Response("Hello, world!", media_type="text/plain")
        response.set_cookie("mycookie", "myvalue", max_age=60)
        await response(scope, receive, send)

    client = test_client_factory(app)
    response = client.get("/")
    assert response.headers["set-cookie"] == "mycookie=myvalue; Max-Age=60; Path=/; SameSite=lax"
"""

RELEASE_NOTE_ANCHOR = "## 0.47.3 (August 24, 2025)"
RELEASE_NOTE = (
    """## Unreleased

#### Fixed

* `Response.set_cookie(max_age=...)` and `Response.delete_cookie()` no longer raise `CookieError`.

"""
    + RELEASE_NOTE_ANCHOR
)


# The agent's steps: its words, the tool call, and the facts the NEXT step needs from the output.
STEPS: list[Step] = [
    bash(
        "I'll start with the state of the checkout, then the log.",
        "git status && git log --oneline -n 5",
        r"^On branch main$",
        r"^[0-9a-f]{7,} responses: name set_cookie's attributes after its parameters$",
    ),
    bash(
        "Now the service log from this morning.",
        "cat ../service/server.log",
        r'^.*"POST /login HTTP/1\.1" 500.*$',
        r"^http\.cookies\.CookieError: Invalid attribute 'max_age'$",
        r'File "[^"]*starlette/responses\.py", line \d+, in set_cookie',
        r'File "[^"]*service/app\.py", line \d+, in login',
    ),
    read(
        "The traceback ends in `set_cookie` at starlette/responses.py line 107. Let me read the file.",
        "starlette/responses.py",
        r"^\s+107\t.*$",
        r"^\s+91\t    def set_cookie\($",
    ),
    bash(
        'Line 107 sets `cookie[key]["max_age"]`; `http.cookies` spells the attribute `max-age`. '
        "The most recent commit touched this file; let me see what it changed.",
        "git show HEAD",
        r'^-\s+cookie\[key\]\["max-age"\] = max_age$',
        r'^\+\s+cookie\[key\]\["max_age"\] = max_age$',
    ),
    bash(
        "Confirmed: the last commit renamed the attribute. Before I change it, the full test suite, "
        "to see what else fails.",
        "python -m pytest -v",
        FAILED_LINE,
        r"^E\s+http\.cookies\.CookieError: Invalid attribute 'max_age'$",
        r"^starlette/responses\.py:107: in set_cookie$",
        SUMMARY,
    ),
    bash(
        "Six failures: four cookie tests (the bug) and two staticfiles permission tests that look "
        "unrelated. Let me confirm which attribute names `http.cookies` accepts.",
        'python -c "import http.cookies; print(sorted(http.cookies.Morsel._reserved))"',
        r"'max-age'",
    ),
    grep(
        "`max-age` is reserved, `max_age` is not. Where else does Starlette write Max-Age?",
        "max.age|Max-Age",
        "starlette",
        r"^starlette/responses\.py:107:.*$",
        r"^starlette/middleware/sessions\.py:\d+:.*Max-Age.*$",
    ),
    read(
        "The session middleware builds its own header. Let me check it is not affected.",
        "starlette/middleware/sessions.py",
        r"^\s+\d+\t.*Max-Age=\{self\.max_age\}.*$",
    ),
    read(
        "It formats `Max-Age=` itself, so it is fine. Now the failing cookie tests.",
        "tests/test_responses.py",
        r"^\s+\d+\tdef test_set_cookie\(.*$",
        r'^\s+\d+\t\s+f"HttpOnly; Max-Age=10; .*$',
        r"^\s+\d+\tdef test_delete_cookie\(.*$",
    ),
    read(
        "test_set_cookie expects `Max-Age=10` and test_delete_cookie goes through `delete_cookie`. "
        "Let me read delete_cookie in context.",
        "starlette/responses.py",
        r"^\s+\d+\t    def delete_cookie\($",
        r"^\s+\d+\t\s+max_age=0,$",
        offset=88,
        limit=75,
    ),
    read(
        "`delete_cookie` calls `set_cookie(max_age=0, ...)`, which explains test_delete_cookie. "
        "Now the two staticfiles failures.",
        "tests/test_staticfiles.py",
        r"^\s+\d+\tdef test_staticfiles_with_invalid_dir_permissions_returns_401\($",
        r"^\s+\d+\t\s+tmp_path\.chmod\(stat\.S_IRWXO\)$",
        offset=385,
        limit=40,
    ),
    bash(
        "That test removes the owner's permissions and expects a 401; as root the file stays "
        "readable. Which user is this?",
        "id && python -c \"import os; print('euid', os.geteuid())\"",
        r"^euid 0$",
    ),
    read(
        "Running as root, so the permission tests cannot pass here. Let me read the static files "
        "code path they exercise, to be sure it is unrelated to cookies.",
        "starlette/staticfiles.py",
        r"^\s+\d+\t.*PermissionError.*$",
    ),
    edit(
        "Unrelated: a PermissionError path. Now the fix: restore the `max-age` attribute name.",
        "starlette/responses.py",
        'cookie[key]["max_age"] = max_age',
        'cookie[key]["max-age"] = max_age',
        r'^\s+107\t\s+cookie\[key\]\["max-age"\] = max_age$',
    ),
    bash(
        "Re-running the cookie tests.",
        "python -m pytest tests/test_responses.py -v -k cookie",
        PASSED_LINE,
        SUMMARY,
    ),
    read(
        "They pass. For the regression test I'll follow the style of the existing cookie tests; "
        "let me read the imports and fixtures at the top of the test module.",
        "tests/test_responses.py",
        r"^\s+\d+\tfrom starlette\.responses import .*$",
        r"^\s+\d+\tfrom tests\.types import TestClientFactory$",
        offset=1,
        limit=40,
    ),
    read(
        "And the conftest that provides `test_client_factory`.",
        "tests/conftest.py",
        r"^\s+\d+\tdef test_client_factory\($",
    ),
    edit(
        "Adding a regression test right after test_set_cookie: `max_age` alone must produce `Max-Age=60`.",
        "tests/test_responses.py",
        'f"HttpOnly; Max-Age=10; {partitioned_text}Path=/; SameSite=none; Secure"\n    )\n',
        'f"HttpOnly; Max-Age=10; {partitioned_text}Path=/; SameSite=none; Secure"\n    )\n' + REGRESSION_TEST,
        r"^\s+\d+\tdef test_set_cookie_max_age\(.*$",
    ),
    bash(
        "Running the whole responses module.",
        "python -m pytest tests/test_responses.py -v",
        r"^tests/test_responses\.py::test_set_cookie_max_age\[asyncio\] PASSED.*$",
        SUMMARY,
    ),
    bash(
        "All pass. Second full run of the suite.",
        "python -m pytest -v",
        FAILED_LINE,
        SUMMARY,
    ),
    bash(
        "Only the two permission tests fail. To show they fail without my change too, stash it "
        "and run them on the original tree.",
        "git stash && python -m pytest tests/test_staticfiles.py -q -k permissions; git stash pop",
        r"^tests/test_staticfiles\.py:411: AssertionError$",
        r"^2 failed, \d+ deselected in [\d.]+s$",
        r"^Saved working directory and index state .*$",
    ),
    bash(
        "They fail on the original tree as well: pre-existing, caused by running as root. "
        "Is there a marker or an environment check the suite uses for such tests?",
        'grep -rn "geteuid\\|skipif" tests/ | head -n 40',
        r"^tests/\S+:\d+:.*skipif.*$",
    ),
    read(
        "No root check exists; I'll leave those tests alone and report them. Now the documentation "
        "of set_cookie, to see whether it needs a note.",
        "docs/responses.md",
        r"^\s+\d+\t\* `max_age` - .*$",
    ),
    read(
        "The docs describe `max_age` correctly. Let me look at the release notes to add an entry.",
        "docs/release-notes.md",
        r"^\s+\d+\t## 0\.47\.3 \(August 24, 2025\)$",
        offset=1,
        limit=120,
    ),
    edit(
        "Adding an Unreleased section with the fix.",
        "docs/release-notes.md",
        RELEASE_NOTE_ANCHOR,
        RELEASE_NOTE,
        r"^\s+\d+\t## Unreleased$",
    ),
    bash(
        "Now ruff, as the project configures it.",
        "ruff check starlette tests && ruff format --check starlette tests",
        r"^All checks passed!$",
        r"^\d+ files already formatted$",
    ),
    bash(
        "Clean. Now mypy (strict in pyproject.toml).",
        "mypy starlette tests",
        r"^Success: no issues found in \d+ source files$",
    ),
    bash(
        "Type checks pass. Let me replay the service's traffic with the fixed Starlette, with the "
        "one remembered login, to check the 500 is gone.",
        "cd ../service && python run.py ../starlette 8766 420 7 && grep -n 'POST /login' server.log",
        r'^\d+:.*"POST /login HTTP/1\.1" 303$',
    ),
    bash(
        "Every login answers 303 now. Any error or warning left in the new log?",
        "grep -n -E 'ERROR|Traceback|Exception|WARNING|remember=1' ../service/server.log",
        r"^.*login user=\S+ remember=1$",
        r"^\d+:.*WARNING shop: item \d+ not found$",
    ),
    grep(
        "No traceback left. Do other modules call set_cookie with max_age (templates, middleware)?",
        "set_cookie|delete_cookie",
        "starlette",
        r"^starlette/responses\.py:\d+:\s+def set_cookie\($",
        r"^starlette/responses\.py:\d+:\s+def delete_cookie\($",
    ),
    read(
        "Only responses.py. The test client's cookie handling (the traceback passed through it) "
        "for completeness.",
        "starlette/testclient.py",
        r"^\s+\d+\t.*raise_server_exceptions.*$",
    ),
    read(
        "The request side parses cookies with `cookie_parser`; let me make sure it reads `Max-Age` "
        "cookies back correctly.",
        "starlette/requests.py",
        r"^\s+\d+\tdef cookie_parser\(cookie_string: str\) -> dict\[str, str\]:$",
    ),
    read(
        "The error middleware produced the 500 in the log; let me check it renders the exception "
        "as the log showed.",
        "starlette/middleware/errors.py",
        r"^\s+\d+\tclass ServerErrorMiddleware:$",
    ),
    read(
        "And the routing layer the login endpoint ran in, around the endpoint call.",
        "starlette/routing.py",
        r"^\s+\d+\tdef request_response\($",
        offset=1,
        limit=120,
    ),
    bash(
        "Let me look at the recent history of responses.py, to see whether the rename was part of "
        "a larger change that needs reverting too.",
        "git log --stat -n 40",
        r"^commit [0-9a-f]{40}$",
        r"^\s+starlette/responses\.py \| 2 \+-$",
    ),
    bash(
        "The bad commit touched only that line. Blame for the set_cookie region now:",
        "git blame -L 100,115 starlette/responses.py",
        r"^.*Not Committed Yet.*max-age.*$",
    ),
    bash(
        "Third full run, with the test and the release note in place.",
        "python -m pytest -v",
        FAILED_LINE,
        SUMMARY,
    ),
    bash(
        "Same two pre-existing failures only. The diff for review:",
        "git diff",
        r'^\+\s+cookie\[key\]\["max-age"\] = max_age$',
        r"^\+def test_set_cookie_max_age\(.*$",
    ),
    bash(
        "And the environment the results come from, for the report.",
        "pip list --format json | python -m json.tool",
        r'"name": "anyio",\n\s+"version": "[^"]+"',
        r'"name": "starlette",\n\s+"version": "[^"]+"',
    ),
    bash(
        "The Python version as well.",
        "python --version && git diff --stat",
        r"^Python 3\.\d+\.\d+$",
        r"^ 3 files changed, .*$",
    ),
    bash(
        "Finally, the working tree status.",
        "git status --short",
        r"^ M starlette/responses\.py$",
        r"^ M tests/test_responses\.py$",
    ),
]
