"""Savings reports from audit records: rows grouped by team, model, day (or route, policy).

Rows are computed either by scanning the JSONL files (:func:`aggregate_files`)
or by the SQLite index (:mod:`proxy.audit.index`); both add records up with
:class:`proxy.audit.rows.Sums`, so both give the same rows.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table

from proxy.audit.rows import GROUP_KEYS, Row, Sums, row_of

__all__ = [
    "ReportError",
    "aggregate_files",
    "aggregate_records",
    "parse_by",
    "parse_since",
    "render",
]


class ReportError(ValueError):
    """A bad report option or an unreadable audit file."""


def parse_by(value: str) -> tuple[str, ...]:
    keys = tuple(k.strip() for k in value.split(",") if k.strip())
    unknown = [k for k in keys if k not in GROUP_KEYS]
    if unknown or len(set(keys)) != len(keys):
        raise ReportError(f"--by takes distinct names from {', '.join(GROUP_KEYS)}; got {value!r}")
    return keys


def parse_since(value: str | None) -> str | None:
    """``--since`` as an RFC 3339 UTC prefix comparable with record ``ts`` strings."""
    if value is None:
        return None
    try:
        if len(value) == 10:
            return date.fromisoformat(value).isoformat()
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ReportError(
            f"--since must be a date (2025-01-31) or a time (2025-01-31T12:00Z); got {value!r}"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _group_value(record: dict[str, Any], key: str) -> str | None:
    if key == "day":
        ts = record.get("ts")
        return ts[:10] if isinstance(ts, str) else None
    value = record.get(key)
    return value if value is None else str(value)


def _sort_key(row: Row) -> tuple[tuple[bool, str], ...]:
    return tuple((value is None, value or "") for _, value in row.keys)


def aggregate_records(
    records: Iterable[dict[str, Any]], *, by: Sequence[str], since: str | None
) -> list[Row]:
    groups: dict[tuple[str | None, ...], Sums] = {}
    for record in records:
        if since is not None and str(record.get("ts", "")) < since:
            continue
        group = tuple(_group_value(record, key) for key in by)
        sums = groups.get(group)
        if sums is None:
            sums = groups[group] = Sums()
        sums.add(record)
    rows = [sums.row(tuple(zip(by, group, strict=True))) for group, sums in groups.items()]
    return sorted(rows, key=_sort_key)


def _read_records(paths: Sequence[Path]) -> Iterable[dict[str, Any]]:
    for path in paths:
        try:
            with path.open("rb") as f:
                for number, line in enumerate(f, 1):
                    if not line.endswith(b"\n"):
                        break  # a record still being written
                    try:
                        yield orjson.loads(line)
                    except orjson.JSONDecodeError:
                        raise ReportError(f"{path}:{number}: not a JSON record") from None
        except OSError as exc:
            raise ReportError(f"cannot read {path}: {exc.strerror}") from None


def aggregate_files(paths: Sequence[Path], *, by: Sequence[str], since: str | None) -> list[Row]:
    """Rows from a scan of the JSONL files (no index)."""
    return aggregate_records(_read_records(paths), by=by, since=since)


def _total(rows: Sequence[Row]) -> Row:
    totals = (
        sum(r.requests for r in rows),
        sum(r.tokens_before for r in rows),
        sum(r.tokens_after for r in rows),
        math.fsum(r.cost_before_usd or 0.0 for r in rows),
        math.fsum(r.cost_after_usd or 0.0 for r in rows),
        math.fsum(r.saved_usd or 0.0 for r in rows),
        sum(r.cost_after_usd is not None for r in rows),
        sum(r.fail_open for r in rows),
        sum(r.price_missing for r in rows),
        sum(r.prompt_before for r in rows),
        sum(r.prompt_after for r in rows),
        sum(r.cached_before for r in rows),
        sum(r.cached_after for r in rows),
        sum(r.expansions for r in rows),
        sum(r.expanded_bytes for r in rows),
        math.fsum(r.expansion_cost_usd for r in rows),
    )
    return row_of((), totals)


def _money(value: float | None) -> str:
    if value is None:
        return "n/a"
    sign = "-" if value < 0 else ""  # a loss is shown as one, never clamped at zero
    return f"{sign}${abs(value):,.2f}" if abs(value) >= 1 else f"{sign}${abs(value):.4f}"


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}%"


def _losses(rows: Sequence[Row], by: Sequence[str]) -> list[str]:
    """One line per group whose cache-adjusted saving is negative, then per team when grouped finer."""
    out = []
    if "team" in by and len(by) > 1:
        teams: dict[str | None, list[float]] = {}
        for row in rows:
            teams.setdefault(dict(row.keys)["team"], []).append(row.saved_usd or 0.0)
        for team, saved in teams.items():
            total = math.fsum(saved)
            if total < 0:
                out.append(f"! team={team}: compression raised the team's bill by {_money(-total)} in all")
    for row in rows:
        if row.cache_loss:
            name = ", ".join(f"{k}={v}" for k, v in row.keys) or "all traffic"
            out.append(
                f"! {name}: compression raised the bill by {_money(-(row.saved_usd or 0.0))} "
                f"(cache reads {_share(row.cached_share_before)} of input before, "
                f"{_share(row.cached_share_after)} after)"
            )
    return out


def _table(rows: Sequence[Row], by: Sequence[str]) -> str:
    table = Table(title="tersegate savings", show_footer=bool(rows))
    total = _total(rows)
    footer = ["total", *([""] * (len(by) - 1))] if by else []
    for i, key in enumerate(by):
        table.add_column(key, footer=footer[i])
    numbers = [
        ("requests", f"{total.requests:,}"),
        ("tokens before", f"{total.tokens_before:,}"),
        ("tokens after", f"{total.tokens_after:,}"),
        ("saving", f"{total.saving_pct:.1f}%"),
        ("$ before", _money(total.cost_before_usd)),
        ("$ after", _money(total.cost_after_usd)),
        ("$ saved", _money(total.saved_usd)),
        ("cached before", _share(total.cached_share_before)),
        ("cached after", _share(total.cached_share_after)),
        ("fail-open", f"{total.fail_open:,}"),
        ("unpriced", f"{total.price_missing:,}"),
    ]
    for name, foot in numbers:
        table.add_column(name, footer=foot, justify="right")
    for row in rows:
        table.add_row(
            *[value if value is not None else "-" for _, value in row.keys],
            f"{row.requests:,}",
            f"{row.tokens_before:,}",
            f"{row.tokens_after:,}",
            f"{row.saving_pct:.1f}%",
            _money(row.cost_before_usd),
            _money(row.cost_after_usd),
            _money(row.saved_usd),
            _share(row.cached_share_before),
            _share(row.cached_share_after),
            f"{row.fail_open:,}",
            f"{row.price_missing:,}",
        )
    out = io.StringIO()
    Console(file=out, width=180, force_terminal=False, color_system=None).print(table)
    lines = [*_losses(rows, by), *_expansions(rows)]
    return out.getvalue() + "".join(line + "\n" for line in lines)


def _expansions(rows: Sequence[Row]) -> list[str]:
    """Per group with expansions: how many, and what their extra upstream calls cost against what
    compression saved (``saved_usd`` is already net of them)."""
    out = []
    for row in rows:
        if row.expansions:
            name = ", ".join(f"{k}={v}" for k, v in row.keys) or "all traffic"
            gross = (row.saved_usd or 0.0) + row.expansion_cost_usd
            out.append(
                f"~ {name}: {row.expansions:,} expansions ({row.expanded_bytes:,} bytes returned) cost "
                f"{_money(row.expansion_cost_usd)} of the {_money(gross)} compression saved"
            )
    return out


def render(rows: Sequence[Row], *, by: Sequence[str], fmt: str) -> str:
    """The report as text: ``table`` (rich), ``json`` (a list of rows) or ``csv``."""
    if fmt == "json":
        return orjson.dumps([row.as_dict() for row in rows], option=orjson.OPT_INDENT_2).decode() + "\n"
    if fmt == "csv":
        out = io.StringIO()
        fields = [*by, *[k for k in Row.as_dict(_total([])) if k not in by]]
        writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if v is None else v for k, v in row.as_dict().items()})
        return out.getvalue()
    if fmt == "table":
        return _table(rows, by)
    raise ReportError(f"--format must be table, json or csv; got {fmt!r}")
