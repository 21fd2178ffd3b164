"""Savings reports from audit records: rows grouped by team, model, day (or route, policy).

Rows are computed either by scanning the JSONL files (:func:`aggregate_files`)
or by the SQLite index (:mod:`proxy.audit.index`); both give the same rows.
Dollar sums cover the requests that had a price and usage; ``price_missing``
counts the requests that could not be priced.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table

__all__ = [
    "GROUP_KEYS",
    "ReportError",
    "Row",
    "aggregate_files",
    "aggregate_records",
    "parse_by",
    "parse_since",
    "render",
]

GROUP_KEYS = ("team", "model", "day", "route", "policy")
_USD_DIGITS = 8


class ReportError(ValueError):
    """A bad report option or an unreadable audit file."""


@dataclass(frozen=True, slots=True)
class Row:
    keys: tuple[tuple[str, str | None], ...]  # (group key, value) in --by order
    requests: int
    tokens_before: int
    tokens_after: int
    cost_before_usd: float | None
    cost_after_usd: float | None
    saved_usd: float | None
    fail_open: int
    price_missing: int
    # Prompt and cached-read tokens of the priced requests: before (the cache model's estimate
    # for the uncompressed requests) and after (as the upstream reported).
    prompt_before: int = 0
    prompt_after: int = 0
    cached_before: int = 0
    cached_after: int = 0

    @property
    def cached_share_before(self) -> float | None:
        return round(100.0 * self.cached_before / self.prompt_before, 2) if self.prompt_before > 0 else None

    @property
    def cached_share_after(self) -> float | None:
        return round(100.0 * self.cached_after / self.prompt_after, 2) if self.prompt_after > 0 else None

    @property
    def cache_loss(self) -> bool:
        """Compression raised the bill: the cache-adjusted saving is negative."""
        return self.saved_usd is not None and self.saved_usd < 0

    @property
    def saving_pct(self) -> float:
        if self.tokens_before <= 0:
            return 0.0
        return round(100.0 * (self.tokens_before - self.tokens_after) / self.tokens_before, 2)

    def as_dict(self) -> dict[str, Any]:
        return {
            **dict(self.keys),
            "requests": self.requests,
            "tokens_before": self.tokens_before,
            "tokens_after": self.tokens_after,
            "saving_pct": self.saving_pct,
            "cost_before_usd": self.cost_before_usd,
            "cost_after_usd": self.cost_after_usd,
            "saved_usd": self.saved_usd,
            "fail_open": self.fail_open,
            "price_missing": self.price_missing,
            "cached_share_before": self.cached_share_before,
            "cached_share_after": self.cached_share_after,
            "cache_loss": self.cache_loss,
        }


def cache_tokens(record: dict[str, Any]) -> tuple[int, int, int, int]:
    """``(prompt before, prompt after, cached before, cached after)`` of one record.

    Records written before the cache model count their reported cached tokens on both sides.
    """
    usage = record.get("usage") or {}
    after = usage.get("prompt_tokens") or 0
    cached = record.get("cached_tokens", usage.get("cached_tokens")) or 0
    before = record.get("prompt_tokens_before_est")
    cached_before = record.get("cached_tokens_before_est")
    return (
        after if before is None else before,
        after,
        cached if cached_before is None else cached_before,
        cached,
    )


def usd(total: float, priced: int) -> float | None:
    """A dollar sum for a report: None when no request in the group had a cost."""
    return round(total, _USD_DIGITS) if priced else None


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


class _Sums:
    __slots__ = (
        "after",
        "before",
        "cached",
        "cost_after",
        "cost_before",
        "fail_open",
        "priced",
        "requests",
        "saved",
        "unpriced",
    )

    def __init__(self) -> None:
        self.requests = self.before = self.after = self.fail_open = self.unpriced = self.priced = 0
        self.cost_before: list[float] = []
        self.cost_after: list[float] = []
        self.saved: list[float] = []
        self.cached = [0, 0, 0, 0]  # prompt before, prompt after, cached before, cached after

    def add(self, record: dict[str, Any]) -> None:
        self.requests += 1
        self.before += record.get("tokens_before") or 0
        self.after += record.get("tokens_after") or 0
        self.fail_open += record.get("fail_open") is not None
        self.unpriced += record.get("price_missing") is True
        if record.get("cost_after_usd") is not None:
            self.priced += 1
            self.cost_before.append(record.get("cost_before_usd") or 0.0)
            self.cost_after.append(record["cost_after_usd"])
            self.saved.append(record.get("saved_usd") or 0.0)
            for i, value in enumerate(cache_tokens(record)):
                self.cached[i] += value

    def row(self, keys: tuple[tuple[str, str | None], ...]) -> Row:
        return Row(
            keys=keys,
            requests=self.requests,
            tokens_before=self.before,
            tokens_after=self.after,
            cost_before_usd=usd(math.fsum(self.cost_before), self.priced),
            cost_after_usd=usd(math.fsum(self.cost_after), self.priced),
            saved_usd=usd(math.fsum(self.saved), self.priced),
            fail_open=self.fail_open,
            price_missing=self.unpriced,
            prompt_before=self.cached[0],
            prompt_after=self.cached[1],
            cached_before=self.cached[2],
            cached_after=self.cached[3],
        )


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
    groups: dict[tuple[str | None, ...], _Sums] = {}
    for record in records:
        if since is not None and str(record.get("ts", "")) < since:
            continue
        group = tuple(_group_value(record, key) for key in by)
        sums = groups.get(group)
        if sums is None:
            sums = groups[group] = _Sums()
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
    priced = any(row.cost_after_usd is not None for row in rows)
    return Row(
        keys=(),
        requests=sum(r.requests for r in rows),
        tokens_before=sum(r.tokens_before for r in rows),
        tokens_after=sum(r.tokens_after for r in rows),
        cost_before_usd=usd(math.fsum(r.cost_before_usd or 0.0 for r in rows), priced),
        cost_after_usd=usd(math.fsum(r.cost_after_usd or 0.0 for r in rows), priced),
        saved_usd=usd(math.fsum(r.saved_usd or 0.0 for r in rows), priced),
        fail_open=sum(r.fail_open for r in rows),
        price_missing=sum(r.price_missing for r in rows),
        prompt_before=sum(r.prompt_before for r in rows),
        prompt_after=sum(r.prompt_after for r in rows),
        cached_before=sum(r.cached_before for r in rows),
        cached_after=sum(r.cached_after for r in rows),
    )


def _money(value: float | None) -> str:
    if value is None:
        return "n/a"
    sign = "-" if value < 0 else ""  # a loss is shown as one, never clamped at zero
    return f"{sign}${abs(value):,.2f}" if abs(value) >= 1 else f"{sign}${abs(value):.4f}"


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}%"


def _losses(rows: Sequence[Row]) -> list[str]:
    """One line per group whose cache-adjusted saving is negative."""
    out = []
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
    return out.getvalue() + "".join(line + "\n" for line in _losses(rows))


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
