"""``tersegate report``: requests, tokens and dollars before/after compression, grouped.

Reads ``--audit`` files (default: the config's ``audit.path`` and its rotated
files). With an index (``--index`` or the config's ``audit.sqlite``) it ingests
new lines into SQLite and aggregates there; otherwise it scans the JSONL.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from proxy.audit.chains import audit_files
from proxy.audit.index import AuditIndex, covers
from proxy.audit.report import ReportError, aggregate_files, parse_by, parse_since, render
from proxy.audit.rows import Row
from proxy.cli.audit import expand_paths
from proxy.config.model import ConfigErrors, load_config

__all__ = ["register"]


def _sources(args: argparse.Namespace) -> tuple[list[Path], Path | None]:
    """``(audit files, index path or None)`` from the options and, where needed, the config."""
    config = None
    if not args.audit or (args.index is None and not args.no_index):
        try:
            config = load_config(Path(args.config))
        except (ConfigErrors, OSError) as exc:
            if not args.audit:
                raise ReportError(f"no --audit given and {args.config} cannot be loaded:\n{exc}") from None
    index = Path(args.index) if args.index else None
    if index is None and not args.no_index and config is not None:
        index = config.audit.sqlite
    if args.audit:
        return expand_paths(args.audit), index
    assert config is not None
    if config.audit.path is None:
        raise ReportError(f"{args.config} has no audit.path; pass --audit PATH")
    return audit_files(config.audit.path), index


def _rows(args: argparse.Namespace) -> list[Row]:
    by = parse_by(args.by)
    since = parse_since(args.since)
    paths, index_path = _sources(args)
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise ReportError(f"no such audit file: {missing[0]}")
    if index_path is None or not covers(since):  # the index sums per hour; finer --since scans
        return aggregate_files(paths, by=by, since=since)
    with AuditIndex(index_path) as index:
        if args.reindex:
            index.reset()
        return index.report(index.ingest(paths), by=by, since=since)


def _report(args: argparse.Namespace) -> int:
    try:
        rows = _rows(args)
        text = render(rows, by=parse_by(args.by), fmt=args.format)
    except ReportError as exc:
        print(f"report: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(text)
    return 0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("report", help="savings per team, model and day from the audit log")
    parser.add_argument(
        "--config", default="config.yaml", help="config.yaml (for audit.path and audit.sqlite)"
    )
    parser.add_argument("--audit", nargs="+", metavar="PATH", help="audit files, folders or quoted globs")
    parser.add_argument(
        "--by", default="team,model", help="group by these, comma-separated: team,model,day,route,policy"
    )
    parser.add_argument("--since", help="only records at or after this UTC date/time (2025-01-31)")
    parser.add_argument("--format", default="table", choices=("table", "json", "csv"))
    parser.add_argument(
        "--index", metavar="SQLITE", help="SQLite index to use (default: the config's audit.sqlite)"
    )
    parser.add_argument("--no-index", action="store_true", help="scan the JSONL files, ignoring any index")
    parser.add_argument("--reindex", action="store_true", help="rebuild the index from the JSONL files first")
    parser.set_defaults(func=_report)
