"""Non-canonical request paths are refused with 400 before routing; nothing leaves base_url (proxy/server/paths.py)."""

from __future__ import annotations

import socket
from typing import Any

import httpx
import openai
import orjson
import pytest
from harness import UPSTREAM_KEY, MakeProxy, Upstream

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}
BAD = [
    "/v1/../../admin",
    "/v1/%2e%2e/%2e%2e/admin",
    "/v1/%2E%2E/admin",
    "/v1/.%2E/admin",
    "/v1/%252e%252e/admin",  # encoded twice
    "/v1/./chat/completions",
    "/v1//chat/completions",
    "/v1/chat/completions/",
    "/v1/chat%2fcompletions",
    "/v1/..%2fadmin",
    "/v1/..%5cadmin",
    "/v1/..\\admin",
    "/v1/..;/admin",
    "/v1/files/%00",
    "//v1/chat/completions",
    "/..",
    "/v1/messages/../../admin",  # the Anthropic and Azure routes get the same check
    "/openai/deployments/gpt4o/%2E%2E/%2e%2e/admin",
]


def raw_request(url: str, target: str, body: bytes = b"") -> tuple[int, dict[str, Any]]:
    """Send ``target`` byte for byte (httpx would normalise it)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        head = (
            f"POST {target} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n"
            f"authorization: Bearer sk-client\r\ncontent-length: {len(body)}\r\nconnection: close\r\n\r\n"
        )
        sock.sendall(head.encode() + body)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    status = int(data.split(b" ", 2)[1])
    payload = data.split(b"\r\n\r\n", 1)[1]
    return status, orjson.loads(payload) if payload.startswith(b"{") else {}


@pytest.mark.parametrize("target", BAD)
def test_non_canonical_paths_are_refused_and_never_forwarded(
    make_proxy: MakeProxy, upstream: Upstream, target: str
) -> None:
    proxy = make_proxy(
        {"auth": "keys", "teams": {"default": {"keys_env": "TEAM_KEYS"}}}, env={"TEAM_KEYS": "sk-client"}
    )
    status, payload = raw_request(proxy.url, target, orjson.dumps(CHAT))
    assert status == 400, target
    assert payload["error"]["type"] == "invalid_request_error"  # in the caller's API's shape
    if target.startswith("/v1/messages"):
        assert payload["type"] == "error" and "path" in payload["error"]["message"]
    else:
        assert payload["error"]["code"] == "invalid_path"
    assert upstream.requests == [], f"{target} reached the upstream"


def test_canonical_paths_still_work_and_upstream_gets_only_base_url_paths(
    make_proxy: MakeProxy, upstream: Upstream
) -> None:
    proxy = make_proxy({"audit": {"path": "audit/audit.jsonl"}})
    client = openai.OpenAI(base_url=proxy.base_url, api_key="sk-x", max_retries=0)
    assert client.chat.completions.create(**CHAT).choices  # type: ignore[call-overload]
    assert (
        httpx.get(proxy.base_url + "/files/file-abc.jsonl/content").status_code == 404
    )  # a dot inside is fine
    assert httpx.get(proxy.url + "/models?after=..%2F..").status_code == 200  # the query is not the path
    assert all(r.path.startswith("/v1/") for r in upstream.requests)
    status, _ = raw_request(proxy.url, "/v1/./chat/completions", orjson.dumps(CHAT))
    assert status == 400
    # Only the canonical chat request was audited; the refused one never became an exchange.
    lines = (proxy.config_path.parent / "audit/audit.jsonl").read_bytes().splitlines()
    assert [orjson.loads(line)["route"] for line in lines] == ["/v1/chat/completions"]


def test_upstream_key_never_goes_above_base_url(make_proxy: MakeProxy, upstream: Upstream) -> None:
    proxy = make_proxy(
        {"auth": "keys", "teams": {"default": {"keys_env": "TEAM_KEYS"}}}, env={"TEAM_KEYS": "sk-client"}
    )
    for target in ("/v1/../../admin", "/v1/%2e%2e/%2e%2e/admin"):
        raw_request(proxy.url, target)
    assert not any(UPSTREAM_KEY in str(r.headers) for r in upstream.requests)


def test_path_problem_names_the_reason() -> None:
    from proxy.server.paths import path_problem  # here: the file also runs against main to show the defect

    assert path_problem(b"/v1/chat/completions") is None
    assert path_problem(b"/") is None
    assert path_problem(b"/v1/files/file-1/content") is None
    assert path_problem(b"/v1/files/%66ile-1") is None
    assert "dot-segment" in (path_problem(b"/v1/%2E/x") or "")
    assert "empty segment" in (path_problem(b"/v1//x") or "")
    assert "backslash" in (path_problem(b"/v1/a%5Cb") or "")
    assert "encoded slash" in (path_problem(b"/v1/a%2Fb") or "")
    assert "repeated" in (path_problem(b"/v1/%25252525252e") or "")
