"""Cost truth under prompt caching: the audit's dollars match the invoice, also when compression loses money.

The SWE-agent traces are replayed turn by turn through ``tersegate serve`` to an upstream that
reports cached tokens as a provider's prefix cache would (tests/prefix_cache_upstream.py): once
per team, each team a policy, each run its own cache scope. The invoices are priced from what the
upstream reported; the passthrough run's invoice is what the uncompressed traffic costs. The audit
of each compressed run must reproduce both: its after-dollars the run's invoice, its before-dollars
the passthrough invoice (within 3%), and so the sign of the saving.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from harness import MakeProxy, ServerThread
from prefix_cache_upstream import PrefixCacheUpstream

import evaldata
from evaldata import agent_messages, turns
from proxy.audit.pricing import PriceBook, request_cost_usd

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from anthropic_shape import MODEL as ANTHROPIC_MODEL
from anthropic_shape import turns as anthropic_turns

REPO = Path(__file__).resolve().parents[2]
TRACES = evaldata.path("swe-agent-traces")
TRACE_FILES = sorted(TRACES.glob("*.traj")) if TRACES.is_dir() else []
HALVE = evaldata.HALVE_POLICY
POLICIES = {
    "first": HALVE.format(name="first", age=""),
    "aged": HALVE.format(name="aged", age=", older_than_turns: 2"),
    "agents": (REPO / "policies" / "agents.yaml").read_text(encoding="utf-8"),
}
pytestmark = pytest.mark.skipif(not TRACE_FILES, reason="../shared/evaldata is absent")


@pytest.fixture
def cache_upstream() -> Iterator[PrefixCacheUpstream]:
    app = PrefixCacheUpstream()
    server = ServerThread(app).start()
    app.url = server.url  # type: ignore[attr-defined]
    yield app
    server.stop()


def start(spawn_proxy: MakeProxy, upstream: PrefixCacheUpstream, tmp_path: Path) -> Any:
    teams = {"none": {}, **{name: {"policy": name} for name in POLICIES}}
    url = upstream.url + "/v1"  # type: ignore[attr-defined]
    config = {
        "upstreams": {"fake": {"base_url": url, "api_key_env": "FAKE_UPSTREAM_KEY", "timeout_s": 120}},
        "teams": teams,
        "default_team": "none",
        "audit": {"path": str(tmp_path / "audit.jsonl")},
    }
    return spawn_proxy(config, policies=POLICIES)


def replay(proxy: Any, team: str, bodies: list[dict[str, Any]], path: str) -> None:
    with httpx.Client(timeout=120) as client:
        for body in bodies:
            response = client.post(
                proxy.base_url + path,
                content=orjson.dumps(body),
                headers={"Authorization": f"Bearer sk-{team}", "X-Tersegate-Team": team},
            )
            assert response.status_code == 200, response.text


def invoices(upstream: PrefixCacheUpstream, model: str) -> dict[str, float]:
    """Dollars per team, priced from the usage the upstream reported."""
    price = PriceBook().price_for(model)
    assert price is not None
    out: dict[str, float] = {}
    for _, scope, usage in upstream.served:
        team = scope.split("|")[0].removeprefix("Bearer sk-")
        if "cache_read_input_tokens" in usage:
            written = usage["cache_creation_input_tokens"]
            prompt = usage["input_tokens"] + written + usage["cache_read_input_tokens"]
            cost = request_cost_usd(
                price,
                prompt_tokens=prompt,
                completion_tokens=usage["output_tokens"],
                cached_tokens=usage["cache_read_input_tokens"],
                written_tokens=written,
                written_1h_tokens=usage["cache_creation"]["ephemeral_1h_input_tokens"],
            )
        else:
            cost = request_cost_usd(
                price,
                prompt_tokens=usage["prompt_tokens"],
                completion_tokens=usage["completion_tokens"],
                cached_tokens=usage["prompt_tokens_details"]["cached_tokens"],
            )
        out[team] = out.get(team, 0.0) + cost
    return out


def audit_sums(path: Path) -> dict[str, tuple[float, float, float]]:
    """``team -> (cost_before, cost_after, saved)`` summed over the audit records."""
    sums: dict[str, list[float]] = {}
    for line in path.read_bytes().splitlines():
        record = orjson.loads(line)
        acc = sums.setdefault(record["team"], [0.0, 0.0, 0.0])
        acc[0] += record["cost_before_usd"]
        acc[1] += record["cost_after_usd"]
        acc[2] += record["saved_usd"]
    return {team: (a[0], a[1], a[2]) for team, a in sums.items()}


def report(*args: str) -> str:
    command = [sys.executable, "-m", "proxy.cli", "report", *args]
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout


def assert_matches_invoices(upstream: PrefixCacheUpstream, audit: Path, model: str, teams: list[str]) -> None:
    invoice = invoices(upstream, model)
    sums = audit_sums(audit)
    base = invoice["none"]
    assert sums["none"][0] == pytest.approx(base, rel=1e-6)  # nothing compressed: before == invoice
    for team in teams:
        before, after, saved = sums[team]
        assert after == pytest.approx(invoice[team], rel=1e-6), team
        assert before == pytest.approx(base, rel=0.03), (team, before, base)
        assert (saved > 0) == (invoice[team] < base), (team, saved, invoice[team] - base)


@pytest.mark.slow
def test_openai_audit_matches_the_invoices_and_shows_the_loss(
    spawn_proxy: MakeProxy, cache_upstream: PrefixCacheUpstream, tmp_path: Path
) -> None:
    proxy = start(spawn_proxy, cache_upstream, tmp_path)
    for team in ("none", *POLICIES):
        for trace in TRACE_FILES:
            bodies = [{"model": "gpt-5", "messages": t} for t in turns(agent_messages(trace))]
            replay(proxy, team, bodies, "/chat/completions")
    metrics = httpx.get(proxy.url + "/metrics").text
    proxy.stop()
    audit = tmp_path / "audit.jsonl"
    assert_matches_invoices(cache_upstream, audit, "gpt-5", list(POLICIES))
    invoice = invoices(cache_upstream, "gpt-5")
    assert invoice["aged"] > invoice["none"]  # the age-based policy raised the bill ...
    assert audit_sums(audit)["aged"][2] < 0  # ... and the audit says so
    # ... and so do the metrics: the bill before and after, whose difference is the net saving.
    before, after, _ = audit_sums(audit)["aged"]
    counted = {
        name: float(line.split()[-1])
        for name in ("tersegate_cost_before_usd_total", "tersegate_cost_after_usd_total")
        for line in metrics.splitlines()
        if line.startswith(name + '{team="aged"}')
    }
    assert counted["tersegate_cost_before_usd_total"] == pytest.approx(before, rel=1e-6)
    assert counted["tersegate_cost_after_usd_total"] == pytest.approx(after, rel=1e-6) and after > before
    records = [orjson.loads(line) for line in audit.read_bytes().splitlines()]
    assert all("text" not in r and r["cached_tokens_before_est"] is not None for r in records)
    out = report("--audit", str(audit), "--by", "team", "--format", "json")
    indexed = report(
        "--audit", str(audit), "--by", "team", "--format", "json", "--index", str(tmp_path / "i.db")
    )
    assert json.loads(indexed) == json.loads(out)  # the SQLite index sums the cache columns alike
    rows = {row["team"]: row for row in json.loads(out)}
    assert rows["aged"]["saved_usd"] < 0 and rows["aged"]["cache_loss"] is True
    assert rows["first"]["saved_usd"] > 0 and rows["first"]["cache_loss"] is False
    assert rows["aged"]["cached_share_before"] > rows["aged"]["cached_share_after"]
    table = report("--audit", str(audit), "--by", "team")
    assert "-$" in table and "aged" in table and "raised the bill" in table


@pytest.mark.slow
def test_upstream_cache_misses_are_calibrated_away(spawn_proxy: MakeProxy, tmp_path: Path) -> None:
    app = PrefixCacheUpstream(flush_every=4)  # every 4th request of a scope finds its cache gone
    server = ServerThread(app).start()
    app.url = server.url  # type: ignore[attr-defined]
    try:
        proxy = start(spawn_proxy, app, tmp_path)
        for team in ("none", "first", "aged"):
            for trace in TRACE_FILES[:3]:
                bodies = [{"model": "gpt-5", "messages": t} for t in turns(agent_messages(trace))]
                replay(proxy, team, bodies, "/chat/completions")
        proxy.stop()
    finally:
        server.stop()
    assert_matches_invoices(app, tmp_path / "audit.jsonl", "gpt-5", ["first", "aged"])


@pytest.mark.slow
def test_anthropic_breakpoints_audit_matches_the_invoices(
    spawn_proxy: MakeProxy, cache_upstream: PrefixCacheUpstream, tmp_path: Path
) -> None:
    proxy = start(spawn_proxy, cache_upstream, tmp_path)
    for team in ("none", "first", "aged"):
        for trace in TRACE_FILES:  # as Claude Code sends them: tool_use / tool_result blocks, breakpoints
            replay(proxy, team, anthropic_turns(trace), "/messages")
    proxy.stop()
    audit = tmp_path / "audit.jsonl"
    assert_matches_invoices(cache_upstream, audit, ANTHROPIC_MODEL, ["first", "aged"])
    invoice = invoices(cache_upstream, ANTHROPIC_MODEL)
    assert invoice["first"] < invoice["none"] < invoice["aged"]  # rewriting old blocks re-pays writes
    records = [orjson.loads(line) for line in audit.read_bytes().splitlines()]
    assert any(r["usage"]["cache_write_tokens"] for r in records)
    assert all(r["cache_write_tokens_before_est"] is not None for r in records)
