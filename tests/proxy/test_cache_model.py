"""The counterfactual cache model: provider rules, calibration and its state (digests only, shared)."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from prefix_cache_upstream import PrefixCacheUpstream
from redis_server import RedisServer, redis_server

from compressors.tokenizer import tokenizer_for
from proxy.apis import CHAT, dialect_for
from proxy.audit import cache_rules as rules
from proxy.audit.cache_model import CacheModel
from proxy.audit.pricing import Price, costs_for
from proxy.store.base import StoreUnavailable
from proxy.store.memory import MemoryStore
from proxy.store.redis import RedisStore
from proxy.store.sqlite import SqliteStore

__all__ = ["redis_server"]

WORDS = " ".join(f"word{i}" for i in range(3000))  # ~6,000 tokens of text nobody else has
SECRET = "the launch code is 0000 " * 100


def chat(*contents: str, **extra: Any) -> dict[str, Any]:
    return {"model": "gpt-5", "messages": [{"role": "user", "content": c} for c in contents], **extra}


def estimate(
    model: CacheModel, original: dict[str, Any], forwarded: dict[str, Any] | None = None, **kw: Any
) -> Any:
    usage = kw.pop("usage", {"cached_tokens": 0})  # no prompt_tokens: never skipped as too short
    return asyncio.run(
        model.estimate(
            team=kw.pop("team", "t"),
            model="gpt-5",
            dialect=dialect_for(*kw.pop("route", ("/v1/chat/completions", "openai"))),
            original=original,
            forwarded=forwarded,
            usage=usage,
        )
    )


def test_openai_rules_are_1024_tokens_then_128_token_steps() -> None:
    assert rules.openai_cached(1023) == 0
    assert rules.openai_cached(1024) == 1024
    assert rules.openai_cached(1151) == 1024
    assert rules.openai_cached(1152) == 1152


def test_anthropic_breakpoints_read_the_longest_written_prefix_and_write_the_rest() -> None:
    ends = [1500, 3000, 3100, 5000]
    use = rules.anthropic_use(ends, [(0, "1h"), (3, "5m")], hit=None, min_tokens=1024)
    assert (use.read, use.written) == (0, {"1h": 1500, "5m": 3500})
    use = rules.anthropic_use(ends, [(0, "1h"), (3, "5m")], hit=0, min_tokens=1024)
    assert (use.read, use.written) == (1500, {"5m": 3500})
    assert rules.anthropic_use([500, 900], [(1, "5m")], hit=None, min_tokens=1024).written == {}
    assert rules.lookback([(25, "5m")])[-1] == 5 and rules.lookback([(25, "5m")])[0] == 25


def test_calibration_scales_misses_and_keeps_what_the_upstream_said_when_nothing_changed() -> None:
    assert rules.calibrate(8000, 8000, 8000) == 8000  # nothing compressed: the report stands
    assert rules.calibrate(8000, 8000, 0) == 0  # the upstream's cache had expired: so would the original's
    assert rules.calibrate(8000, 2048, 1024) == 4000  # half of the expected hits: half the counterfactual
    assert rules.calibrate(8000, 2048, 2176) == 8128  # token boundaries the model does not see: added
    assert rules.calibrate(8000, 0, 0) == 8000  # compression broke the whole cache


def test_a_second_turn_is_estimated_cached_and_a_rewritten_history_breaks_the_forwarded_cache() -> None:
    model = CacheModel()
    first = chat(WORDS)
    cut = chat(WORDS[: len(WORDS) // 4])
    assert estimate(model, first, cut).before.cached == 0
    second = chat(WORDS, "and now?")
    est = estimate(model, second, chat(WORDS[:100], "and now?"), usage={"cached_tokens": 0})
    assert est.before.cached >= 5000 and est.before.cached % 128 == 0  # the original prefix was cached
    assert est.after.cached == 0  # the forwarded history changed from its first token
    assert est.cached_before == est.before.cached  # the upstream agreed: nothing to scale


def test_prompt_cache_key_and_team_narrow_the_scope() -> None:
    model = CacheModel()
    estimate(model, chat(WORDS, prompt_cache_key="user-1"))
    assert estimate(model, chat(WORDS, prompt_cache_key="user-2")).before.cached == 0
    assert estimate(model, chat(WORDS), team="other").before.cached == 0
    assert estimate(model, chat(WORDS, prompt_cache_key="user-1")).before.cached > 5000


def test_state_is_digests_only_and_shared_by_workers_using_one_store(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "cache.sqlite", max_bytes=1 << 24)  # the file replicas would share
    worker_a, worker_b = CacheModel(store), CacheModel(store)
    estimate(worker_a, chat(SECRET, WORDS, prompt_cache_key="alice@example.com"))
    assert estimate(worker_b, chat(SECRET, WORDS, prompt_cache_key="alice@example.com")).before.cached > 5000
    asyncio.run(store.aclose())
    on_disk = b"".join(path.read_bytes() for path in tmp_path.iterdir())  # the database and its WAL
    assert b"launch" not in on_disk and b"word1" not in on_disk and b"alice" not in on_disk
    with contextlib.closing(sqlite3.connect(tmp_path / "cache.sqlite")) as db:
        keys = [key for (key,) in db.execute("SELECT key FROM entries")]
    assert keys and all(len(key) == 25 for key in keys)  # a side letter and a 96-bit digest


def test_a_bounded_store_forgets_and_the_model_then_expects_no_hit() -> None:
    model = CacheModel(MemoryStore(max_bytes=1_000))  # ~25 digests: the first ones are evicted
    estimate(model, chat(WORDS))
    assert estimate(model, chat(WORDS)).before.cached == 0


def test_anthropic_route_uses_the_clients_breakpoints() -> None:
    model = CacheModel()
    system = [{"type": "text", "text": WORDS, "cache_control": {"type": "ephemeral", "ttl": "1h"}}]
    body = {"model": "claude-sonnet-4-5", "system": system, "messages": [{"role": "user", "content": "hi"}]}
    first = estimate(model, body, route=("/v1/messages", "anthropic"))
    assert first.before.cached == 0 and first.before.written["1h"] > 5000
    second = estimate(model, body, route=("/v1/messages", "anthropic"))
    assert second.before.cached == first.before.written["1h"] and second.before.written == {}
    unmarked = {
        "model": "claude-sonnet-4-5",
        "system": WORDS,
        "messages": [{"role": "user", "content": "hi"}],
    }
    assert (
        estimate(model, unmarked, route=("/v1/messages", "anthropic")).before.cached == 0
    )  # no breakpoint: no cache


def test_a_compression_that_loses_the_cache_costs_more_than_it_saves() -> None:
    price = Price(key="m", input=1e-6, output=0.0, cached_input=1e-7)
    usage: dict[str, int | None] = {"prompt_tokens": 8000, "completion_tokens": 0, "cached_tokens": 0}
    costs = costs_for(price, usage, prompt_delta=2000, cached_before=9000)
    assert costs.before_usd is not None and costs.saved_usd is not None
    assert costs.saved_usd < 0  # 10,000 tokens, 9,000 cached, cost less than 8,000 uncached
    assert costs.before_usd == round(1000 * 1e-6 + 9000 * 1e-7, 10)


class DownStore(MemoryStore):
    """A backend that cannot be reached (as a Redis store reports a refused connection)."""

    async def get_many(self, namespace: str, keys: Sequence[str]) -> list[bytes | None]:
        raise StoreUnavailable("connection refused")


def test_an_unreachable_store_gives_no_estimate_so_the_record_falls_back() -> None:
    assert estimate(CacheModel(DownStore()), chat(WORDS)) is None


def test_after_losing_its_state_the_model_takes_the_reported_cache_for_the_original() -> None:
    before_restart = CacheModel()
    estimate(before_restart, chat(WORDS))
    restarted = CacheModel()  # a new process with the in-process store: nothing tracked
    est = estimate(restarted, chat(WORDS, "next"), chat(WORDS[:500], "next"), usage={"cached_tokens": 1024})
    assert est.before.cached == est.after.cached == 0
    assert est.cached_before == 1024  # what the upstream reported, not zero
    assert estimate(restarted, chat(WORDS, "next", "again")).before.cached > 5000  # tracked again


async def _cached(model: CacheModel, body: dict[str, Any]) -> int:
    found = await model.estimate(
        team="t", model="gpt-5", dialect=CHAT, original=body, forwarded=None, usage={}
    )
    assert found is not None
    return found.before.cached


async def test_a_restart_keeps_the_state_in_the_memos_sqlite_file(tmp_path: Path) -> None:
    path = tmp_path / "state" / "memo.sqlite"
    first = SqliteStore(path, max_bytes=1 << 24)
    assert await _cached(CacheModel(first), chat(WORDS)) == 0
    await first.aclose()
    restarted = SqliteStore(path, max_bytes=1 << 24)  # a new process on the same file
    assert await _cached(CacheModel(restarted), chat(WORDS, "next")) > 5000
    await restarted.aclose()


async def test_two_workers_share_the_state_through_redis(redis_server: RedisServer) -> None:
    one, two = RedisStore(redis_server.url), RedisStore(redis_server.url)
    assert await _cached(CacheModel(one), chat(WORDS)) == 0
    assert await _cached(CacheModel(two), chat(WORDS, "next")) > 5000  # the other worker's prefix
    await one.aclose()
    await two.aclose()


def test_a_text_seen_under_one_models_tokenizer_is_counted_anew_under_anothers() -> None:
    model = CacheModel()
    text = " ".join(f"word{i} naïve 東京" for i in range(600))

    def prompt(name: str) -> int:
        body = {"model": name, "messages": [{"role": "user", "content": text}]}
        found = asyncio.run(
            model.estimate(
                team="t",
                model=name,
                dialect=dialect_for("/v1/chat/completions", "openai"),
                original=body,
                forwarded=None,
                usage={"cached_tokens": 0},
            )
        )
        return int(found.before.prompt)

    for name in ("gpt-4o", "gpt-4", "gpt-4o"):  # o200k, cl100k, o200k again (memo hits)
        assert prompt(name) == tokenizer_for(name).count("user\n" + text), name


@pytest.mark.parametrize("route", [("/v1/messages", "anthropic"), ("/v1/chat/completions", "openai")])
async def test_the_engines_token_ids_are_reused_and_the_estimate_is_the_same(
    route: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A body is tokenized once: the cache model builds each block's ids from the ids the policy
    engine kept in the shared token memo as it counted, and estimates exactly what it estimates
    tokenizing every block itself."""
    import time

    import tiktoken

    from proxy.exchange import Exchange
    from proxy.policy.engine import PolicyRewriter
    from proxy.policy.model import PolicySet
    from proxy.store.tokens import TokenMemo

    system = [{"type": "text", "text": WORDS, "cache_control": {"type": "ephemeral", "ttl": "1h"}}]
    messages = [
        {"role": "user", "content": [{"type": "text", "text": SECRET + WORDS[:5000]}]},
        {"role": "assistant", "content": "Noted. " + WORDS[5000:9000]},
        {"role": "user", "content": "(and now?) " + WORDS[9000:], "cache_control": {"type": "ephemeral"}},
    ]
    body: dict[str, Any] = {"model": "claude-sonnet-4-5", "system": system, "messages": messages}
    if route[1] == "openai":
        body = chat(WORDS, SECRET + WORDS[:5000], "(and now?) " + WORDS[9000:])
    memo = TokenMemo()
    rewriter = PolicyRewriter(
        PolicySet(policies={}, team_policy={}), memo_bytes=1 << 24, workers=1, tokens=memo
    )
    encoded: list[int] = []
    original = tiktoken.Encoding.encode_ordinary

    def encode_ordinary(self: tiktoken.Encoding, text: str) -> list[int]:
        encoded.append(len(text))
        return original(self, text)

    try:
        exchange = Exchange("r", "POST", route[0], "t", None, "u", time.time(), True, api=route[1])
        await rewriter(exchange, body, {})
        sharing, alone = CacheModel(tokens=memo), CacheModel()
        for _ in range(2):  # a first turn (written), then a second (read)
            estimates = []
            for model in (sharing, alone):
                with monkeypatch.context() as patch:
                    patch.setattr(tiktoken.Encoding, "encode_ordinary", encode_ordinary)
                    estimates.append(
                        await model.estimate(
                            team="t",
                            model=str(body["model"]),
                            dialect=dialect_for(*route),
                            original=body,
                            forwarded=None,
                            usage={"prompt_tokens": 20_000, "cached_tokens": 0},
                        )
                    )
                if model is sharing:
                    assert sum(encoded) < 300  # role lines and framing: no text block again
                encoded.clear()
            assert estimates[0] == estimates[1] and estimates[0] is not None
            assert estimates[0].before.prompt > 10_000
    finally:
        rewriter.close()
    with monkeypatch.context() as patch:
        patch.setattr(tiktoken.Encoding, "encode_ordinary", encode_ordinary)
        assert memo.count("other team", tokenizer_for("gpt-5"), WORDS) and encoded  # ids stay per team


def test_a_role_line_and_a_text_tokenize_as_their_parts() -> None:
    """What lets the cache model add the engine's count to its role line's (``_split``): for texts
    that start with no whitespace, ``role + "\\n" + text`` has exactly the tokens of both."""
    import random

    rng = random.Random(7)
    starts = [
        "Hello",
        "'s",
        "123",
        ".",
        "...\n",
        "{",
        "\u6771\u4eac",
        "\u00e9t\u00e9",
        "_x",
        "/path",
        "-",
        "'",
    ]
    ends = ["", ".", "\n", " ", "\n\n", "!\n", " 42"]
    texts = [
        a + rng.choice([" word", WORDS[:300], SECRET[:200], "\t\ttab"]) + b for a in starts for b in ends
    ]
    for name in ("gpt-4o", "gpt-4"):
        tokenizer = tokenizer_for(name)
        for role in ("user", "assistant", "system", "tool", "USER"):
            for text in texts:
                joint = tokenizer.encode(role + "\n" + text)
                assert joint == tokenizer.encode(role + "\n") + tokenizer.encode(text), (
                    name,
                    role,
                    text[:20],
                )


def test_a_heavily_cut_anthropic_request_is_counted_in_the_upstreams_units() -> None:
    """The original's size in the upstream's units: a request whose tool results were cut to a few
    lines is mostly per-block framing, which must not inflate the ratio by which the original (mostly
    text) is converted. The fake upstream counts o200k of each block's JSON: framing and escaping."""
    lines = Path(rules.__file__).read_text(encoding="utf-8").splitlines()  # real code: quotes, indents
    system = [{"type": "text", "text": WORDS[:4000], "cache_control": {"type": "ephemeral", "ttl": "1h"}}]

    def body(cut: bool) -> dict[str, Any]:
        messages: list[dict[str, Any]] = [{"role": "user", "content": "fix the bug"}]
        for k in range(30):
            call = {
                "type": "tool_use",
                "id": f"toolu_01{k:022d}",
                "name": "bash",
                "input": {"cmd": f"cat {k}"},
            }
            output = "\n".join((lines[k:] + lines[:k])[:: 6 if cut else 1])  # a sixth of the lines
            result = {"type": "tool_result", "tool_use_id": call["id"], "content": output}
            messages += [{"role": "assistant", "content": [call]}, {"role": "user", "content": [result]}]
        messages[-1]["content"][-1]["cache_control"] = {"type": "ephemeral"}
        return {"model": "claude-sonnet-4-5", "max_tokens": 10, "system": system, "messages": messages}

    original, forwarded = body(cut=False), body(cut=True)
    upstream = PrefixCacheUpstream()
    truth = dialect_for("/v1/messages", "anthropic").usage(upstream._anthropic_usage("o", original))
    usage = dialect_for("/v1/messages", "anthropic").usage(upstream._anthropic_usage("f", forwarded))
    assert truth is not None and usage is not None and truth["prompt_tokens"] and usage["prompt_tokens"]
    assert usage["prompt_tokens"] < truth["prompt_tokens"] / 4  # heavily cut
    found = estimate(CacheModel(), original, forwarded, usage=usage, route=("/v1/messages", "anthropic"))
    assert found.prompt_before is not None
    assert abs(found.prompt_before / truth["prompt_tokens"] - 1) < 0.03
