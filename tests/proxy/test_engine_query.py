"""The query question-aware compressors get, and the spans kept verbatim around it."""

from __future__ import annotations

import re

import pytest

import evaldata
from compressors.base import Target
from compressors.registry import create
from proxy.apis import CHAT, COMPLETIONS
from proxy.policy.model import QuerySpec, Step
from proxy.policy.query import final_question, plan_query
from proxy.policy.steps import run_steps

needs_evaldata = pytest.mark.evaldata(evaldata.NQ, evaldata.KV75, evaldata.QA_PROMPT, evaldata.KV_PROMPT)


def kv_prompt() -> tuple[str, str, str]:
    [row] = evaldata.kv_rows(1)
    records = "{" + ", ".join(f'"{k}": "{v}"' for k, v in row["ordered_kv_records"]) + "}"
    template = evaldata.text(evaldata.KV_PROMPT)
    return template.format(formatted_kv_records=records, key=row["key"]), row["key"], row["value"]


@needs_evaldata
def test_key_line_of_the_kv_retrieval_prompt_is_the_query() -> None:
    prompt, key, _ = kv_prompt()
    question, start, end = final_question(prompt) or ("", 0, 0)
    assert question == f'"{key}"'
    assert prompt[start:end].rstrip() == f'Key: "{key}"\nCorresponding value:'


def test_last_sentence_with_a_question_mark_and_its_line() -> None:
    text = "Here is the log.\n\n" + "error line\n" * 50 + "\nCan you tell me why it fails? Thanks."
    question, start, end = final_question(text) or ("", 0, 0)
    assert question == "Can you tell me why it fails?"
    assert text[start:end] == "Can you tell me why it fails? Thanks."


def test_other_parts_use_the_last_user_message_as_query() -> None:
    body = {
        "messages": [
            {"role": "user", "content": "First question?"},
            {"role": "assistant", "content": "a long answer"},
            {"role": "user", "content": "Which file holds the bug?"},
        ]
    }
    parts = CHAT.parts(body)
    assert plan_query(QuerySpec(), parts, parts[1]).query == "Which file holds the bug?"
    assert plan_query(QuerySpec(), parts, parts[1]).keep == ()
    # A question that is the whole message is not a question: nothing would be left to compress.
    own = plan_query(QuerySpec(), parts, parts[2])
    assert own.query is None and own.keep == ()


def test_an_opening_question_keeps_its_line_and_a_long_line_only_its_question() -> None:
    log = "\n".join(f"step {i}: ok" for i in range(30))
    text = f"Why does the build fail? It worked yesterday.\n\n{log}"
    question, start, end = final_question(text) or ("", 0, 0)
    assert question == "Why does the build fail?"
    assert text[start:end] == "Why does the build fail? It worked yesterday."
    docs = " ".join(f"Document [{i}](Title: T{i}) Town {i} has {i} mills." for i in range(200))
    line = f"Question: which town has 7 mills? Answer from these. {docs}"
    question, start, end = final_question(line) or ("", 0, 0)
    assert question == "which town has 7 mills?" and line[start:end] == "Question: which town has 7 mills?"


def test_pattern_query_from_the_newest_matching_part() -> None:
    spec = QuerySpec(kind="pattern", pattern=re.compile(r"^Topic: (.*)$", re.MULTILINE))
    body = {
        "messages": [{"role": "system", "content": "Topic: billing"}, {"role": "user", "content": "docs"}]
    }
    parts = CHAT.parts(body)
    assert plan_query(spec, parts, parts[1]).query == "billing"


@needs_evaldata
def test_kept_spans_survive_byte_for_byte_around_compression() -> None:
    rows = evaldata.nq_rows(20)
    prompt = evaldata.qa_prompt([evaldata.document(r, i) for i, r in enumerate(rows)], rows[3]["question"])
    parts = COMPLETIONS.parts({"prompt": prompt})
    plan = plan_query(QuerySpec(), parts, parts[0])
    step = Step("truncate", create("truncate", {"mode": "head"}), Target(rate=0.3), None)
    out, _, traces = run_steps(
        [(step, step.compressor)], prompt, plan=plan, model=None, max_model_chars=50_000
    )
    head = prompt.split("\n\n")[0] + "\n\n"
    assert out.startswith(head) and out.endswith(f"Question: {rows[3]['question']}\nAnswer:")
    assert len(out) < 0.5 * len(prompt)
    [trace] = traces
    assert trace.tokens_after < 0.5 * trace.tokens_before
