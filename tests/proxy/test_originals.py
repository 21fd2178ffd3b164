"""Originals for retrieval (proxy/policy/originals.py) on every real backend: memory, sqlite, Redis.

An id is 24 hex, the same for the same text in a scope, different across scopes and secrets; the
original comes back whole or as its matching lines; an expired id says "expired", an id never issued
or another team's says "unknown", a store that is down says "unavailable".
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from redis_server import RedisServer, redis_server

from proxy.config.model import ConfigErrors, load_config
from proxy.policy.originals import Originals, keyed_id, select_lines
from proxy.store.base import SharedStore
from proxy.store.memory import MemoryStore
from proxy.store.redis import RedisStore
from proxy.store.sqlite import SqliteStore

__all__ = ["redis_server"]

LOG = "\n".join(
    [f"tests/test_app.py::test_case_{i} PASSED" for i in range(1, 500)]
    + ["tests/test_app.py::test_login FAILED - AssertionError: 401 != 200"]
    + [f"tests/test_db.py::test_row_{i} PASSED" for i in range(1, 500)]
)


@pytest_asyncio.fixture(params=["memory", "sqlite", "redis"], loop_scope="function")
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SharedStore]:
    made: SharedStore
    if request.param == "memory":
        made = MemoryStore()
    elif request.param == "sqlite":
        made = SqliteStore(tmp_path / "memo.sqlite", max_bytes=1 << 24)
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        made = RedisStore(server.url)
    yield made
    await made.aclose()


async def test_an_original_comes_back_by_its_id_and_only_in_its_scope(store: SharedStore) -> None:
    originals = Originals(store)
    ref = await originals.keep("team-a", LOG)
    assert re.fullmatch(r"[0-9a-f]{24}", ref)
    assert await originals.keep("team-a", LOG) == ref  # the same original, the same id
    assert await originals.ids("team-b", [LOG]) != [ref]  # another scope, another id
    got = await originals.expand("team-a", ref)
    assert (got.status, got.text) == ("ok", LOG)
    assert got.returned_bytes == len(LOG.encode())
    other = await originals.expand("team-b", ref)  # another team's id: as if it never existed
    assert other.status == "unknown"
    assert LOG[:20] not in other.text
    assert (await originals.expand("team-a", "0" * 24)).status == "unknown"
    assert (await originals.expand("team-a", "not-an-id")).status == "unknown"


async def test_a_query_returns_the_matching_lines_with_their_numbers(store: SharedStore) -> None:
    originals = Originals(store)
    ref = await originals.keep("team-a", LOG)
    got = await originals.expand("team-a", ref, query="failed")
    assert got.status == "ok"
    assert (
        got.text.splitlines()[0] == "500: tests/test_app.py::test_login FAILED - AssertionError: 401 != 200"
    )
    assert "[1 of 999 lines match the query; 998 other lines not shown]" in got.text


async def test_replicas_share_the_secret_first_writer_wins(store: SharedStore) -> None:
    one, two = Originals(store), Originals(store)
    secrets = await asyncio.gather(one.secret(), two.secret())
    assert secrets[0] == secrets[1] and len(secrets[0]) == 32
    ref = await one.keep("team-a", "a file read\n" * 50)
    assert (await two.expand("team-a", ref)).text == "a file read\n" * 50


async def test_an_expired_original_is_reported_as_expired(store: SharedStore) -> None:
    originals = Originals(store, ttl_s=0.2)
    ref = await originals.keep("team-a", LOG)
    assert (await originals.expand("team-a", ref)).status == "ok"
    await asyncio.sleep(0.4)
    got = await originals.expand("team-a", ref)
    assert got.status == "expired"
    assert "expired" in got.text and LOG[:20] not in got.text
    assert (await originals.expand("team-b", ref)).status == "unknown"  # never revealed to others


async def test_a_store_that_is_down_answers_unavailable(redis_server: RedisServer) -> None:
    store = RedisStore(redis_server.url, timeout_s=0.2)
    originals = Originals(store, timeout_s=0.3)
    ref = await originals.keep("team-a", LOG)
    redis_server.kill()
    got = await originals.expand("team-a", ref)
    assert got.status == "unavailable"
    await store.aclose()


def test_keyed_ids_depend_on_the_secret_scope_and_text() -> None:
    base = keyed_id(b"k" * 32, "a", "text")
    assert re.fullmatch(r"[0-9a-f]{24}", base)
    assert base == keyed_id(b"k" * 32, "a", "text")
    assert len({base, keyed_id(b"j" * 32, "a", "text"), keyed_id(b"k" * 32, "b", "text")}) == 3
    # scope and text are separated: ("ab", "c") is not ("a", "bc")
    assert keyed_id(b"k" * 32, "ab", "c") != keyed_id(b"k" * 32, "a", "bc")


def test_select_lines_falls_back_to_any_word() -> None:
    lines, matched, total = select_lines("alpha one\nbeta two\ngamma three", "beta gamma")
    assert (lines, matched, total) == ("2: beta two\n3: gamma three", 2, 3)


async def test_a_long_original_is_cut_with_a_note(store: SharedStore) -> None:
    originals = Originals(store, max_return_chars=1000)
    ref = await originals.keep("t", LOG)
    got = await originals.expand("t", ref)
    assert got.text.startswith(LOG[:1000]) and "lines omitted; ask again with a query" in got.text


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ("retrieve: {ttl_s: -1}", "compression.retrieve.ttl_s: must be a positive number"),
        ("retrieve: {max_expansions_per_request: x}", "compression.retrieve.max_expansions_per_request"),
        ("retrieve: {ttl: 60}", "ttl"),
    ],
)
def test_bad_retrieve_settings_are_file_line_errors(tmp_path: Path, block: str, message: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(
        "upstreams: {openai: {base_url: 'http://127.0.0.1:1/v1'}}\nteams: {default: {}}\n"
        f"compression:\n  {block}\n"
    )
    with pytest.raises(ConfigErrors) as caught:
        load_config(path)
    assert f"{path}:4:" in str(caught.value) and message in str(caught.value)


def test_retrieve_settings_load(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(
        "upstreams: {openai: {base_url: 'http://127.0.0.1:1/v1'}}\nteams: {default: {}}\n"
        "compression:\n  retrieve: {ttl_s: 3600, max_expansions_per_request: 5}\n"
    )
    retrieve = load_config(path).compression.retrieve
    assert (retrieve.ttl_s, retrieve.max_expansions_per_request, retrieve.max_return_chars) == (
        3600,
        5,
        60_000,
    )
