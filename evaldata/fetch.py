"""``python -m evaldata.fetch [--dest DIR] [--check]``: download the evaluation data.

Each file in :data:`evaldata.sources.SOURCES` comes from
``raw.githubusercontent.com/<repo>/<commit>/<path>``, is checked against its git
blob hash and is written atomically (a temporary file, then a rename). Files
already present with the right hash are left alone, so a second run only fills
gaps. ``--check`` downloads nothing: it says which files are missing or differ.
The destination defaults to where the tests look (``$TERSEGATE_EVALDATA``, else
``../shared/evaldata``).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import urllib.request
from pathlib import Path

from evaldata import root
from evaldata.sources import SOURCES, Source, blob_hash

__all__ = ["check", "fetch"]

_TIMEOUT_S = 60


def check(dest: Path) -> list[str]:
    """The problems of the copy in ``dest``: one line per missing or different file."""
    problems = []
    for source in SOURCES:
        for name, _, expected in source.files:
            file = dest / source.folder / name
            if not file.is_file():
                problems.append(f"{file}: missing")
            elif blob_hash(file.read_bytes()) != expected:
                problems.append(f"{file}: differs from {source.repo}@{source.commit[:8]}")
    return problems


def _download(source: Source, path: str, expected: str, target: Path) -> None:
    with urllib.request.urlopen(source.url(path), timeout=_TIMEOUT_S) as response:
        data = response.read()
    if blob_hash(data) != expected:
        raise ValueError(f"{source.url(path)}: blob {blob_hash(data)}, expected {expected}")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def fetch(dest: Path) -> list[str]:
    """Download what ``dest`` lacks; the files that could not be fetched, with why."""
    failed = []
    for source in SOURCES:
        for name, path, expected in source.files:
            target = dest / source.folder / name
            if target.is_file() and blob_hash(target.read_bytes()) == expected:
                continue
            try:
                _download(source, path, expected, target)
            except (OSError, ValueError) as exc:
                failed.append(f"{target}: {exc}")
            else:
                print(f"fetched {target}")
    return failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m evaldata.fetch", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dest", type=Path, default=None, help="where to put the data (default: %(default)s)"
    )
    parser.add_argument("--check", action="store_true", help="only report missing or different files")
    args = parser.parse_args(argv)
    dest = args.dest or root()
    problems = check(dest) if args.check else fetch(dest)
    for line in problems:
        print(line, file=sys.stderr)
    if not problems:
        print(f"evaldata complete in {dest}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
