"""Rewritten bodies keep every byte of what was not rewritten (proxy/apis/splice.py): big integers,
number spellings, nesting deeper than orjson can serialise; and a body that cannot be encoded is
forwarded as sent, never failed."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest
from harness import MakeProxy, Upstream

BIG = b"123456789012345678901234567890"
TIDY = """\
name: tidy
min_saving_tokens: 0
mode: enforce
rules:
  - name: long-user
    match: {roles: [user], min_tokens: 20}
    compressor: normalize
"""
LONG = "Please   look at    this.\n\n\n\n\n" * 40


def deep_schema(depth: int) -> bytes:
    return b'{"type":"object","properties":{"a":' * depth + b'{"type":"integer"}' + b"}}" * depth


def chat_body(*, stream: bool, depth: int = 3, content: str = "hi") -> bytes:
    tool = b'{"type":"function","function":{"name":"f","parameters":' + deep_schema(depth) + b"}}"
    return (
        b'{"model": "gpt-4o-mini", "seed": '
        + BIG
        + b', "temperature": 1.0e0, "stream": '
        + (b"true" if stream else b"false")
        + b', "messages": [{"role": "user", "content": '
        + orjson.dumps(content)
        + b'}], "tools": ['
        + tool
        + b'], "metadata": {"note": "caf\\u00e9"}}'
    )


def post(proxy: Any, body: bytes) -> httpx.Response:
    headers = {"authorization": "Bearer sk-c", "content-type": "application/json"}
    return httpx.post(proxy.base_url + "/chat/completions", content=body, headers=headers, timeout=30)


def test_a_stream_with_a_300_deep_tool_schema_is_forwarded_with_usage_added(
    make_proxy: MakeProxy, upstream: Upstream
) -> None:
    proxy = make_proxy()
    body = chat_body(stream=True, depth=300)
    reply = post(proxy, body)
    assert reply.status_code == 200, reply.text  # was: 502 proxy_error (orjson cannot dump > 254 levels)
    assert b"data: [DONE]" in reply.content
    sent = upstream.last().body
    assert deep_schema(300) in sent  # untouched values byte for byte
    assert orjson.loads(sent)["stream_options"] == {"include_usage": True}
    assert b'"usage":{' not in reply.content.replace(b" ", b"")  # the client did not ask for usage


@pytest.mark.slow
def test_big_integers_and_number_spellings_survive_a_rewrite(
    make_proxy: MakeProxy, upstream: Upstream
) -> None:
    proxy = make_proxy({"teams": {"default": {"policy": "tidy"}}}, policies={"tidy": TIDY})
    for stream in (False, True):
        reply = post(proxy, chat_body(stream=stream, content=LONG))
        assert reply.status_code == 200
        sent = upstream.last().body
        assert orjson.loads(sent)["messages"][0]["content"] != LONG  # it was rewritten
        assert b'"seed": ' + BIG in sent or b'"seed":' + BIG in sent  # was: 1.2345678901234568e+29
        assert b"1.0e0" in sent and b"caf\\u00e9" in sent


@pytest.mark.slow
def test_a_compressed_deep_request_is_spliced_not_failed(make_proxy: MakeProxy, upstream: Upstream) -> None:
    proxy = make_proxy({"teams": {"default": {"policy": "tidy"}}}, policies={"tidy": TIDY})
    reply = post(proxy, chat_body(stream=False, depth=400, content=LONG))
    assert reply.status_code == 200, reply.text
    sent = upstream.last().body
    assert deep_schema(400) in sent and orjson.loads(sent)["messages"][0]["content"] != LONG
    assert reply.headers["x-tersegate-tokens-after"] < reply.headers["x-tersegate-tokens-before"]


def test_encode_rewrite_splices_changes_and_drops() -> None:
    from proxy.apis.splice import encode_rewrite  # here: the file also runs against main

    data = b'{"a": ' + BIG + b', "m": [{"c": "x"}, {"c": "y"}, {"c": "z"}], "d": {"k": 1}, "d": {"k": 2}}'
    old = orjson.loads(data)
    # Duplicate keys cannot be spliced: the whole body is serialised instead.
    assert encode_rewrite(data, old, {**old, "x": 1}) == orjson.dumps({**old, "x": 1})
    data = b'{"a": ' + BIG + b', "m": [{"c": "x"}, {"c": "y"}, {"c": "z"}], "s": {"keep": 1e2}}'
    old = orjson.loads(data)
    new = {**old, "m": [old["m"][0], old["m"][2]], "s": {**old["s"], "include_usage": True}}
    assert encode_rewrite(data, old, new) == (
        b'{"a":' + BIG + b',"m":[{"c": "x"},{"c": "z"}],"s":{"keep":1e2,"include_usage":true}}'
    )
    new = {k: v for k, v in old.items() if k != "s"}
    assert encode_rewrite(data, old, new) == b'{"a":' + BIG + b',"m":[{"c": "x"}, {"c": "y"}, {"c": "z"}]}'


@pytest.mark.slow
def test_a_body_that_cannot_be_re_encoded_is_forwarded_as_sent(
    make_proxy: MakeProxy, upstream: Upstream
) -> None:
    proxy = make_proxy(
        {"teams": {"default": {"policy": "tidy"}}, "audit": {"path": "audit/audit.jsonl"}},
        policies={"tidy": TIDY},
    )
    # Duplicate keys (no splice) and 300 levels (no orjson.dumps): neither the compressed text nor
    # include_usage can be put in, so the client's bytes go as they are.
    body = chat_body(stream=True, depth=300, content=LONG)[:-1] + b', "metadata": {"note": "again"}}'
    reply = post(proxy, body)
    assert reply.status_code == 200 and b"data: [DONE]" in reply.content
    assert upstream.last().body == body
    record = orjson.loads((proxy.config_path.parent / "audit/audit.jsonl").read_bytes().splitlines()[0])
    assert record["status"] == 200 and record["fail_open"] == "the rewritten body could not be encoded"
