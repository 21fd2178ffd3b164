"""Auth and teams: proxy keys map to teams and are swapped for the upstream's key; keys never leak."""

from __future__ import annotations

import hashlib
import logging

import httpx
import openai
import pytest
from harness import UPSTREAM_KEY, MakeProxy, Upstream

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello"}]}
RAG_KEY = "tg-rag-secret-key-111"
OPS_KEYS = ("tg-ops-secret-aaa", "tg-ops-secret-bbb")


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


KEYS_CONFIG = {
    "auth": "keys",
    "default_team": "rag",
    "teams": {"rag": {"keys_sha256": [sha(RAG_KEY)]}, "ops": {"keys_env": "OPS_TEAM_KEYS"}},
}


def make_keys_proxy(make_proxy: MakeProxy) -> str:
    return make_proxy(KEYS_CONFIG, env={"OPS_TEAM_KEYS": ",".join(OPS_KEYS)}).url


def test_team_keys_are_swapped_for_the_upstream_key(make_proxy: MakeProxy, upstream: Upstream) -> None:
    url = make_keys_proxy(make_proxy)
    for key in (RAG_KEY, *OPS_KEYS):
        c = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)
        assert c.chat.completions.create(**CHAT).choices  # type: ignore[call-overload]
        got = upstream.last().headers
        assert got["authorization"] == f"Bearer {UPSTREAM_KEY}"
    # The api-key header (Azure-style clients) works as well and is not forwarded.
    r = httpx.post(url + "/v1/chat/completions", json=CHAT, headers={"api-key": RAG_KEY})
    assert r.status_code == 200 and "api-key" not in upstream.last().headers
    metrics = httpx.get(url + "/metrics").text
    assert 'status="200",team="rag"} 2.0' in metrics and 'status="200",team="ops"} 2.0' in metrics


def test_unknown_or_missing_key_is_401_without_echoing_it(
    make_proxy: MakeProxy, upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    url = make_keys_proxy(make_proxy)
    wrong = "tg-wrong-key-that-must-not-leak"
    with pytest.raises(openai.AuthenticationError) as caught:
        openai.OpenAI(base_url=url + "/v1", api_key=wrong, max_retries=0).chat.completions.create(**CHAT)  # type: ignore[call-overload]
    error = caught.value.response.json()["error"]
    assert caught.value.status_code == 401 and error["code"] == "invalid_api_key"
    assert set(error) == {"message", "type", "param", "code"}
    assert wrong not in caught.value.response.text
    r = httpx.post(url + "/v1/chat/completions", json=CHAT)
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert upstream.requests == []
    logged = caplog.text
    for secret in (wrong, RAG_KEY, UPSTREAM_KEY, *OPS_KEYS):
        assert secret not in logged


def test_passthrough_forwards_client_key_and_takes_team_from_header(
    make_proxy: MakeProxy, upstream: Upstream
) -> None:
    proxy = make_proxy({"teams": {"default": {}, "search": {}}})
    c = openai.OpenAI(base_url=proxy.base_url, api_key="sk-users-own", max_retries=0)
    c.chat.completions.create(**CHAT, extra_headers={"X-Tersegate-Team": "search"})  # type: ignore[call-overload]
    got = upstream.last().headers
    assert got["authorization"] == "Bearer sk-users-own"
    assert "x-tersegate-team" not in got
    c.chat.completions.create(**CHAT)  # type: ignore[call-overload]
    metrics = httpx.get(proxy.url + "/metrics").text
    assert 'route="/v1/chat/completions",status="200",team="search"} 1.0' in metrics
    assert 'route="/v1/chat/completions",status="200",team="default"} 1.0' in metrics
    with pytest.raises(openai.PermissionDeniedError) as caught:
        c.chat.completions.create(**CHAT, extra_headers={"X-Tersegate-Team": "nobody"})  # type: ignore[call-overload]
    assert "Unknown team 'nobody'" in caught.value.message


def test_no_key_in_a_subprocess_log_or_error_body(spawn_proxy: MakeProxy, upstream: Upstream) -> None:
    proxy = spawn_proxy({**KEYS_CONFIG, "log_level": "debug"}, env={"OPS_TEAM_KEYS": ",".join(OPS_KEYS)})
    wrong = "tg-never-log-this-key"
    bodies = [
        httpx.post(
            proxy.base_url + "/chat/completions", json=CHAT, headers={"authorization": f"Bearer {wrong}"}
        ).text,
        httpx.post(
            proxy.base_url + "/chat/completions", json=CHAT, headers={"authorization": f"Bearer {RAG_KEY}"}
        ).text,
        httpx.post(
            proxy.base_url + "/chat/completions",
            json={**CHAT, "model": "error-500"},
            headers={"authorization": f"Bearer {RAG_KEY}"},
        ).text,
    ]
    proxy.stop()
    everything = proxy.log_text() + "".join(bodies)
    assert "Hello from the fake upstream." in bodies[1]
    for secret in (wrong, RAG_KEY, UPSTREAM_KEY, *OPS_KEYS):
        assert secret not in everything
