from __future__ import annotations

import json

import pytest

import evaldata
from compressors.units import split_units

needs_data = pytest.mark.evaldata(evaldata.NQ, evaldata.KV75, evaldata.QA_PROMPT, evaldata.KV_PROMPT)


def _nq_prompt(count: int) -> tuple[str, list[str], str]:
    rows = evaldata.nq_rows(count)
    docs = [
        f"Document [{i + 1}](Title: {r['ctxs'][0]['title']}) {r['ctxs'][0]['text']}"
        for i, r in enumerate(rows)
    ]
    template = evaldata.text(evaldata.QA_PROMPT)
    return (
        template.format(search_results="\n".join(docs), question=rows[0]["question"]),
        docs,
        rows[0]["question"],
    )


def _kv_prompt() -> tuple[str, dict[str, str]]:
    [row] = evaldata.kv_rows(1)
    records = row["ordered_kv_records"]
    body = "".join(
        ("{" if i == 0 else " ") + f'"{k}": "{v}"' + (",\n" if i != len(records) - 1 else "}")
        for i, (k, v) in enumerate(records)
    )
    template = evaldata.text(evaldata.KV_PROMPT)
    return template.format(formatted_kv_records=body, key=row["key"]), dict(records)


@needs_data
def test_documents_of_the_qa_prompt_leave_instruction_and_question_fixed() -> None:
    text, docs, question = _nq_prompt(20)
    layout = split_units(text)
    assert layout.kind == "documents"
    assert layout.units() == docs
    assert layout.prefix.startswith("Write a high-quality answer")
    assert layout.suffix == f"\n\nQuestion: {question}\nAnswer:"
    assert layout.render(range(20)) == text


@needs_data
def test_embedded_kv_json_splits_into_members_and_any_subset_stays_valid_json() -> None:
    text, records = _kv_prompt()
    layout = split_units(text)
    assert layout.kind == "json"
    assert len(layout.spans) == len(records) == 75
    subset = [3, 40, 74]
    rendered = layout.render(subset)
    block = rendered[rendered.index("{") : rendered.rindex("}") + 1]
    keys = list(records)
    assert json.loads(block) == {keys[i]: records[keys[i]] for i in subset}
    assert rendered.endswith("Corresponding value:\n") or rendered.rstrip().endswith("Corresponding value:")


def test_json_array_items_keep_their_own_formatting() -> None:
    text = '[\n  {"id": 1, "tags": ["a", "b"]},\n  {"id": 2, "note": "x, y]"},\n  {"id": 3}\n]'
    layout = split_units(text)
    assert layout.kind == "json"
    assert layout.units() == ['{"id": 1, "tags": ["a", "b"]}', '{"id": 2, "note": "x, y]"}', '{"id": 3}']
    assert json.loads(layout.render([0, 2])) == [{"id": 1, "tags": ["a", "b"]}, {"id": 3}]
    assert json.loads(layout.render([2, 0])) == [{"id": 3}, {"id": 1, "tags": ["a", "b"]}]


def test_single_wrapper_member_is_descended_into() -> None:
    text = json.dumps({"data": [{"n": i} for i in range(5)]}, indent=2)
    layout = split_units(text)
    assert len(layout.spans) == 5
    assert json.loads(layout.render([1, 4])) == {"data": [{"n": 1}, {"n": 4}]}


def test_markdown_sections_ignore_hash_lines_inside_code_fences() -> None:
    text = "Intro line\n\n# One\ntext\n```python\n# not a heading\nx = 1\n```\n## Two\nmore\n# Three\nend"
    layout = split_units(text)
    assert layout.kind == "sections"
    assert [unit.splitlines()[0] for unit in layout.units()] == ["# One", "## Two", "# Three"]
    assert layout.prefix == "Intro line\n\n"


def test_paragraphs_lines_and_sentences() -> None:
    text = "First para.\nstill first.\n\nSecond para.\n\n\nThird para. Has two sentences."
    assert split_units(text).units() == [
        "First para.\nstill first.",
        "Second para.",
        "Third para. Has two sentences.",
    ]
    assert split_units(text, "lines").units()[:2] == ["First para.", "still first."]
    assert split_units(text, "sentences").units()[-2:] == ["Third para.", "Has two sentences."]
    layout = split_units(text)
    assert layout.render([0, 2]) == "First para.\nstill first.\n\nThird para. Has two sentences."


def test_merged_joins_units_a_preserved_span_crosses() -> None:
    text = "a\nb\nc\nd"
    layout = split_units(text, "lines")
    merged = layout.merged([(2, 5)])  # covers "b\nc"
    assert merged.units() == ["a", "b\nc", "d"]
    assert layout.merged([(2, 3)]) is layout


def test_unknown_kind_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown unit kind"):
        split_units("x", "chapters")
