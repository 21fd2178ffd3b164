"""History compaction end to end: ``tersegate serve`` to an upstream that caches prefixes like OpenAI.

A 16-step session (each tool output a real file of this repository, as ``cat`` prints it) is sent
turn by turn, once without a policy and once with a compacting one. The invoice is priced from the
usage the upstream reported; the audit's dollars must match it, and the turn that pays for a batch
must show it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from harness import MakeProxy, RunningProxy, ServerThread, Upstream
from prefix_cache_upstream import PrefixCacheUpstream
from test_compaction_engine import POLICY, session, turns

from proxy.audit.pricing import PriceBook, request_cost_usd

pytestmark = pytest.mark.slow


@pytest.fixture
def openai_cache() -> Iterator[PrefixCacheUpstream]:
    app = PrefixCacheUpstream()
    server = ServerThread(app).start()
    app.url = server.url  # type: ignore[attr-defined]
    yield app
    server.stop()


def test_compaction_through_serve_lowers_the_invoice_and_the_audit_shows_the_batch_turn(
    spawn_proxy: MakeProxy, openai_cache: PrefixCacheUpstream, tmp_path: Path
) -> None:
    url = openai_cache.url + "/v1"  # type: ignore[attr-defined]
    config = {
        "upstreams": {"fake": {"base_url": url, "api_key_env": "FAKE_UPSTREAM_KEY", "timeout_s": 120}},
        "teams": {"none": {}, "agent": {"policy": "agent"}},
        "default_team": "none",
        "audit": {"path": str(tmp_path / "audit.jsonl")},
    }
    proxy = spawn_proxy(config, policies={"agent": POLICY.format(more="")})
    with httpx.Client(timeout=120) as client:
        for team in ("none", "agent"):
            for messages in turns(session()):
                response = client.post(
                    proxy.base_url + "/chat/completions",
                    content=orjson.dumps({"model": "gpt-5", "messages": messages}),
                    headers={"Authorization": f"Bearer sk-{team}", "X-Tersegate-Team": team},
                )
                assert response.status_code == 200, response.text
    metrics = httpx.get(proxy.url + "/metrics").text
    proxy.stop()
    batches = [
        line for line in metrics.splitlines() if line.startswith("tersegate_compaction_batches_total{")
    ]
    assert batches and all('team="agent"' in line for line in batches)
    price = PriceBook().price_for("gpt-5")
    assert price is not None
    invoice = {"none": 0.0, "agent": 0.0}
    for _, scope, usage in openai_cache.served:
        team = scope.split("|")[0].removeprefix("Bearer sk-")
        invoice[team] += request_cost_usd(
            price,
            prompt_tokens=usage["prompt_tokens"],
            completion_tokens=usage["completion_tokens"],
            cached_tokens=usage["prompt_tokens_details"]["cached_tokens"],
        )
    assert invoice["agent"] < 0.95 * invoice["none"]
    records = [orjson.loads(line) for line in (tmp_path / "audit.jsonl").read_bytes().splitlines()]
    agent = [r for r in records if r["team"] == "agent"]
    assert sum(r["cost_after_usd"] for r in agent) == pytest.approx(invoice["agent"], rel=1e-6)
    assert sum(r["cost_before_usd"] for r in agent) == pytest.approx(invoice["none"], rel=0.03)
    compacted = [r for r in agent if "compaction" in r["rules"]]
    assert compacted, "some turns went out with stubs"
    assert sum(float(line.split()[-1]) for line in batches) >= 1
    first = compacted[0]
    assert first["saved_usd"] < 0  # the batch turn pays for the cache it breaks, and says so
    assert first["tokens_after"] < first["tokens_before"]


def test_two_serve_replicas_sharing_sqlite_forward_what_one_does(
    spawn_proxy: MakeProxy, upstream: Upstream, tmp_path: Path
) -> None:
    policies = {"agent": POLICY.format(more="")}

    def run(replicas: list[RunningProxy]) -> list[list[Any]]:
        forwarded = []
        for k, messages in enumerate(turns(session())):
            response = httpx.post(
                replicas[k % len(replicas)].base_url + "/chat/completions",
                content=orjson.dumps({"model": "gpt-5", "messages": messages}),
                headers={"Authorization": "Bearer sk-client"},
                timeout=120,
            )
            assert response.status_code == 200, response.text
            forwarded.append(upstream.last().json()["messages"])
        return forwarded

    def config(path: Path) -> dict[str, Any]:
        return {
            "teams": {"default": {"policy": "agent"}},
            "compression": {"memo": {"backend": "sqlite", "path": str(path)}},
        }

    alone = run([spawn_proxy(config(tmp_path / "alone.sqlite"), policies=policies)])
    shared = tmp_path / "shared.sqlite"
    pair = run([spawn_proxy(config(shared), policies=policies) for _ in range(2)])
    assert any(m["role"] == "tool" and m["content"].startswith("[") for m in alone[-1])
    assert pair == alone
