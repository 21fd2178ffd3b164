"""Session 2: a Click regression (clamping an open ``IntRange`` bound moves away from the range).

The bug: ``IntRange._clamp`` returns ``bound - dir`` instead of ``bound + dir``, so a value past an
open bound is "clamped" to one step outside the range. A nightly job (``../jobs``) whose
``--shard`` option is ``IntRange(0, 8, max_open=True, clamp=True)`` then indexes past its shard
list: one IndexError among hundreds of log lines. The agent reads the log and the job, reproduces
it, runs the suite (three full ``pytest -q`` runs), reads types.py and core.py, fixes the line,
adds a test, and runs ruff and mypy.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from bench.sessions.make_sessions import Script, Step
from bench.sessions.scripts.prepare import clone, commit_bug, pip_editable
from bench.sessions.scripts.starlette_cookie import bash, edit, grep, read

COMMIT = "2c8cd3ac958a7eb316d67f2d316c27086c4c0369"  # pallets/click "Add FAQ entry about ..."
SOURCE = "https://github.com/pallets/click"

SHARDJOB = '''\
"""Nightly export: copy one shard of the catalogue to the warehouse."""
import logging

import click

SHARDS = [f"catalogue-{n:02d}" for n in range(8)]
log = logging.getLogger("shardjob")


@click.command()
@click.option("--shard", type=click.IntRange(0, len(SHARDS), max_open=True, clamp=True), required=True)
@click.option("--batch", type=click.IntRange(1, 500, clamp=True), default=100)
@click.option("--dry-run", is_flag=True)
def main(shard, batch, dry_run):
    name = SHARDS[shard]
    log.info("shard=%s table=%s batch=%s dry_run=%s", shard, name, batch, dry_run)
    click.echo(f"exporting {name} in batches of {batch}")
    return name


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main()
'''

RUN_JOBS = '''\
"""Replay last night's schedule of export jobs; the log goes to nightly.log."""
import logging
import random
import sys

from shardjob import main

logging.basicConfig(
    filename="nightly.log", filemode="w", level=logging.INFO,
    format="%(asctime)s %(levelname)-7s %(name)s[%(process)d]: %(message)s",
)
log = logging.getLogger("scheduler")
rng = random.Random(11)
jobs, broken = int(sys.argv[1]), int(sys.argv[2])
for job in range(jobs):
    shard = 12 if job == broken else rng.randrange(8)
    argv = ["--shard", str(shard), "--batch", str(rng.choice([50, 100, 200, 800]))]
    log.info("job %04d start argv=%s", job, " ".join(argv))
    try:
        table = main(argv, standalone_mode=False)
    except Exception:
        log.exception("job %04d failed", job)
    else:
        log.info("job %04d done table=%s rows=%d", job, table, rng.randrange(1000, 90000))
'''

SYSTEM = """\
You are a coding agent working in a git checkout of a Python library. You act only through the
tools: `bash` runs a shell command in the repository root, `read_file` shows a file with line
numbers (at most 2000 lines unless you give offset and limit), `grep` searches recursively,
`edit_file` replaces one exact string in a file. Find the cause before you change code: reproduce
the failure, read the failing tests and the code they point at. Keep changes minimal and in the
project's style, add a regression test for every bug you fix, and run the test suite, ruff and
mypy before you say you are done. Never commit. Quote the exact lines you rely on, and report
linter or test findings that were there before your change instead of silencing them."""

TASK = """\
Last night one of our export jobs crashed with an IndexError (the log is ../jobs/nightly.log, the \
job is ../jobs/shardjob.py). The job passes `--shard 12`, and the option is declared with \
`clamp=True`, so Click should have clamped it into range. We run Click from this checkout. Find \
out why it didn't, fix Click, add a regression test, and check that tests, ruff and mypy pass."""

FINAL = """\
Fixed in src/click/types.py: `IntRange._clamp` returned `bound - dir` (introduced by the last \
commit), so a value past an open bound was clamped one step *outside* the range: `--shard 12` \
with `IntRange(0, 8, max_open=True, clamp=True)` became 9 and `SHARDS[9]` raised IndexError. It \
returns `bound + dir` again; `tests/test_types.py::test_range` covers it (its two open-bound \
cases failed before the fix) and I added `test_int_range_clamp_open_bounds` for the job's exact \
case, and a CHANGES.md entry. The suite passes, mypy is clean, and the job exports catalogue-07 for `--shard 12`. ruff \
reports 12 UP038 findings (isinstance with tuples) that were there before my change, two of them \
in types.py (lines 1312 and 1325); I left them alone."""

SUMMARY = r"^=* ?\d+ (?:failed|passed).* in [\d.]+s.*$"
FAILED = r"^FAILED tests/\S+.*$"

REGRESSION_TEST = """

def test_int_range_clamp_open_bounds():
    shard = click.IntRange(0, 8, max_open=True, clamp=True)
    assert shard.convert("12", None, None) == 7
    low = click.IntRange(0, 8, min_open=True, clamp=True)
    assert low.convert("-3", None, None) == 1
"""

CHANGE_NOTE = """- `IntRange` with `clamp=True` clamps a value past an open bound to the
  nearest value inside the range again, not one step outside it.
"""


def prepare(workdir: Path, sources: dict[str, str], env: dict[str, str]) -> tuple[Script, Path]:
    repo = workdir / "click"
    python = env["VIRTUAL_ENV"] + "/bin/python"
    setup = clone(sources.get("click", SOURCE), COMMIT, repo, env)
    setup += commit_bug(
        repo,
        "src/click/types.py",
        "        return bound + dir\n",
        "        return bound - dir\n",
        "types: clamp open IntRange bounds toward the boundary",
        env,
    )
    setup += pip_editable(python, repo, env)
    jobs = workdir / "jobs"
    jobs.mkdir(exist_ok=True)
    (jobs / "shardjob.py").write_text(SHARDJOB, encoding="utf-8")
    (jobs / "run_jobs.py").write_text(RUN_JOBS, encoding="utf-8")
    subprocess.run([python, "run_jobs.py", "330", "217"], cwd=jobs, env=env, check=True, timeout=300)
    setup += ["cd jobs && python run_jobs.py 330 217  # writes nightly.log"]
    return Script("click_intrange", "pallets/click", COMMIT, SYSTEM, TASK, STEPS, FINAL, setup), repo


# The agent's steps: its words, the tool call, and the facts the NEXT step needs from the output.
STEPS: list[Step] = [
    bash(
        "Let me look at the checkout first.",
        "git status && git log --oneline -n 5",
        r"^On branch main$",
        r"^[0-9a-f]{7,} types: clamp open IntRange bounds toward the boundary$",
    ),
    bash(
        "Now last night's log.",
        "cat ../jobs/nightly.log",
        r"^.*job 0217 start argv=--shard 12 .*$",
        r"^IndexError: list index out of range$",
        r'File "[^"]*jobs/shardjob\.py", line \d+, in main',
        r"^.*shard=\d+ table=\S+ .*$",
    ),
    read(
        "Job 0217 ran with `--shard 12` and failed at `SHARDS[shard]`. The job's code:",
        "../jobs/shardjob.py",
        r"^\s+\d+\t@click\.option\(\"--shard\", type=click\.IntRange\(0, len\(SHARDS\), max_open=True, clamp=True\).*$",
        r"^\s+\d+\t    name = SHARDS\[shard\]$",
    ),
    bash(
        "With `max_open=True` the valid shards are 0..7, so 12 should clamp to 7. Reproducing:",
        "cd ../jobs && python shardjob.py --shard 12 --dry-run",
        r"^IndexError: list index out of range$",
    ),
    bash(
        "It still crashes. What does the type return for 12?",
        'python -c "import click; t = click.IntRange(0, 8, max_open=True, clamp=True); '
        "print(t.convert('12', None, None), t.convert('7', None, None))\"",
        r"^9 7$",
    ),
    grep(
        "It clamps 12 to 9, one past the open bound instead of one inside it. Where is IntRange?",
        "class (IntRange|_NumberRangeBase|FloatRange)",
        "src/click",
        r"^src/click/types\.py:\d+:class IntRange.*$",
        r"^src/click/types\.py:\d+:class _NumberRangeBase.*$",
    ),
    read(
        "Reading types.py.",
        "src/click/types.py",
        r"^\s+754\t        return bound - dir$",
        r"^\s+\d+\t                return self\._clamp\(max, -1, self\.max_open\)$",
    ),
    bash(
        "`convert` calls `self._clamp(max, -1, self.max_open)` for a value above the max, and "
        "IntRange._clamp returns `bound - dir` = 8 - (-1) = 9 (line 754). It should step toward the "
        "range. Did a recent commit change it?",
        "git log -p -n 3 -- src/click/types.py",
        r"^-        return bound \+ dir$",
        r"^\+        return bound - dir$",
    ),
    bash(
        "The last commit flipped the sign. Full test suite before I change anything:",
        "python -m pytest -q",
        FAILED,
        r"^E\s+AssertionError: assert -1 == 1$",
        r"^tests/test_types\.py:\d+: AssertionError$",
        SUMMARY,
    ),
    bash(
        "Two failures, both in test_range. The module verbosely:",
        "python -m pytest tests/test_types.py -v",
        r"^tests/test_types\.py::test_range\[type7-0-1\] FAILED.*$",
        r"^tests/test_types\.py::test_range\[type8-5-4\] FAILED.*$",
        SUMMARY,
    ),
    read(
        "The parametrized cases of test_range:",
        "tests/test_types.py",
        r'^\s+\d+\t        \(click\.IntRange\(0, min_open=True, clamp=True\), "0", 1\),$',
        r'^\s+\d+\t        \(click\.IntRange\(max=5, max_open=True, clamp=True\), "5", 4\),$',
        offset=1,
        limit=120,
    ),
    grep(
        "The tests expect 1 and 4: one step inside the open bound. What do the docs promise?",
        "clamp",
        "docs",
        r"^docs/parameter-types\.md:\d+:If `clamp` mode is enabled.*$",
    ),
    read(
        "The ranges section of the docs:",
        "docs/parameter-types.md",
        r"^\s+\d+\tIf `clamp` mode is enabled, a value that is outside the range is set to the boundary.*$",
    ),
    read(
        "Now how the value reaches the type: Option and Parameter in core.py.",
        "src/click/core.py",
        r"^\s+\d+\tclass Context:$",
        r"^\s+\d+\tclass ParameterSource\(enum\.IntEnum\):$",
        offset=1,
        limit=2000,
    ),
    grep(
        "Where does Parameter call the type's convert?",
        "def (type_cast_value|process_value)|self\\.type\\(",
        "src/click/core.py",
        r"^\d+:    def type_cast_value\(self, ctx: Context, value: t\.Any\) -> t\.Any:$",
        r"^\d+:    def process_value\(self, ctx: Context, value: t\.Any\) -> t\.Any:$",
    ),
    read(
        "type_cast_value and process_value:",
        "src/click/core.py",
        r"^\s+\d+\t    def type_cast_value\(self, ctx: Context, value: t\.Any\) -> t\.Any:$",
        offset=2520,
        limit=120,
    ),
    edit(
        "Nothing between the option and the type changes the value, so the fix is in `_clamp`: "
        "step from the bound toward the range.",
        "src/click/types.py",
        "        return bound - dir\n",
        "        return bound + dir\n",
        r"^\s+754\t        return bound \+ dir$",
    ),
    bash(
        "Re-running the types tests.",
        "python -m pytest tests/test_types.py -v",
        r"^tests/test_types\.py::test_range\[type7-0-1\] PASSED.*$",
        SUMMARY,
    ),
    bash(
        "And the job's invocation:",
        "cd ../jobs && python shardjob.py --shard 12 --dry-run",
        r"^exporting catalogue-07 in batches of 100$",
    ),
    read(
        "Fixed. FloatRange refuses to clamp open bounds; let me re-read both _clamp methods around "
        "the fix to make sure the directions agree.",
        "src/click/types.py",
        r"^\s+\d+\t    def _clamp\(self, bound: float, dir: t\.Literal\[1, -1\], open: bool\) -> float:$",
        offset=620,
        limit=190,
    ),
    grep(
        "Other callers of `_clamp`?",
        "_clamp",
        "src",
        r"^src/click/types\.py:\d+:\s+return self\._clamp\(min, 1, self\.min_open\)$",
    ),
    grep(
        "Which tests use clamped ranges through options?",
        "IntRange|FloatRange",
        "tests",
        r"^tests/test_options\.py:\d+:.*IntRange.*$",
    ),
    bash(
        "Running those option tests:",
        "python -m pytest tests/test_options.py -v -k 'range or clamp or counting'",
        SUMMARY,
    ),
    read(
        "For the regression test, the top of tests/test_types.py (imports, style):",
        "tests/test_types.py",
        r"^\s+\d+\timport click$",
        offset=1,
        limit=15,
    ),
    edit(
        "Adding a test with the job's exact case, after test_range's parametrized cases:",
        "tests/test_types.py",
        "def test_float_range_no_clamp_open",
        REGRESSION_TEST.lstrip("\n") + "\n\ndef test_float_range_no_clamp_open",
        r"^\s+\d+\tdef test_int_range_clamp_open_bounds\(\):$",
    ),
    bash(
        "Running it:",
        "python -m pytest tests/test_types.py -v -k 'clamp or range'",
        r"^tests/test_types\.py::test_int_range_clamp_open_bounds PASSED.*$",
        SUMMARY,
    ),
    bash(
        "Second full run:",
        "python -m pytest -q",
        SUMMARY,
    ),
    bash(
        "All green. ruff next:",
        "ruff check src tests",
        r"^src/click/types\.py:1312:\d+: UP038 .*$",
        r"^Found 12 errors\.$",
    ),
    bash(
        "Twelve UP038 findings, none on lines I touched (types.py 1312 and 1325 are far from 754). "
        "Were they there before my change?",
        "git stash -q && ruff check src tests --statistics; git stash pop -q && git status --short",
        r"^12\s+UP038\s+\[?\*?\]?\s*non-pep604-isinstance.*$",
    ),
    bash(
        "Pre-existing. The formatter:",
        "ruff format --check src tests",
        r"^\d+ files? already formatted$|^Would reformat: .*$",
    ),
    bash(
        "mypy, as configured in pyproject.toml (strict):",
        "mypy",
        r"^Success: no issues found in \d+ source files$",
    ),
    read(
        "A changelog entry: the top of CHANGES.md.",
        "CHANGES.md",
        r"^\s+1\t.*$",
        offset=1,
        limit=60,
    ),
    bash(
        "The current version, to know where the entry goes:",
        "grep -n '^## Version' CHANGES.md | head -n 3 && python -c \"import importlib.metadata as m; print(m.version('click'))\"",
        r"^\d+:## Version \S+$",
    ),
    edit(
        "8.5.0 is unreleased: the entry goes at the top of its list.",
        "CHANGES.md",
        "## Version 8.5.0\n\nUnreleased\n\n",
        "## Version 8.5.0\n\nUnreleased\n\n" + CHANGE_NOTE,
        r"^\s+\d+\t- `IntRange` with `clamp=True` clamps a value past an open bound to the$",
    ),
    read(
        "The full history of types.py changes in CHANGES.md mentioning ranges:",
        "CHANGES.md",
        r"^\s+\d+\t.*IntRange.*$",
        offset=1,
        limit=900,
    ),
    bash(
        "The log of the last commits with their files, to check nothing else came with the sign flip:",
        "git log --stat -n 30",
        r"^commit [0-9a-f]{40}$",
        r"^ src/click/types\.py \| 2 \+-$",
    ),
    bash(
        "Only the one line. Replaying last night's jobs with the fixed Click:",
        "cd ../jobs && python run_jobs.py 330 217 && grep -n -E 'job 0217|ERROR|Traceback' nightly.log",
        r"^\d+:.*job 0217 done table=catalogue-07 .*$",
    ),
    bash(
        "Job 0217 exports catalogue-07 now. Third full run:",
        "python -m pytest -q -p no:randomly",
        SUMMARY,
    ),
    bash(
        "The diff:",
        "git diff",
        r"^\+        return bound \+ dir$",
        r"^\+def test_int_range_clamp_open_bounds\(\):$",
    ),
    bash(
        "The environment, for the report:",
        "pip list --format json | python -m json.tool",
        r'"name": "click",\n\s+"version": "[^"]+"',
        r'"name": "pytest",\n\s+"version": "[^"]+"',
    ),
    bash(
        "How many tests the suite collects, and the Python version:",
        "python -m pytest --collect-only -q | tail -n 3 && python --version",
        r"^\d+ tests? collected.*$|^\d+/\d+ tests collected.*$",
        r"^Python 3\.\d+\.\d+$",
    ),
    bash(
        "Finally the status:",
        "git status --short && git diff --stat",
        r"^ M src/click/types\.py$",
        r"^ M tests/test_types\.py$",
        r"^ M CHANGES\.md$",
    ),
]
