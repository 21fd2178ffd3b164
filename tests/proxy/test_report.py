"""``tersegate report`` over audit files written by the real sink: table, JSON, CSV, index vs scan."""

from __future__ import annotations

import asyncio
import csv
import io
import os
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from harness import tersegate_command

from proxy.audit.pricing import PriceBook
from proxy.audit.report import render
from proxy.audit.rows import Row
from proxy.audit.sink import JsonlAuditSink
from proxy.config.model import AuditConfig
from proxy.exchange import Exchange, Rewrite
from proxy.metrics import Metrics

DAY1 = datetime(2025, 3, 1, 10, tzinfo=UTC).timestamp()
DAY2 = datetime(2025, 3, 2, 10, tzinfo=UTC).timestamp()


def _exchange(i: int, team: str, model: str, started: float, rewrite: Rewrite, prompt: int) -> Exchange:
    return Exchange(
        request_id=f"req{i}",
        method="POST",
        route="/v1/chat/completions",
        team=team,
        key_id="0123456789ab",
        upstream="openai",
        started=started,
        compressible=True,
        model=model,
        status=200,
        rewrite=rewrite,
        usage={
            "prompt_tokens": prompt,
            "completion_tokens": 100,
            "prompt_tokens_details": {"cached_tokens": 0},
        },
    )


KNOWN = [
    # team a saves 600 of 1000 tokens on day 1, twice; fails open on day 2; team b uses an unpriced model.
    _exchange(
        1, "a", "gpt-4o", DAY1, Rewrite(policy="p", mode="enforce", tokens_before=1000, tokens_after=400), 900
    ),
    _exchange(
        2, "a", "gpt-4o", DAY1, Rewrite(policy="p", mode="enforce", tokens_before=1000, tokens_after=400), 900
    ),
    _exchange(
        3,
        "a",
        "gpt-4o",
        DAY2,
        Rewrite(policy="p", mode="enforce", tokens_before=500, tokens_after=500, fail_open="timeout"),
        700,
    ),
    _exchange(
        4,
        "b",
        "acme-llm",
        DAY1,
        Rewrite(policy="q", mode="enforce", tokens_before=200, tokens_after=100),
        300,
    ),
]


def write_audit(path: Path, exchanges: list[Exchange], **config: Any) -> None:
    async def run() -> None:
        sink = JsonlAuditSink(AuditConfig(path=path, **config), metrics=Metrics())
        for exchange in exchanges:
            await sink.commit(exchange)
        await sink.aclose()

    asyncio.run(run())


def report(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*tersegate_command(), "report", *args], capture_output=True, text=True, cwd=cwd, timeout=120
    )


@pytest.fixture
def audit(tmp_path: Path) -> Path:
    path = tmp_path / "audit.jsonl"
    write_audit(path, KNOWN)
    return path


def _gpt4o(prompt: int) -> float:
    price = PriceBook().price_for("gpt-4o")
    assert price is not None
    return prompt * price.input + 100 * price.output


def test_json_rows_by_team_model_day(audit: Path) -> None:
    result = report(
        "--audit", str(audit), "--by", "team,model,day", "--format", "json", "--no-index", cwd=audit.parent
    )
    assert result.returncode == 0, result.stderr
    rows = orjson.loads(result.stdout)
    assert [(r["team"], r["model"], r["day"]) for r in rows] == [
        ("a", "gpt-4o", "2025-03-01"),
        ("a", "gpt-4o", "2025-03-02"),
        ("b", "acme-llm", "2025-03-01"),
    ]
    day1, day2, unpriced = rows
    assert day1["requests"] == 2 and day1["tokens_before"] == 2000 and day1["tokens_after"] == 800
    assert day1["saving_pct"] == 60.0 and day1["fail_open"] == 0
    assert day1["cost_after_usd"] == pytest.approx(2 * _gpt4o(900))
    assert day1["cost_before_usd"] == pytest.approx(2 * _gpt4o(1500))
    assert day1["saved_usd"] == pytest.approx(2 * (_gpt4o(1500) - _gpt4o(900)))
    # Failed open: nothing was removed, so nothing was saved.
    assert day2["fail_open"] == 1 and day2["saved_usd"] == 0 and day2["saving_pct"] == 0
    assert unpriced["cost_before_usd"] is None and unpriced["price_missing"] == 1
    assert unpriced["saving_pct"] == 50.0


def test_since_filters_by_day(audit: Path) -> None:
    result = report(
        "--audit", str(audit), "--by", "day", "--since", "2025-03-02", "--format", "json", cwd=audit.parent
    )
    assert orjson.loads(result.stdout) == [
        {
            "day": "2025-03-02",
            "requests": 1,
            "tokens_before": 500,
            "tokens_after": 500,
            "saving_pct": 0.0,
            "cost_before_usd": pytest.approx(_gpt4o(700)),
            "cost_after_usd": pytest.approx(_gpt4o(700)),
            "saved_usd": 0.0,
            "fail_open": 1,
            "price_missing": 0,
            "cached_share_before": 0.0,
            "cached_share_after": 0.0,
            "cache_loss": False,
            "expansions": 0,
            "expanded_bytes": 0,
            "expansion_cost_usd": 0.0,
        }
    ]


def test_csv_and_table(audit: Path) -> None:
    out = report("--audit", str(audit), "--by", "team", "--format", "csv", cwd=audit.parent).stdout
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["team"] for r in rows] == ["a", "b"]
    assert (
        rows[0]["requests"] == "3" and rows[0]["tokens_before"] == "2500" and rows[1]["cost_after_usd"] == ""
    )
    table = report("--audit", str(audit), "--by", "team", cwd=audit.parent).stdout
    assert "tersegate savings" in table and "$ saved" in table
    lines = [line for line in table.splitlines() if line.startswith("│")]
    assert any("│ a " in line and "2,500" in line and "3 " in line for line in lines)
    assert any("total" in line and "2,700" in line for line in lines)  # 2500 + 200 tokens before


def test_report_reads_the_config_audit_path_and_rotated_files(tmp_path: Path) -> None:
    path = tmp_path / "audit" / "tersegate.jsonl"
    write_audit(path, KNOWN, rotate_bytes=1)  # every record in its own file
    assert len(list(path.parent.glob("*.jsonl"))) == 4
    (tmp_path / "config.yaml").write_text(
        "upstreams: {openai: {base_url: 'http://127.0.0.1:9/v1'}}\n"
        "teams: {default: {}}\n"
        "audit: {path: audit/tersegate.jsonl, sqlite: audit/index.sqlite}\n"
    )
    result = report("--by", "team", "--format", "json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert [(r["team"], r["requests"]) for r in orjson.loads(result.stdout)] == [("a", 3), ("b", 1)]
    assert (path.parent / "index.sqlite").is_file()


def _json(*args: str, cwd: Path) -> list[dict[str, Any]]:
    result = report(*args, "--format", "json", cwd=cwd)
    assert result.returncode == 0, result.stderr
    return orjson.loads(result.stdout)  # type: ignore[no-any-return]


def _same(left: list[dict[str, Any]], right: list[dict[str, Any]]) -> None:
    assert len(left) == len(right)
    for a, b in zip(left, right, strict=True):
        assert a.keys() == b.keys()
        for key, value in a.items():
            assert b[key] == (pytest.approx(value) if isinstance(value, float) else value), key


def test_index_matches_a_jsonl_scan_and_ingests_incrementally(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_audit(path, KNOWN[:2], rotate_bytes=1500)
    index = str(tmp_path / "index.sqlite")
    by = ("--by", "team,model,day")
    _same(
        _json("--audit", str(tmp_path), *by, "--index", index, cwd=tmp_path),
        _json("--audit", str(tmp_path), *by, "--no-index", cwd=tmp_path),
    )
    # More records arrive, one rotation renames the file the index already read: no double counting.
    write_audit(path, KNOWN[2:] * 3, rotate_bytes=1500)
    indexed = _json("--audit", str(tmp_path), *by, "--index", index, cwd=tmp_path)
    scanned = _json("--audit", str(tmp_path), *by, "--no-index", cwd=tmp_path)
    _same(indexed, scanned)
    assert sum(r["requests"] for r in indexed) == 8
    _same(_json("--audit", str(tmp_path), *by, "--index", index, "--reindex", cwd=tmp_path), scanned)
    # A subset of the files reports only on those files.
    first = sorted(tmp_path.glob("audit*.jsonl"))[0]
    lines = len(first.read_bytes().splitlines())
    assert sum(r["requests"] for r in _json("--audit", str(first), "--index", index, cwd=tmp_path)) == lines


def test_bad_options_are_reported(audit: Path) -> None:
    result = report("--audit", str(audit), "--by", "team,colour", cwd=audit.parent)
    assert result.returncode == 2 and "--by takes distinct names" in result.stderr
    result = report("--audit", str(audit), "--since", "yesterday", cwd=audit.parent)
    assert result.returncode == 2 and "--since" in result.stderr
    result = report("--audit", str(audit.parent / "missing.jsonl"), "--no-index", cwd=audit.parent)
    assert result.returncode == 2 and "no such audit file" in result.stderr
    assert os.path.exists(audit)


def test_table_flags_losses_per_group_and_per_team() -> None:
    def row(team: str, model: str, saved: float) -> Row:
        return Row(
            keys=(("team", team), ("model", model)),
            requests=1,
            tokens_before=100,
            tokens_after=50,
            cost_before_usd=1.0,
            cost_after_usd=1.0 - saved,
            saved_usd=saved,
            fail_open=0,
            price_missing=0,
            prompt_before=100,
            prompt_after=50,
            cached_before=90,
            cached_after=10,
        )

    rows = [row("a", "m1", -0.5), row("a", "m2", 0.2), row("b", "m1", -0.1), row("b", "m2", 0.3)]
    text = render(rows, by=("team", "model"), fmt="table")
    assert "! team=a: compression raised the team's bill by $0.3000 in all" in text
    assert "team=b:" not in text  # b saved overall, though not on m1
    assert (
        "! team=b, model=m1: compression raised the bill by $0.1000 (cache reads 90.0% of input before"
        in text
    )
    assert "-$0.5000" in text  # the loss is shown, not clamped at zero
