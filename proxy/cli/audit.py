"""``tersegate audit verify [PATH...]``: check the audit hash chains across files.

Without PATH: every chain of the config's ``audit.path`` (``--config``, default
config.yaml). Files are split by chain (``audit.jsonl``, ``audit.w1.jsonl``, ...:
one per writing process, see :mod:`proxy.audit.chains`) and each chain is checked
in the order given (a folder or a quoted glob expands to its ``*.jsonl`` files
sorted by name, which puts rotated files before the active one). Exit 0 with a
count when every record's ``hash`` matches its content and its ``prev_hash``
matches the record before; exit 1 naming the first broken line.
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

from proxy.audit.chainfile import GENESIS, record_hash
from proxy.audit.chains import audit_files, group_chains
from proxy.config.model import ConfigErrors, load_config

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


def _paths(args: argparse.Namespace) -> list[Path] | str:
    """The files to check, or why there are none."""
    if args.paths:
        return expand_paths(args.paths)
    try:
        config = load_config(Path(args.config))
    except (ConfigErrors, OSError) as exc:
        return f"no PATH given and {args.config} cannot be loaded:\n{exc}"
    if config.audit.path is None:
        return f"{args.config} has no audit.path; pass PATH"
    return audit_files(config.audit.path)


def _verify(args: argparse.Namespace) -> int:
    paths = _paths(args)
    if isinstance(paths, str) or not paths:
        print(f"audit verify: {paths or 'no audit files found'}", file=sys.stderr)
        return 1
    chains = group_chains(paths)
    reports = []
    for files in chains:
        report = verify_chain(files)
        if report.problem is not None:
            print(f"{report.problem} (after {report.records} good records)", file=sys.stderr)
            return 1
        reports.append((files, report))
    records = sum(r.records for _, r in reports)
    if len(reports) == 1:
        print(f"ok: {records} records in {len(paths)} file(s), chain intact, head {reports[0][1].head}")
    else:
        print(f"ok: {records} records in {len(paths)} file(s), {len(reports)} chains intact")
    for files, report in reports:
        if len(reports) > 1:
            print(
                f"  {files[-1].name}: {report.records} records in {report.files} file(s), head {report.head}"
            )
        if report.first_prev not in (None, GENESIS):
            print(
                f"note: {files[0].name} starts after record {report.first_prev} (earlier files were not given)"
            )
    return 0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("audit", help="audit log tools")
    commands = parser.add_subparsers(dest="audit_command", required=True, metavar="SUBCOMMAND")
    verify = commands.add_parser(
        "verify",
        help="check the hash chain of audit files (rotated files in name order, then the active one)",
    )
    verify.add_argument(
        "paths",
        nargs="*",
        metavar="PATH",
        help="audit .jsonl files, folders or quoted globs (default: every chain of the config's audit.path)",
    )
    verify.add_argument("--config", default="config.yaml", help="config.yaml, for audit.path without PATH")
    verify.set_defaults(func=_verify)
