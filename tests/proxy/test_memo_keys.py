"""Who may reuse a memoized form (issue 12, Must 3), through :class:`PolicyRewriter` as the server calls it.

A form made for a question belongs to the conversation that sent it: the conversation's later turns
re-send it; another conversation (or team) with the same document and its own question gets the
document compressed for its own question. Query-free forms are shared inside a team, across teams
only with ``memo: {shared_across_teams: true}``; token counts and embedding vectors are per team too.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from compressors.embedding import Embedder
from proxy.config.model import MemoConfig
from proxy.exchange import Exchange, Rewrite
from proxy.policy.compressor_pool import Job, WorkerPool, run_job
from proxy.policy.engine import PolicyRewriter
from proxy.policy.model import PolicySet, load_policy

TOPICS = [
    ("volcano", "lava magma eruption crater basalt ash plume vent"),
    ("violin", "strings bow orchestra concerto luthier maple varnish"),
    ("glacier", "ice moraine crevasse fjord meltwater snowpack calving"),
    ("bakery", "sourdough flour yeast oven crust proofing baguette"),
    ("comet", "nucleus coma tail perihelion orbit icy dust"),
    ("honeybee", "hive pollen nectar queen drone waggle comb"),
    ("railway", "locomotive track signal station freight sleeper gauge"),
    ("coral", "reef polyp bleaching lagoon atoll algae spawning"),
    ("chess", "gambit rook bishop castling endgame opening pawn"),
    ("desert", "dune cactus oasis mirage sandstorm arid camel"),
    ("lighthouse", "beacon keeper lens foghorn coast lantern tower"),
    ("penicillin", "mould antibiotic bacteria fleming culture infection dose"),
]
DOCUMENTS = "\n\n".join(
    f"Document [{i + 1}](Title: {name}) The {name} article. "
    + " ".join(f"{word} {name} notes {i} {word}s." for word in words.split())
    for i, (name, words) in enumerate(TOPICS)
)
QUESTION_A = "What erupts from a volcano crater, and what does a glacier leave as moraine?"
QUESTION_B = "How does a honeybee hive work, and what does a chess gambit give up?"

RELEVANCE = """\
name: docs
min_saving_tokens: 0
latency_budget_ms: 60000
rules:
  - name: documents
    match: {{roles: [tool]}}
    compressor: {compressor}
    rate: 0.3
    options: {options}
"""


def policies(tmp_path: Path, compressor: str = "relevance", options: str = "{scorer: bm25}") -> PolicySet:
    path = tmp_path / "docs.yaml"
    path.write_text(RELEVANCE.format(compressor=compressor, options=options), encoding="utf-8")
    policy, _ = load_policy(path)
    return PolicySet(policies={"docs": policy}, team_policy={"a": "docs", "b": "docs"})


def exchange(team: str) -> Exchange:
    return Exchange("r", "POST", "/v1/chat/completions", team, None, "u", time.time(), True)


def conversation(question: str, *more: dict[str, Any], documents: str = DOCUMENTS) -> dict[str, Any]:
    call = {"id": "c1", "type": "function", "function": {"name": "search", "arguments": "{}"}}
    return {
        "model": "gpt-4o",
        "messages": [
            {"role": "user", "content": question},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "c1", "content": documents},
            *more,
        ],
    }


def document_form(rewrite: Rewrite) -> str:
    assert rewrite.body is not None, rewrite.fail_open
    text: str = rewrite.body["messages"][2]["content"]
    return text


def source(rewrite: Rewrite, message: int = 2) -> str:
    return str(next(p for p in rewrite.parts if p["message"] == message)["source"])


@pytest.fixture
def make_rewriter() -> Iterator[Any]:
    made: list[PolicyRewriter] = []

    def make(policy_set: PolicySet, memo: MemoConfig | None = None) -> PolicyRewriter:
        made.append(PolicyRewriter(policy_set, memo_bytes=1 << 24, workers=1, memo=memo))
        return made[-1]

    yield make
    for rewriter in made:
        rewriter.close()


async def test_each_team_gets_the_document_compressed_for_its_own_question(
    tmp_path: Path, make_rewriter: Any
) -> None:
    p = policies(tmp_path)
    alone = make_rewriter(p)  # what team B would get if nobody had sent the document before
    expected_b = document_form(await alone(exchange("b"), conversation(QUESTION_B), {}))
    shared = make_rewriter(p)
    form_a = document_form(await shared(exchange("a"), conversation(QUESTION_A), {}))
    rewrite_b = await shared(exchange("b"), conversation(QUESTION_B), {})
    assert form_a != expected_b and "volcano" in form_a and "honeybee" not in form_a
    assert document_form(rewrite_b) == expected_b and "honeybee" in expected_b
    assert source(rewrite_b) == "new"


async def test_a_new_conversation_of_the_same_team_is_compressed_for_its_question(
    tmp_path: Path, make_rewriter: Any
) -> None:
    rewriter = make_rewriter(policies(tmp_path))
    form_a = document_form(await rewriter(exchange("a"), conversation(QUESTION_A), {}))
    other = await rewriter(exchange("a"), conversation(QUESTION_B), {})
    assert source(other) == "new" and document_form(other) != form_a and "honeybee" in document_form(other)
    # The first conversation's next turn, with a new question, re-sends its first form.
    later = conversation(
        QUESTION_A, {"role": "assistant", "content": "Lava."}, {"role": "user", "content": QUESTION_B}
    )
    again = await rewriter(exchange("a"), later, {})
    assert document_form(again) == form_a and source(again) == "memo"


async def test_query_free_forms_are_shared_within_a_team_and_across_teams_only_when_asked(
    tmp_path: Path, make_rewriter: Any
) -> None:
    p = policies(tmp_path, compressor="truncate", options="{mode: middle, unit: line}")
    lines = "\n".join(f"line {i}: " + "word " * 12 for i in range(200))
    per_team = make_rewriter(p)
    first = await per_team(exchange("a"), conversation(QUESTION_A, documents=lines), {})
    same_team = await per_team(exchange("a"), conversation(QUESTION_B, documents=lines), {})
    other_team = await per_team(exchange("b"), conversation(QUESTION_B, documents=lines), {})
    assert document_form(same_team) == document_form(first) and source(same_team) == "memo"
    assert document_form(other_team) == document_form(first) and source(other_team) == "new"
    opted_in = make_rewriter(p, MemoConfig(shared_across_teams=True))
    await opted_in(exchange("a"), conversation(QUESTION_A, documents=lines), {})
    assert source(await opted_in(exchange("b"), conversation(QUESTION_B, documents=lines), {})) == "memo"


@pytest.mark.slow
async def test_embedding_vectors_cached_for_one_team_do_not_serve_another(
    tmp_path: Path, make_rewriter: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The engine tags each job with its team's scope, and a worker encodes under that scope only.
    The jobs the engine hands its worker pool (``WorkerPool.submit``, the pool's one entry) are run
    again here as a worker runs them (``run_job``), so this process's embedding cache shows what a
    worker's holds."""
    rewriter = make_rewriter(policies(tmp_path, options="{scorer: embedding}"))
    sent: list[Job] = []
    submit = WorkerPool.submit
    monkeypatch.setattr(WorkerPool, "submit", lambda pool, job: (sent.append(job), submit(pool, job))[1])
    await rewriter(exchange("a"), conversation(QUESTION_A), {})
    await rewriter(exchange("b"), conversation(QUESTION_B), {})
    assert [job.scope for job in sent] == ["memo:a", "memo:b"]
    loaded = Embedder()._loaded()
    loaded.cache.clear()
    compressors: dict[str, Any] = {}
    run_job(sent[0], compressors)
    scopes = {scope for scope, _ in loaded.cache}
    assert "memo:a" in scopes and "memo:b" not in scopes
    run_job(sent[1], compressors)
    team_b = {text for scope, text in loaded.cache if scope == "memo:b"}
    team_a = {text for scope, text in loaded.cache if scope == "memo:a"}
    assert team_a & team_b  # the same document units, encoded again for team B, not served from A's
