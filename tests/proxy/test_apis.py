"""The dialect protocol's tool side: tool calls of a response (JSON and stream), the follow-up
body with the tool results, an added tool, and tool outputs' parts naming their call.

Every body and response built here is checked against the provider's published shapes: OpenAI's
OpenAPI spec (evaluation data) and the Anthropic SDK's request types; the Anthropic stream and
message come from the fake Anthropic upstream the proxy's end-to-end tests use.
"""

from __future__ import annotations

import json
from typing import Any

import fake_anthropic
import orjson
import pydantic
import pytest
from anthropic.types.message_create_params import MessageCreateParamsNonStreaming
from openai.types.chat import ChatCompletionChunk
from openapi_shapes import OPENAPI, schema_errors

from proxy import apis
from proxy.apis import CHAT, COMPLETIONS, MESSAGES, RESPONSES, TextDelta, ToolCall, Unsupported

SCHEMA = {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}
ARGS = '{"path": "src/app.py"}'


def _sse(payload: Any, event: str | None = None) -> bytes:
    head = b"event: " + event.encode() + b"\n" if event else b""
    return head + b"data: " + orjson.dumps(payload) + b"\n\n"


def _read(dialect: apis.Dialect, frames: list[bytes]) -> tuple[str, list[ToolCall]]:
    reader = dialect.stream_reader()
    items = [item for frame in frames for item in reader.feed(frame)] + reader.close()
    text = "".join(i.text for i in items if isinstance(i, TextDelta))
    return text, [i for i in items if isinstance(i, ToolCall)]


# Chat completions.

CHAT_BODY = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Read src/app.py"}]}
CHAT_RESPONSE = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1,
    "model": "gpt-4o",
    "choices": [
        {
            "index": 0,
            "finish_reason": "tool_calls",
            "logprobs": None,
            "message": {
                "role": "assistant",
                "content": None,
                "refusal": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "read_file", "arguments": ARGS},
                    },
                    {"id": "call_2", "type": "function", "function": {"name": "grep", "arguments": "{}"}},
                ],
            },
        }
    ],
}


def _chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
    return _sse(
        {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o", "choices": [choice]}
    )


def _fragment(index: int, **function: str) -> dict[str, Any]:
    call: dict[str, Any] = {"index": index, "function": function}
    if "name" in function:
        call |= {"id": f"call_{index + 1}", "type": "function"}
    return {"tool_calls": [call]}


CHAT_FRAMES = [
    _chunk({"role": "assistant", "content": "Let me "}),
    _chunk({"content": "look."}),
    _chunk(_fragment(0, name="read_file", arguments="")),
    _chunk(_fragment(0, arguments='{"path": "sr')),
    _chunk(_fragment(0, arguments='c/app.py"}')),
    _chunk(_fragment(1, name="grep", arguments="{}")),
    _chunk({}, "tool_calls"),
    b"data: [DONE]\n\n",
]


@pytest.mark.evaldata(OPENAPI)
def test_chat_tool_calls_from_json_and_stream_and_the_follow_up_conforms() -> None:
    assert schema_errors(CHAT_RESPONSE, "CreateChatCompletionResponse") == []
    for frame in CHAT_FRAMES[:-1]:  # the spec's nullable fields are OpenAPI 3.0: the SDK's model reads them
        ChatCompletionChunk.model_validate_json(frame[6:])
    calls = CHAT.tool_calls(CHAT_RESPONSE)
    assert calls == [ToolCall("call_1", "read_file", ARGS), ToolCall("call_2", "grep", "{}")]
    assert calls[0].input == {"path": "src/app.py"}
    assert _read(CHAT, CHAT_FRAMES) == ("Let me look.", calls)
    results = [("call_1", "print('hi')"), ("call_2", "no matches")]
    body = CHAT.follow_up(CHAT_BODY, CHAT.assistant_turn(CHAT_RESPONSE), results)
    body = CHAT.add_tool(body, "retrieve", "Fetch an omitted original.", SCHEMA)
    assert schema_errors(body, "CreateChatCompletionRequest") == []
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "tool", "tool"]
    assert body["tools"][0]["function"]["parameters"] == SCHEMA and "tools" not in CHAT_BODY
    streamed = CHAT.follow_up(CHAT_BODY, CHAT.assistant_from("Let me look.", calls), results)
    assert schema_errors(streamed, "CreateChatCompletionRequest") == []
    tool_parts = [p for p in CHAT.parts(body) if p.role == "tool"]
    assert [(p.text, p.tool_name, p.tool_arguments) for p in tool_parts] == [
        ("print('hi')", "read_file", ARGS),
        ("no matches", "grep", "{}"),
    ]


# Responses.

RESPONSES_BODY = {"model": "gpt-4o", "input": "Read src/app.py"}
CALL_ITEM = {
    "type": "function_call",
    "id": "fc_1",
    "call_id": "call_1",
    "name": "read_file",
    "arguments": ARGS,
    "status": "completed",
}


@pytest.mark.evaldata(OPENAPI)
def test_responses_tool_calls_from_json_and_stream_and_the_follow_up_conforms() -> None:
    response = {"id": "resp_1", "object": "response", "output": [CALL_ITEM]}
    done = {"type": "response.output_item.done", "output_index": 0, "sequence_number": 3, "item": CALL_ITEM}
    delta = {
        "type": "response.output_text.delta",
        "item_id": "msg_1",
        "output_index": 0,
        "content_index": 0,
        "delta": "Reading.",
        "sequence_number": 2,
        "logprobs": [],
    }
    assert schema_errors(done, "ResponseOutputItemDoneEvent") == []
    assert schema_errors(delta, "ResponseTextDeltaEvent") == []
    calls = RESPONSES.tool_calls(response)
    assert calls == [ToolCall("call_1", "read_file", ARGS)]
    frames = [_sse(delta, delta["type"]), _sse(done, done["type"])]  # type: ignore[arg-type]
    assert _read(RESPONSES, frames) == ("Reading.", calls)
    results = [("call_1", "print('hi')")]
    body = RESPONSES.follow_up(RESPONSES_BODY, RESPONSES.assistant_turn(response), results)
    body = RESPONSES.add_tool(body, "retrieve", "Fetch an omitted original.", SCHEMA)
    assert schema_errors(body, "CreateResponse") == []
    assert [i.get("type", "message") for i in body["input"]] == [
        "message",
        "function_call",
        "function_call_output",
    ]
    assert body["tools"] == [
        {
            "type": "function",
            "name": "retrieve",
            "description": "Fetch an omitted original.",
            "parameters": SCHEMA,
            "strict": False,
        }
    ]
    streamed = RESPONSES.follow_up(RESPONSES_BODY, RESPONSES.assistant_from("Reading.", calls), results)
    assert schema_errors(streamed, "CreateResponse") == []
    (tool,) = [p for p in RESPONSES.parts(body) if p.role == "tool"]
    assert (tool.text, tool.tool_name, tool.tool_arguments) == ("print('hi')", "read_file", ARGS)


# Anthropic Messages.

MESSAGES_BODY = {
    "model": "claude-sonnet-4-5",
    "max_tokens": 100,
    "tools": [{"name": "get_weather", "input_schema": {"type": "object"}}],
    "messages": [{"role": "user", "content": "Weather in Paris?"}],
}
_REQUEST = pydantic.TypeAdapter(MessageCreateParamsNonStreaming)


def test_messages_tool_calls_from_json_and_stream_and_the_follow_up_conforms() -> None:
    message = fake_anthropic.message(MESSAGES_BODY, {})
    (call,) = MESSAGES.tool_calls(message)
    assert call.name == "get_weather" and call.input == fake_anthropic.TOOL_INPUT
    text, streamed = _read(MESSAGES, fake_anthropic.frames(MESSAGES_BODY, {}))
    assert text.strip() == fake_anthropic.REPLY
    assert [(c.id, c.name, c.input) for c in streamed] == [(call.id, call.name, call.input)]
    results = [(call.id, "18 C, sunny")]
    body = MESSAGES.follow_up(MESSAGES_BODY, MESSAGES.assistant_turn(message), results)
    body = MESSAGES.add_tool(body, "retrieve", "Fetch an omitted original.", SCHEMA)
    _REQUEST.validate_python(body)
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    assert body["messages"][2]["content"] == [
        {"type": "tool_result", "tool_use_id": call.id, "content": "18 C, sunny"}
    ]
    assert body["tools"][1] == {
        "name": "retrieve",
        "description": "Fetch an omitted original.",
        "input_schema": SCHEMA,
    }
    _REQUEST.validate_python(
        MESSAGES.follow_up(MESSAGES_BODY, MESSAGES.assistant_from(text, streamed), results)
    )
    (tool,) = [p for p in MESSAGES.parts(body) if p.role == "tool"]
    assert (tool.text, tool.tool_name, json.loads(tool.tool_arguments or "")) == (
        "18 C, sunny",
        "get_weather",
        fake_anthropic.TOOL_INPUT,
    )


# What the dialects share and where they differ.


def test_completions_have_no_tools_and_azure_reads_bodies_as_openai_does() -> None:
    with pytest.raises(Unsupported):
        COMPLETIONS.add_tool({"prompt": "x"}, "t", "d", SCHEMA)
    assert COMPLETIONS.tool_calls({"choices": [{"text": "x"}]}) == []
    azure = apis.route_of("/openai/deployments/gpt4o-prod/chat/completions")
    assert azure.route == "/v1/chat/completions" and azure.deployment == "gpt4o-prod"
    assert azure.dialect.parts(CHAT_BODY) == CHAT.parts(CHAT_BODY)
    assert azure.dialect.key_header(b"k") == (b"api-key", b"k") and CHAT.key_header(b"k") == (
        b"authorization",
        b"Bearer k",
    )
    assert apis.route_of("/v1/messages").dialect is MESSAGES
    assert not apis.route_of("/v1/messages/count_tokens").compressible


def test_a_walk_is_reused_for_parts_and_the_cache_text() -> None:
    blocks = MESSAGES.walk(MESSAGES_BODY)
    assert MESSAGES.parts(MESSAGES_BODY, blocks) == MESSAGES.parts(MESSAGES_BODY)
    assert [MESSAGES.cache_text(b) for b in blocks] == [
        'tools\n{"input_schema":{"type":"object"},"name":"get_weather"}',
        "user\nWeather in Paris?",
    ]
    assert MESSAGES.other_texts(MESSAGES_BODY, blocks) == [orjson.dumps(MESSAGES_BODY["tools"]).decode()]
