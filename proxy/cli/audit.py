"""``tersegate audit verify PATH...``: check the audit hash chain across files.

Files are checked in the order given (a folder or a quoted glob expands to its
``*.jsonl`` files sorted by name, which puts rotated files before the active
one). Exit 0 with a count when every record's ``hash`` matches its content and
its ``prev_hash`` matches the record before; exit 1 naming the first broken line.
"""

from __future__ import annotations

import argparse
import glob
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from proxy.audit.sink import GENESIS, record_hash

__all__ = ["ChainReport", "expand_paths", "register", "verify_chain"]


@dataclass(frozen=True, slots=True)
class ChainReport:
    records: int
    files: int
    head: str | None  # hash of the last record
    first_prev: str | None  # prev_hash of the first record (GENESIS unless earlier files are missing)
    problem: str | None  # "file:line: what", the first break


def expand_paths(args: Sequence[str]) -> list[Path]:
    paths: list[Path] = []
    for arg in args:
        path = Path(arg)
        if path.is_dir():
            paths.extend(sorted(path.glob("*.jsonl")))
        elif any(c in arg for c in "*?[") and not path.exists():
            paths.extend(sorted(Path(p) for p in glob.glob(arg)))
        else:
            paths.append(path)
    return paths


def _check_line(line: bytes) -> tuple[dict[str, Any] | None, str | None]:
    """``(record, problem)`` for one line."""
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None, "not a JSON record"
    if not isinstance(record, dict) or not isinstance(record.get("hash"), str):
        return None, "not an audit record (no hash)"
    return record, None if record_hash(record) == record["hash"] else "hash mismatch"


def verify_chain(paths: Sequence[Path]) -> ChainReport:
    count = 0
    prev: str | None = None
    first_prev: str | None = None
    where_prev = ""  # "line N-1" or "the last line of FILE"
    for path in paths:
        try:
            f = path.open("rb")
        except OSError as exc:
            return ChainReport(count, len(paths), prev, first_prev, f"{path}: cannot read: {exc.strerror}")
        with f:
            number = 0
            for number, line in enumerate(f, 1):
                record, problem = _check_line(line)
                if record is not None and problem is None:
                    if prev is None:
                        first_prev = record.get("prev_hash")
                    elif record.get("prev_hash") != prev:
                        problem = f"prev_hash does not match {where_prev}"
                if problem is not None:
                    return ChainReport(count, len(paths), prev, first_prev, f"{path}:{number}: {problem}")
                assert record is not None
                prev = record["hash"]
                count += 1
                where_prev = f"line {number}"
            if number:
                where_prev = f"the last line of {path} (line {number})"
    return ChainReport(count, len(paths), prev, first_prev, None)


def _verify(args: argparse.Namespace) -> int:
    paths = expand_paths(args.paths)
    if not paths:
        print("audit verify: no audit files found", file=sys.stderr)
        return 1
    report = verify_chain(paths)
    if report.problem is not None:
        print(f"{report.problem} (after {report.records} good records)", file=sys.stderr)
        return 1
    print(f"ok: {report.records} records in {report.files} file(s), chain intact, head {report.head}")
    if report.first_prev not in (None, GENESIS):
        print(f"note: the chain starts after record {report.first_prev} (earlier files were not given)")
    return 0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("audit", help="audit log tools")
    commands = parser.add_subparsers(dest="audit_command", required=True, metavar="SUBCOMMAND")
    verify = commands.add_parser(
        "verify",
        help="check the hash chain of audit files (rotated files in name order, then the active one)",
    )
    verify.add_argument(
        "paths", nargs="+", metavar="PATH", help="audit .jsonl files, folders or quoted globs"
    )
    verify.set_defaults(func=_verify)
