from __future__ import annotations

import json
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import evaldata
from compressors.base import CompressorError, OptionsError, Target
from compressors.embedding import DEFAULT_MODEL_SHA256, default_model_path
from compressors.preserve import CATEGORIES, PreserveSpec
from compressors.registry import create
from compressors.relevance import Relevance
from compressors.tokenizer import tokenizer_for

needs_data = pytest.mark.evaldata(evaldata.NQ, evaldata.KV75, evaldata.QA_PROMPT, evaldata.KV_PROMPT)
NO_JSON = PreserveSpec.parse([c for c in CATEGORIES if c != "json"])
# The embedding's time cap sizes work to this machine's measured speed: under load it binds, and
# later calls (with a slower estimate) read fewer windows than the first. Tests of determinism
# and thread safety turn it off; the cap has its own tests (test_rerank.py).
UNCAPPED = {"embed_ms_per_1k": 0}


def _qa_prompt(rows: list[dict], question_row: int, doc_rows: list[int]) -> tuple[str, str]:
    """A qa.prompt with the question of ``question_row`` over the passages of ``doc_rows``."""
    lines = [
        f"Document [{i + 1}](Title: {rows[r]['ctxs'][0]['title']}) {rows[r]['ctxs'][0]['text']}"
        for i, r in enumerate(doc_rows)
    ]
    template = evaldata.text(evaldata.QA_PROMPT)
    gold = lines[doc_rows.index(question_row)]
    return template.format(search_results="\n".join(lines), question=rows[question_row]["question"]), gold


def _kv_prompt(index: int) -> tuple[str, str]:
    row = evaldata.kv_rows(index + 1)[index]
    records = row["ordered_kv_records"]
    body = "".join(
        ("{" if i == 0 else " ") + f'"{k}": "{v}"' + (",\n" if i != len(records) - 1 else "}")
        for i, (k, v) in enumerate(records)
    )
    template = evaldata.text(evaldata.KV_PROMPT)
    return template.format(formatted_kv_records=body, key=row["key"]), f'"{row["key"]}": "{row["value"]}"'


def _kept_documents(text: str) -> list[int]:
    return [int(n) for n in re.findall(r"^Document \[(\d+)\]", text, re.MULTILINE)]


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return evaldata.nq_rows()


@needs_data
@pytest.mark.parametrize("scorer", ["hybrid", "embedding", "bm25"])
def test_gold_passage_survives_among_twenty_and_question_stays(rows: list[dict], scorer: str) -> None:
    compressor = Relevance({"scorer": scorer})
    for question in range(40, 60):
        doc_rows = [*range(question - 10, question), *range(question + 1, question + 11)][:19]
        doc_rows.insert(question % 20, question)
        prompt, gold = _qa_prompt(rows, question, doc_rows)
        result = compressor.compress(prompt, target=Target(rate=0.25), model="gpt-4o")
        assert gold in result.text
        assert result.text.startswith("Write a high-quality answer for the given question")
        assert result.text.endswith(f"Question: {rows[question]['question']}\nAnswer:")
        assert result.target_met and result.tokens_after <= result.target_tokens  # type: ignore[operator]
        kept = _kept_documents(result.text)
        assert kept == sorted(kept) and 2 <= len(kept) < 20


@needs_data
def test_reorder_ends_puts_the_best_first_and_second_best_last(rows: list[dict]) -> None:
    prompt, gold = _qa_prompt(rows, 7, list(range(20)))
    result = Relevance({"reorder": "ends"}).compress(prompt, target=Target(rate=0.5))
    ranked = sorted((d for d in result.decisions if d.kept), key=lambda d: (-(d.score or 0.0), d.index))
    kept = _kept_documents(result.text)
    assert kept[0] == ranked[0].index + 1 and kept[-1] == ranked[1].index + 1
    assert sorted(kept) == sorted(d.index + 1 for d in ranked)
    assert gold.split(")", 1)[0] in result.text.split("\n")[2]  # the gold is the most relevant: first


@pytest.mark.slow
@needs_data
def test_target_is_honoured_within_five_percent_on_fine_units(rows: list[dict]) -> None:
    prompt, _ = _qa_prompt(rows, 3, list(range(60)))
    tokenizer = tokenizer_for("gpt-4")
    for rate in (0.5, 0.2, 0.1):
        result = Relevance({"units": "sentences"}).compress(prompt, target=Target(rate=rate), model="gpt-4")
        assert result.target_tokens is not None
        assert 0.95 * result.target_tokens <= result.tokens_after <= result.target_tokens
        assert tokenizer.count(result.text) == result.tokens_after
    capped = Relevance().compress(prompt, target=Target(max_tokens=800), model="gpt-4")
    assert 760 <= capped.tokens_after <= 800


@needs_data
def test_output_is_byte_identical_across_calls_and_instances(rows: list[dict]) -> None:
    prompt, _ = _qa_prompt(rows, 11, list(range(30)))
    first = Relevance({"scorer": "hybrid", **UNCAPPED}).compress(prompt, target=Target(rate=0.3))
    second = Relevance({"scorer": "hybrid", **UNCAPPED}).compress(prompt, target=Target(rate=0.3))
    assert first.text.encode() == second.text.encode()
    assert first.decisions == second.decisions


@needs_data
def test_concurrent_calls_from_threads_agree(rows: list[dict]) -> None:
    prompts = [_qa_prompt(rows, q, list(range(q, q + 20)))[0] for q in range(100, 108)]
    compressor = Relevance(UNCAPPED)
    expected = [compressor.compress(p, target=Target(rate=0.25)).text for p in prompts]
    with ThreadPoolExecutor(max_workers=4) as pool:
        got = list(pool.map(lambda p: compressor.compress(p, target=Target(rate=0.25)).text, prompts))
    assert got == expected


@needs_data
def test_kv_gold_pair_survives_and_json_stays_valid() -> None:
    for index in range(10):
        prompt, gold = _kv_prompt(index)
        result = Relevance().compress(prompt, target=Target(rate=0.1), preserve=NO_JSON)  # as a policy may
        assert gold in result.text
        block = result.text[result.text.index("{") : result.text.rindex("}") + 1]
        members = json.loads(block)
        assert 1 <= len(members) < 75
        assert result.text.rstrip().endswith("Corresponding value:")
        assert result.target_met


@needs_data
def test_default_preserve_selects_json_members_whole_and_keeps_the_block_valid() -> None:
    prompt, gold = _kv_prompt(0)
    result = Relevance().compress(prompt, target=Target(rate=0.1))  # default preserve includes json
    assert result.target_met and gold in result.text
    original = json.loads(prompt[prompt.index("{") : prompt.rindex("}") + 1])
    kept = json.loads(result.text[result.text.index("{") : result.text.rindex("}") + 1])
    assert 1 <= len(kept) < len(original)
    assert all(original[key] == value for key, value in kept.items())
    # Each kept member is the original's bytes: nothing inside a member was touched.
    members = [f"{json.dumps(key)}: {json.dumps(value)}" for key, value in kept.items()]
    assert all(member in prompt and member in result.text for member in members)


def test_a_json_block_inside_other_units_stays_whole() -> None:
    block = json.dumps({"build": {"steps": [f"step {i}" for i in range(30)], "status": "failed"}}, indent=2)
    paragraphs = [f"Paragraph {i} is about gardening and tomatoes in spring." for i in range(12)]
    paragraphs[5] = "The build log follows.\n" + block
    text = "\n\n".join(paragraphs) + "\n\nQuestion: what status did the build steps end in?"
    result = Relevance({"scorer": "bm25", "units": "paragraphs"}).compress(text, target=Target(rate=0.8))
    assert block in result.text  # the most relevant paragraph, its JSON whole
    assert result.text.count("Paragraph") < 11
    assert result.text.endswith("Question: what status did the build steps end in?")


def test_query_line_survives_when_it_is_a_unit() -> None:
    lines = [f"Line {i}: the weather in city {i} is mild and pleasant today." for i in range(30)]
    lines.insert(12, "Which city has a volcano erupting?")
    lines[25] = "Line 25: a volcano is erupting near city 25."
    text = "\n".join(lines)
    result = Relevance({"units": "lines"}).compress(text, target=Target(rate=0.15))
    assert "Which city has a volcano erupting?" in result.text
    assert "Line 25: a volcano is erupting near city 25." in result.text


def test_keep_tag_forces_its_unit_and_tags_are_removed() -> None:
    paragraphs = [f"Paragraph {i} talks about gardening and tomatoes." for i in range(10)]
    paragraphs[3] = "<keep>Paragraph 3 holds the license text.</keep>"
    text = "\n\n".join(paragraphs) + "\n\nQuestion: how do tomatoes grow?"
    result = Relevance().compress(text, target=Target(rate=0.3))
    assert "Paragraph 3 holds the license text." in result.text
    assert "<keep>" not in result.text
    assert result.text.endswith("Question: how do tomatoes grow?")


def test_without_a_query_the_head_is_kept_and_the_note_says_so() -> None:
    text = "\n\n".join(f"Paragraph number {i} about nothing in particular." for i in range(20))
    result = Relevance({"scorer": "bm25"}).compress(text, target=Target(rate=0.25))
    assert result.text.startswith("Paragraph number 0 ")
    assert "no query" in result.note


def test_explicit_query_beats_the_text() -> None:
    text = "\n\n".join(
        ["Apples are red fruit.", "Bananas are yellow.", "Cherries are small.", "Dates are sweet."]
    )
    result = create("relevance", {"scorer": "bm25"}).compress(
        text, target=Target(max_tokens=6), query="bananas"
    )
    assert result.text == "Bananas are yellow."


def test_unknown_and_invalid_options_are_rejected_at_construction() -> None:
    with pytest.raises(OptionsError, match="unknown option"):
        Relevance({"scorers": "bm25"})
    with pytest.raises(OptionsError, match="scorer must be"):
        Relevance({"scorer": "tfidf"})
    with pytest.raises(OptionsError, match="alpha"):
        Relevance({"alpha": 1.5})
    with pytest.raises(OptionsError, match="model_sha256"):
        Relevance({"model_sha256": "abc"})
    with pytest.raises(OptionsError, match="embed_ms_per_1k must be >= 0"):
        Relevance({"embed_ms_per_1k": -1})
    with pytest.raises(OptionsError, match="embed_min_ms must be >= 0"):
        Relevance({"embed_min_ms": -5})
    with pytest.raises(OptionsError, match="embed_ms_per_1k"):
        Relevance({"embed_ms_per_1k": "fast"})


@pytest.mark.slow
def test_a_local_model_copy_works_and_a_tampered_one_is_refused(tmp_path: Path) -> None:
    copy = tmp_path / "minilm"
    shutil.copytree(default_model_path(), copy)
    text = "Question: where do penguins live?\n\n" + "\n\n".join(
        [
            "Penguins live in Antarctica and the southern hemisphere.",
            "Stock markets fell today.",
            "Rust 1.80.",
        ]
    )
    good = Relevance({"model": str(copy), "model_sha256": DEFAULT_MODEL_SHA256, "scorer": "embedding"})
    result = good.compress(text, target=Target(max_tokens=25), query="where do penguins live?")
    assert "Penguins live in Antarctica" in result.text
    bad = tmp_path / "tampered"  # a model loads once per process: tamper with another copy
    shutil.copytree(default_model_path(), bad)
    weights = bad / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    tampered = Relevance({"model": str(bad), "model_sha256": DEFAULT_MODEL_SHA256, "scorer": "embedding"})
    with pytest.raises(CompressorError, match="sha256 mismatch"):
        tampered.compress(text, target=Target(max_tokens=25))
