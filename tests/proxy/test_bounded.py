"""Bounded work (issue 13, defect 2): one large prompt must not freeze the proxy, and
``latency_budget_ms`` bounds what compression may cost a request, measured from its arrival.

Real ``tersegate serve`` processes under the shipped ``support`` policy (300 ms budget), the fake
upstream on loopback, and other clients polling ``/healthz`` and chatting while the large prompt is
in flight.
"""

from __future__ import annotations

import random
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from harness import MakeProxy, Upstream, free_port, wait_compression_ready
from samples import ticket

SUPPORT = (Path(__file__).resolve().parents[2] / "policies" / "support.yaml").read_text()


def support_proxy(spawn_proxy: MakeProxy, *, budget_ms: int = 300, **config: Any) -> Any:
    policy = SUPPORT.replace("latency_budget_ms: 300", f"latency_budget_ms: {budget_ms}")
    settings = {"teams": {"default": {"policy": "support"}}, "audit": {"path": "audit.jsonl"}, **config}
    return wait_compression_ready(spawn_proxy(settings, policies={"support": policy}))


def chat_body(text: str) -> bytes:
    return orjson.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": text}]})


def post(url: str, body: bytes, timeout: float = 120) -> httpx.Response:
    headers = {"content-type": "application/json", "authorization": "Bearer sk-c"}
    return httpx.post(url + "/v1/chat/completions", content=body, headers=headers, timeout=timeout)


PROBE = """
import sys, time, httpx, orjson
url, chat = sys.argv[1], sys.argv[2] == "chat"
body = orjson.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "Is it fixed?"}]})
latencies, failures = [], 0
with httpx.Client(timeout=30) as client:
    print("started", flush=True)
    while not sys.stdin.closed:
        started = time.perf_counter()
        try:
            if chat:
                r = client.post(url + "/v1/chat/completions", content=body,
                                headers={"content-type": "application/json", "authorization": "Bearer k",
                                         "x-tersegate-team": "other"})
            else:
                r = client.get(url + "/healthz")
            failures += r.status_code != 200
        except httpx.HTTPError:
            failures += 1
        latencies.append((time.monotonic(), (time.perf_counter() - started) * 1000))
        time.sleep(0.02)
        import select
        if select.select([sys.stdin], [], [], 0)[0]:
            break
print(orjson.dumps({"latencies": latencies, "failures": failures}).decode(), flush=True)
"""


class Probe:
    """Another client, in its own process: polls ``/healthz`` (or chats) until stopped,
    recording each answer's latency in ms."""

    def __init__(self, url: str, *, chat: bool = False) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", PROBE, url, "chat" if chat else "health"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == "started"
        self.latencies: list[tuple[float, float]] = []  # (time.monotonic(), latency ms)
        self.failures = 0

    def finish(self) -> None:
        out, _ = self.proc.communicate("stop\n", timeout=60)
        result = orjson.loads(out.strip().splitlines()[-1])
        self.latencies, self.failures = result["latencies"], result["failures"]

    def p99(self, start: float, end: float) -> float:
        """p99 latency of the answers that arrived between ``start`` and ``end``."""
        window = [ms for at, ms in self.latencies if start <= at <= end]
        assert len(window) >= 10, len(window)
        return statistics.quantiles(window, n=100)[98]


def audit_of(proxy: Any) -> list[dict[str, Any]]:
    path = proxy.config_path.parent / "audit.jsonl"
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


@pytest.fixture
def other_upstream() -> Iterator[str]:
    """A second fake upstream, in its own process, for the other clients' team: the test's own
    fake upstream (a thread of this process) is busy for a while taking in a 30 MB body."""
    port = free_port()
    fake = Path(__file__).resolve().parents[1] / "fake_upstream.py"
    proc = subprocess.Popen([sys.executable, str(fake), "--port", str(port)])
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(url + "/v1/models", timeout=1)
            break
        except httpx.TransportError:
            assert time.monotonic() < deadline
            time.sleep(0.1)
    yield url + "/v1"
    proc.terminate()
    proc.wait(10)


@pytest.mark.slow
@pytest.mark.parametrize("megabytes", [2, 30])
def test_a_huge_prompt_never_delays_others(
    spawn_proxy: MakeProxy, upstream: Upstream, other_upstream: str, megabytes: int
) -> None:
    proxy = support_proxy(
        spawn_proxy,
        upstreams={
            "fake": {"base_url": "{upstream}", "api_key_env": "FAKE_UPSTREAM_KEY"},
            "other": {"base_url": other_upstream, "api_key_env": "FAKE_UPSTREAM_KEY"},
        },
        teams={"default": {"policy": "support"}, "other": {"upstream": "other"}},
    )
    text = ticket(megabytes * 1_000_000, seed=megabytes)
    body = chat_body(text)
    health, chatter = Probe(proxy.url), Probe(proxy.url, chat=True)
    time.sleep(1.5)  # the probes' first answers (connection set-up), then a quiet baseline
    started = time.monotonic()
    response = post(proxy.url, body)
    ended = time.monotonic()
    time.sleep(0.3)
    health.finish()
    chatter.finish()

    assert response.status_code == 200
    big = [r for r in upstream.requests if len(r.body) > 1_000_000]
    assert len(big) == 1 and big[0].json()["messages"][0]["content"] == text  # forwarded as is
    assert health.failures == 0 and chatter.failures == 0
    # 100 ms on a quiet machine. On a loaded one (here: 8 engineers' tests on 2 cores) scheduling
    # delays are not the proxy's: three times the probe's own p99 before the big request came in
    # is allowed on top (before the fix, the proxy stalled for seconds: 4.5 s at 2 MB).
    for name, probe in (("healthz", health), ("chat", chatter)):
        quiet = probe.p99(started - 1.2, started)
        assert probe.p99(started, ended + 0.3) < 100 + 3 * quiet, (name, quiet, ended - started)
    [record] = [r for r in audit_of(proxy) if (r["tokens_before"] or 0) > 100_000]
    assert record["tokens_before"] == record["tokens_after"]
    assert (megabytes * 1_000_000 > 8 << 20) is (record["tokens_before"] == record["usage"]["prompt_tokens"])


@pytest.mark.slow
def test_a_late_result_is_never_used(spawn_proxy: MakeProxy, upstream: Upstream) -> None:
    # The cap is raised so a part that takes seconds to compress is attempted at all.
    proxy = support_proxy(spawn_proxy, budget_ms=150, compression={"max_part_chars": 10_000_000})
    text = ticket(400_000, seed=7)
    started = time.perf_counter()
    response = post(proxy.url, chat_body(text))
    took = time.perf_counter() - started
    assert response.status_code == 200
    assert upstream.last().json()["messages"][0]["content"] == text
    assert took < 1.5  # the budget, counted from arrival, plus forwarding
    [record] = audit_of(proxy)
    assert record["fail_open"] == "latency_budget"
    assert record["compress_ms"] <= 150 + 50


@pytest.mark.slow
def test_an_abandoned_job_does_not_hold_the_pool(spawn_proxy: MakeProxy, upstream: Upstream) -> None:
    # One worker; a part that would take it well over ten seconds to compress.
    proxy = support_proxy(
        spawn_proxy, budget_ms=1500, compression={"max_part_chars": 10_000_000, "workers": 1}
    )
    started = time.monotonic()
    assert post(proxy.url, chat_body(ticket(2_000_000, seed=8))).status_code == 200
    wait_compression_ready(proxy)  # its job was abandoned; a fresh worker is up and warm
    small = post(proxy.url, chat_body(ticket(3_000, seed=9)))
    assert time.monotonic() - started < 10
    assert int(small.headers["x-tersegate-tokens-after"]) < int(small.headers["x-tersegate-tokens-before"])
    first, second = audit_of(proxy)
    assert first["fail_open"] == "latency_budget" and second["fail_open"] is None


@pytest.mark.slow
def test_parts_above_the_cap_are_forwarded_as_is(spawn_proxy: MakeProxy, upstream: Upstream) -> None:
    proxy = support_proxy(spawn_proxy, compression={"max_part_chars": 5_000})
    below, above = ticket(4_000, seed=2), ticket(6_000, seed=3)
    body = orjson.dumps(
        {
            "model": "gpt-4o",
            "messages": [
                {"role": "user", "content": above},
                {"role": "assistant", "content": "Noted."},
                {"role": "user", "content": below},
            ],
        }
    )
    assert post(proxy.url, body).status_code == 200
    sent = upstream.last().json()["messages"]
    assert sent[0]["content"] == above
    assert len(sent[2]["content"]) < len(below)


@pytest.mark.slow
@pytest.mark.parametrize("stream", [False, True])
def test_a_body_above_the_parse_cap_is_forwarded_unparsed_and_audited_from_usage(
    spawn_proxy: MakeProxy, upstream: Upstream, stream: bool
) -> None:
    proxy = support_proxy(spawn_proxy, compression={"max_parse_bytes": 20_000})
    small, large = ticket(4_000, seed=4), ticket(30_000, seed=5)
    for text in (small, large):
        raw = orjson.dumps(
            {"model": "gpt-4o", "stream": stream, "messages": [{"role": "user", "content": text}]}
        )
        response = post(proxy.url, raw)
        assert response.status_code == 200
        if text is large and not stream:
            assert upstream.last().body == raw  # byte for byte: not even re-serialized
        if text is large and stream:  # the client's bytes, with usage asked for in front
            assert upstream.last().body == b'{"stream_options":{"include_usage":true},' + raw[1:]
            assert b'"usage"' not in response.content  # what the proxy asked for is not passed on
    small_record, large_record = audit_of(proxy)
    assert small_record["tokens_after"] < small_record["tokens_before"]  # compressed as usual
    usage = large_record["usage"]
    assert usage is not None and usage["prompt_tokens"] > 1_000
    assert large_record["tokens_before"] == large_record["tokens_after"] == usage["prompt_tokens"]
    assert large_record["model"] and large_record["cost_before_usd"] == large_record["cost_after_usd"] > 0
    assert large_record["stream"] is stream


async def test_counting_in_pieces_gives_the_same_total() -> None:
    """The engine counts a huge text in pieces (so the loop gets the GIL between them): the audit's
    ``tokens_before`` of a request no rule looks at is still the tokenizer's count of the whole text."""
    from compressors.tokenizer import tokenizer_for
    from proxy.exchange import Exchange
    from proxy.policy.engine import PolicyRewriter
    from proxy.policy.model import PolicySet

    rng = random.Random(4)
    mixed = "".join(
        rng.choice([ticket(3_000, seed=i), "x" * 5_000, "  \n\n\t", " 123 456,789 ", "naïve café 東京 "])
        for i in range(400)
    )
    rewriter = PolicyRewriter(PolicySet(policies={}, team_policy={}), memo_bytes=1 << 26, workers=1)
    try:
        for model in ("gpt-4o", "gpt-4"):
            tokenizer = tokenizer_for(model)
            for text in (mixed, mixed.replace("\n", " "), "word " * 300_000):
                exchange = Exchange("r", "POST", "/v1/chat/completions", "t", None, "u", time.time(), True)
                body = {"model": model, "messages": [{"role": "user", "content": text}]}
                rewrite = await rewriter(exchange, body, {})
                assert rewrite.skipped == "no policy for team"
                assert rewrite.tokens_before == tokenizer.count(text)
    finally:
        rewriter.close()


@pytest.mark.slow
def test_a_message_without_sentence_ends_does_not_stall_query_planning(
    spawn_proxy: MakeProxy, upstream: Upstream
) -> None:
    # Finding its question used a regex that backtracked cubically on such a text, on the loop.
    proxy = support_proxy(spawn_proxy)
    text = "the printer on floor three keeps jamming " * 500  # 20k characters, no . ! ? or newline
    started = time.monotonic()
    response = post(proxy.url, chat_body(text), timeout=30)
    assert response.status_code == 200 and time.monotonic() - started < 5
