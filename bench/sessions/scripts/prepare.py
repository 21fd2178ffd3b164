"""What every session script does before step 1: a fresh clone at a pinned commit, a bug on top."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

AUTHOR = {
    "GIT_AUTHOR_NAME": "Sam Example",
    "GIT_AUTHOR_EMAIL": "sam@example.com",
    "GIT_COMMITTER_NAME": "Sam Example",
    "GIT_COMMITTER_EMAIL": "sam@example.com",
    "GIT_AUTHOR_DATE": "2026-11-30T16:42:00+00:00",
    "GIT_COMMITTER_DATE": "2026-11-30T16:42:00+00:00",
}


def clone(source: str, commit: str, target: Path, env: dict[str, str]) -> list[str]:
    """Clone ``source`` into ``target`` (replacing it) at ``commit``; the commands, for provenance."""
    if target.exists():
        shutil.rmtree(target)
    commands = [f"git clone -q {source} {target.name}", f"git -C {target.name} checkout -q {commit}"]
    subprocess.run(["git", "clone", "-q", source, str(target)], check=True, env=env)
    subprocess.run(["git", "-C", str(target), "checkout", "-q", "-B", "main", commit], check=True, env=env)
    return commands


def commit_bug(repo: Path, path: str, old: str, new: str, message: str, env: dict[str, str]) -> list[str]:
    """Replace one exact line fragment in ``path`` and commit it: the regression the agent hunts."""
    file = repo / path
    text = file.read_text(encoding="utf-8")
    if text.count(old) != 1:
        raise SystemExit(f"{path}: {old!r} occurs {text.count(old)} times, expected once")
    file.write_text(text.replace(old, new), encoding="utf-8")
    subprocess.run(
        ["git", "-C", str(repo), "commit", "-q", "-am", message], check=True, env={**env, **AUTHOR}
    )
    return [f"edit {path}: {old.strip()!r} -> {new.strip()!r}", f"git commit -am {message!r}"]


def pip_editable(python: str, repo: Path, env: dict[str, str]) -> list[str]:
    subprocess.run(
        [python, "-m", "pip", "install", "-q", "--no-deps", "-e", str(repo)],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return [f"pip install --no-deps -e {repo.name}"]
