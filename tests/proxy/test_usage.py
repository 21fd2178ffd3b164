"""Stream usage: injected when the client did not ask, stripped so the client sees what it asked for."""

from __future__ import annotations

import re
from typing import Any

import orjson
from fake_upstream import _Call, chat_frames, completion_frames, response_frames

from proxy import apis
from proxy.apis.stream_usage import UsageTap
from proxy.exchange import payload_size


def _call(body: dict[str, Any]) -> _Call:
    return _Call(
        scope={},
        body=orjson.dumps(body),
        parsed=body,
        model=body["model"],
        headers={},
        record=None,
        request_id="req_0123456789abcdef01234567",
    )


def _relay(frames: list[bytes], tap: UsageTap) -> bytes:
    kept = [tap.frame(frame) for frame in frames]
    return _same_second(b"".join(frame for frame in kept if frame is not None))


def _same_second(stream: bytes) -> bytes:
    """Streams built a second apart differ only in ``created``."""
    return re.sub(rb'"created":\d+', b'"created":0', stream)


CHAT = {"model": "gpt-4o", "stream": True, "messages": [{"role": "user", "content": "one two three"}]}


def test_injected_usage_is_captured_and_removed() -> None:
    forwarded, injected = apis.CHAT.prepare_stream(CHAT)
    assert injected and forwarded["stream_options"] == {"include_usage": True}
    assert "stream_options" not in CHAT  # the client's body is not mutated
    tap = UsageTap(injected)
    sent = _relay(chat_frames(_call(forwarded)), tap)
    assert sent == _same_second(
        b"".join(chat_frames(_call(CHAT)))
    )  # byte for byte what a plain stream looks like
    assert apis.CHAT.usage(tap.usage) == {
        "prompt_tokens": 3,
        "completion_tokens": 5,
        "cached_tokens": 0,
        "reasoning_tokens": 0,
    }


def test_client_that_asked_for_usage_gets_the_stream_unchanged() -> None:
    body = {**CHAT, "stream_options": {"include_usage": True}}
    forwarded, injected = apis.CHAT.prepare_stream(body)
    assert forwarded is body and not injected
    frames = chat_frames(_call(body))
    tap = UsageTap(injected)
    assert _relay(frames, tap) == _same_second(b"".join(frames))
    assert tap.usage is not None and tap.usage["prompt_tokens"] == 3


def test_other_stream_options_are_kept() -> None:
    forwarded, injected = apis.CHAT.prepare_stream(
        {**CHAT, "stream_options": {"include_usage": False, "x": 1}}
    )
    assert injected and forwarded["stream_options"] == {"include_usage": True, "x": 1}


def test_completions_stream_injection() -> None:
    body = {"model": "gpt-3.5-turbo-instruct", "stream": True, "prompt": "a b"}
    forwarded, injected = apis.COMPLETIONS.prepare_stream(body)
    tap = UsageTap(injected)
    assert _relay(completion_frames(_call(forwarded)), tap) == _same_second(
        b"".join(completion_frames(_call(body)))
    )
    assert tap.usage is not None and tap.usage["prompt_tokens"] == 2


def test_responses_stream_needs_no_injection_and_reports_usage() -> None:
    body = {"model": "gpt-4o", "stream": True, "input": "four words right here"}
    forwarded, injected = apis.RESPONSES.prepare_stream(body)
    assert forwarded is body and not injected
    frames = response_frames(_call(body))
    tap = UsageTap(injected)
    assert _relay(frames, tap) == _same_second(b"".join(frames))
    assert apis.CHAT.usage(tap.usage) == {
        "prompt_tokens": 4,
        "completion_tokens": 5,
        "cached_tokens": 0,
        "reasoning_tokens": 0,
    }


def test_non_streaming_bodies_are_left_alone() -> None:
    body = {"model": "gpt-4o", "messages": []}
    assert apis.CHAT.prepare_stream(body) == (body, False)


def test_usage_word_inside_content_is_not_touched() -> None:
    tap = UsageTap(True)
    frame = b'data: {"choices":[{"delta":{"content":"the \\"usage\\":null trick"}}],"usage":null}\n\n'
    assert tap.frame(frame) == b'data: {"choices":[{"delta":{"content":"the \\"usage\\":null trick"}}]}\n\n'


def test_normalize_reads_reasoning_and_cached_details() -> None:
    raw = {
        "prompt_tokens": 100,
        "completion_tokens": 50,
        "prompt_tokens_details": {"cached_tokens": 64},
        "completion_tokens_details": {"reasoning_tokens": 30},
    }
    assert apis.CHAT.usage(raw) == {
        "prompt_tokens": 100,
        "completion_tokens": 50,
        "cached_tokens": 64,
        "reasoning_tokens": 30,
    }
    assert apis.CHAT.usage({"prompt_tokens": 7, "total_tokens": 7}) == {
        "prompt_tokens": 7,
        "completion_tokens": None,
        "cached_tokens": None,
        "reasoning_tokens": None,
    }
    assert apis.CHAT.usage(None) is None


def test_an_unparsed_stream_gets_usage_asked_for_in_front_without_copying_the_body() -> None:
    chat = "/v1/chat/completions"
    body = b' \r\n\t{ \n"model":"gpt-4o","stream":true,"messages":[]}'
    (head, rest), injected = apis.CHAT.prepare_unparsed_stream(body)
    assert injected and isinstance(rest, memoryview) and rest.obj is body  # a view, not a copy
    sent = head + bytes(rest)
    assert sent == b'{"stream_options":{"include_usage":true},"model":"gpt-4o","stream":true,"messages":[]}'
    assert payload_size((head, rest)) == len(sent) and orjson.loads(sent)["stream_options"]
    (head, rest), _ = apis.CHAT.prepare_unparsed_stream(b"{ }")
    assert orjson.loads(head + bytes(rest)) == {"stream_options": {"include_usage": True}}
    # The client's own choice stands; not JSON objects and other routes are sent as they came.
    for raw, route in (
        (b'{"stream_options":{"include_usage":false},"stream":true}', chat),
        (b'["stream"]', chat),
        (b'{"stream":true,"input":"x"}', "/v1/responses"),
    ):
        assert apis.dialect_for(route).prepare_unparsed_stream(raw) == (raw, False)
