"""Each text of a request is tokenized once: the policy engine's counts and the audit's cache model
read one token memo (proxy/store/tokens.py), in OpenAI chat and Anthropic Messages, and the ids the
memo puts together for a block are exactly the block's own."""

from __future__ import annotations

import collections
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import numpy as np
import openai
import orjson
import pytest
import tiktoken
from harness import MakeProxy, RunningProxy, Upstream

from compressors.tokenizer import Tokenizer, tokenizer_for
from proxy.audit import cache_rules
from proxy.store.tokens import TokenMemo

CODE = Path(cache_rules.__file__).read_text(encoding="utf-8")  # real text: quotes, indents, symbols
LOG = "\n".join(f"src/module_{i}.py:{i}: warning: unused import os (W0611)" for i in range(300))
HALVE_TOOLS = (  # the tool outputs forwarded are new texts, tokenized once (by the audit)
    "name: halve\nmode: enforce\nlatency_budget_ms: 30000\nrules: [{name: halve, match: {roles: [tool], "
    "min_tokens: 200}, compressor: truncate, rate: 0.5, options: {mode: middle, unit: line}}]\n"
)


class Counting:
    """A tokenizer that records the texts it encodes."""

    def __init__(self, model: str) -> None:
        self.inner: Tokenizer = tokenizer_for(model)
        self.encoding = self.inner.encoding
        self.texts: list[str] = []

    def encode(self, text: str) -> list[int]:
        self.texts.append(text)
        return self.inner.encode(text)


def _ids(data: bytes) -> list[int]:
    return np.frombuffer(data, dtype=np.uint32).tolist()


def _adversarial(rng: random.Random, n: int) -> str:
    pieces = [
        "a",
        "Zebra",
        "é",
        "東京",
        "42",
        "_",
        " ",
        "  ",
        "\n",
        "\n\n",
        "\r\n",
        "\t",
        ".",
        "/",
        "'s",
        "{",
    ]
    return "".join(rng.choice(pieces) for _ in range(n))


@pytest.mark.parametrize("model", ["gpt-4o", "gpt-4", "text-davinci-003"])  # o200k, cl100k, p50k
def test_a_block_built_from_its_parts_ids_has_exactly_its_own_ids(model: str) -> None:
    rng = random.Random(5)
    memo, counting = TokenMemo(), Counting(model)
    for _ in range(400):
        parts = [_adversarial(rng, rng.randint(8, 60)) for _ in range(rng.randint(1, 3))]
        around = [_adversarial(rng, rng.randint(0, 3)) for _ in range(len(parts) + 1)]
        text = around[0] + "".join(p + a for p, a in zip(parts, around[1:], strict=True))
        for part in parts:
            memo.ids("t", counting, part)
        assert _ids(memo.ids_within("t", counting, text, parts)) == counting.inner.encode(text), repr(text)
    # Real blocks: a role line, a tool output, a rendered JSON tail. Only the edges are tokenized.
    for output in (CODE, LOG, LOG + ".\n", "  " + CODE + "\n\n"):
        memo.ids("t", counting, output)
        block = "tool\n" + output + "\n" + orjson.dumps({"tool_call_id": "call_1"}).decode()
        counting.texts.clear()
        assert _ids(memo.ids_within("t", counting, block, [output])) == counting.inner.encode(block)
        assert sum(map(len, counting.texts)) < 300  # the edges, not the output again


def test_a_huge_text_is_encoded_in_pieces_that_add_up_to_its_ids() -> None:
    counting = Counting("gpt-4o")
    text = (CODE + LOG) * 30  # ~1 MB
    ids = TokenMemo().ids("t", counting, text)
    assert len(counting.texts) > 4 and "".join(counting.texts) == text
    assert _ids(ids) == counting.inner.encode(text)


def test_a_huge_text_without_an_exact_cut_is_still_encoded_in_bounded_pieces() -> None:
    # Numbered lines with trailing blanks: no letter or digit meets a newline or a space before
    # another. One call over 1.5 MB (and one search through it) would hold the event loop.
    text = "\n".join(f"{n:6d}\t    a_b = load_c(b, a.c)   " for n in range(40_000))
    counting = Counting("gpt-4o")
    ids = _ids(TokenMemo().ids("t", counting, text))
    assert len(counting.texts) > 10 and "".join(counting.texts) == text
    assert max(len(piece) for piece in counting.texts) <= 128 * 1024
    whole = counting.inner.encode(text)
    assert abs(len(ids) - len(whole)) <= 2 * len(counting.texts)  # a token or two at each seam


def test_a_teams_ids_never_serve_another_team_unless_the_memo_is_shared() -> None:
    for shared, encodes in ((False, 2), (True, 1)):
        memo, counting = TokenMemo(shared_across_teams=shared), Counting("gpt-4o")
        assert (
            memo.count("a", counting, LOG)
            == memo.count("b", counting, LOG)
            == len(counting.inner.encode(LOG))
        )
        assert len(counting.texts) == encodes


def test_the_memo_keeps_to_its_bound_and_counts_outlive_the_ids() -> None:
    memo, counting = TokenMemo(ids_bytes=64 * 1024, counts_bytes=16 * 1024), Counting("gpt-4o")
    texts = [f"{i}: " + LOG for i in range(20)]  # ~4,000 tokens, ~16 KB of ids each
    counts = memo.counts("t", counting, texts)
    assert memo.bytes_used <= 80 * 1024
    assert memo.counts("t", counting, texts) == counts and len(counting.texts) == 20  # counts: no encode
    memo.ids("t", counting, texts[0])  # its ids were evicted: encoded again
    assert len(counting.texts) == 21


@pytest.fixture
def encoded(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every text tiktoken encodes in this process (the proxy runs in it; compression runs in
    worker processes), from the moment the test asks."""
    texts: list[str] = []
    lock = threading.Lock()
    original = tiktoken.Encoding.encode_ordinary

    def encode_ordinary(self: tiktoken.Encoding, text: str) -> list[int]:
        with lock:
            texts.append(text)
        return original(self, text)

    monkeypatch.setattr(tiktoken.Encoding, "encode_ordinary", encode_ordinary)
    yield texts


def _records(proxy: RunningProxy, n: int) -> list[dict[str, Any]]:
    path = proxy.config_path.parent / "audit" / "audit.jsonl"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        lines = path.read_bytes().splitlines() if path.exists() else []
        if len(lines) >= n:
            return [orjson.loads(line) for line in lines]
        time.sleep(0.02)
    raise AssertionError(f"{n} audit records expected")


def _audited(make_proxy: MakeProxy) -> RunningProxy:
    upstreams = {
        "fake": {"base_url": "{upstream}", "api_key_env": "FAKE_UPSTREAM_KEY", "timeout_s": 30},
        "claude": {"api": "anthropic", "base_url": "{upstream_root}", "api_key_env": "FAKE_UPSTREAM_KEY"},
    }
    config = {
        "upstreams": upstreams,
        "default_anthropic_upstream": "claude",
        "audit": {"path": "audit/audit.jsonl"},
        "teams": {"default": {"policy": "halve"}},
    }
    return make_proxy(config, policies={"halve": HALVE_TOOLS})


def _once(encoded: list[str], seen: list[str], parts: list[str], forwarded: list[str]) -> None:
    """One turn's encodes (``encoded``): no text encoded twice, none from an earlier turn (``seen``,
    extended here), no part encoded inside a larger text (a whole block), and each new forwarded text
    (a compressed form) encoded (so once)."""
    texts = list(encoded)
    repeated = [t[:60] for t, n in collections.Counter(texts).items() if n > 1]
    assert not repeated
    for part in parts:
        assert not [t[:60] for t in texts if part in t and t != part], part[:60]
    for text in forwarded:
        if text not in seen:
            assert text in texts, text[:60]
    assert not [t[:60] for t in texts if t in seen]  # an earlier turn's text is not encoded again
    seen += texts


def _chat_messages(k: int) -> list[dict[str, Any]]:
    call = {
        "id": f"call_{k}",
        "type": "function",
        "function": {"name": "bash", "arguments": '{"cmd":"lint"}'},
    }
    return [
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": f"call_{k}", "content": f"run {k}\n" + LOG},
        {"role": "user", "content": f"Turn {k}: what failed? " + CODE[k * 500 : k * 500 + 3000]},
    ]


def test_openai_chat_tokenizes_each_new_text_once_per_request(
    make_proxy: MakeProxy, upstream: Upstream, encoded: list[str]
) -> None:
    proxy = _audited(make_proxy)
    with openai.OpenAI(base_url=proxy.base_url, api_key="sk-client", max_retries=0) as client:
        messages: list[dict[str, Any]] = [{"role": "system", "content": "You lint code.\n" + CODE[:4000]}]
        seen: list[str] = []
        for k in range(1, 4):
            messages += _chat_messages(k)
            encoded.clear()
            client.chat.completions.create(model="gpt-4o", messages=messages)  # type: ignore[arg-type]
            record = _records(proxy, k)[-1]
            forwarded = [
                m["content"] for m in upstream.last().json()["messages"] if isinstance(m.get("content"), str)
            ]
            parts = [m["content"] for m in messages if isinstance(m.get("content"), str)]
            _once(encoded, seen, parts, forwarded)
            assert forwarded[-2] != messages[-2]["content"]  # the tool output was compressed
            assert record["cached_tokens_before_est"] is not None  # the cache model ran


def test_anthropic_messages_tokenize_each_new_text_once_per_request(
    make_proxy: MakeProxy, upstream: Upstream, encoded: list[str]
) -> None:
    proxy = _audited(make_proxy)
    with anthropic.Anthropic(base_url=proxy.url, api_key="sk-ant-client-1", max_retries=0) as client:
        system = [
            {"type": "text", "text": "You lint code.\n" + CODE[:6000], "cache_control": {"type": "ephemeral"}}
        ]
        messages: list[dict[str, Any]] = [{"role": "user", "content": "Lint the tree, please."}]
        seen: list[str] = []
        for k in range(1, 4):
            use = {"type": "tool_use", "id": f"toolu_{k:020d}", "name": "bash", "input": {"cmd": f"lint {k}"}}
            result = {"type": "tool_result", "tool_use_id": use["id"], "content": f"run {k}\n" + LOG}
            question = {"type": "text", "text": f"Turn {k}: what failed? " + CODE[k * 500 : k * 500 + 3000]}
            messages += [
                {"role": "assistant", "content": [use]},
                {"role": "user", "content": [result, question]},
            ]
            encoded.clear()
            client.messages.create(
                model="claude-sonnet-4-5",
                max_tokens=10,
                system=system,
                messages=messages,  # type: ignore[arg-type]
            )
            assert _records(proxy, k)[-1]["cached_tokens_before_est"] is not None
            sent = upstream.last().json()["messages"]
            forwarded = [sent[-1]["content"][0]["content"]]
            _once(encoded, seen, [system[0]["text"], result["content"], question["text"]], forwarded)
            assert forwarded[0] != result["content"]


def test_openai_responses_tokenize_each_new_text_once_per_request(
    make_proxy: MakeProxy, upstream: Upstream, encoded: list[str]
) -> None:
    """A ``function_call_output`` is read as text by the cache model too, so its ids are reused."""
    proxy = _audited(make_proxy)
    with openai.OpenAI(base_url=proxy.base_url, api_key="sk-client", max_retries=0) as client:
        items: list[dict[str, Any]] = [{"role": "user", "content": "Lint the tree.\n" + CODE[:4000]}]
        seen: list[str] = []
        for k in range(1, 4):
            items += [
                {
                    "type": "function_call",
                    "call_id": f"call_{k}",
                    "name": "bash",
                    "arguments": '{"cmd":"lint"}',
                },
                {"type": "function_call_output", "call_id": f"call_{k}", "output": f"run {k}\n" + LOG},
                {"role": "user", "content": f"Turn {k}: what failed? " + CODE[k * 500 : k * 500 + 3000]},
            ]
            encoded.clear()
            client.responses.create(model="gpt-4o", instructions="You lint code.", input=items)  # type: ignore[arg-type]
            assert _records(proxy, k)[-1]["cached_tokens_before_est"] is not None
            sent = upstream.last().json()["input"]
            outputs = [i["output"] for i in sent if i.get("type") == "function_call_output"]
            assert outputs[-1] != items[-2]["output"]  # the tool output was compressed
            parts = [i["output"] for i in items if "output" in i] + [
                i["content"] for i in items if isinstance(i.get("content"), str)
            ]
            _once(encoded, seen, parts, outputs)
