"""The tokens compressor with the selfinfo scorer, on real NQ passages and the GSM8K prompt."""

from __future__ import annotations

import itertools
import re
from collections import Counter

import pytest

from compressors.base import CompressorError, OptionsError, Target
from compressors.preserve import PreserveSpec
from compressors.registry import create
from compressors.tokenizer import tokenizer_for
from compressors.tokens import Tokens
from compressors.words import assemble, atomic_spans, segment

_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def _nq_prompt(row: dict[str, object]) -> tuple[str, str]:
    question = str(row["question"])
    ctxs = row["ctxs"]
    assert isinstance(ctxs, list)
    return f"Passage: {ctxs[0]['text']}\nQuestion: {question}", question


def test_registry_builds_tokens() -> None:
    assert isinstance(create("tokens", {"scorer": "selfinfo"}), Tokens)


@pytest.mark.parametrize(
    "options",
    [{"colour": "red"}, {"scorer": "magic"}, {"pooling": "median"}, {"window": "8"}, {"force_tokens": [""]}],
)
def test_bad_options_are_rejected_at_construction(options: dict[str, object]) -> None:
    with pytest.raises(OptionsError):
        Tokens(options)


def test_segmentation_rebuilds_the_text_byte_for_byte(nq_rows: list[dict[str, object]]) -> None:
    for row in nq_rows[:300]:
        text, _ = _nq_prompt(row)
        units = segment(text, atomic_spans(text))
        assert assemble(text, units, [True] * len(units)) == text
        gaps = [text[a.end : b.start] for a, b in itertools.pairwise(units)]
        assert all(not gap.strip() for gap in gaps)


@pytest.mark.slow
@pytest.mark.parametrize("rate", [0.5, 0.33])
def test_target_is_honoured_on_nq(nq_rows: list[dict[str, object]], rate: float) -> None:
    compressor = Tokens()
    tokenizer = tokenizer_for("gpt-4o")
    for row in nq_rows[:200]:
        text, question = _nq_prompt(row)
        result = compressor.compress(text, target=Target(rate=rate), query=question, model="gpt-4o")
        assert result.tokens_after == tokenizer.count(result.text)
        if result.target_met:
            assert result.tokens_after <= result.target_tokens * 1.05
        else:
            # Only the protected question can make the budget unreachable, and then it says so.
            assert "preserved" in result.note
            assert result.text.endswith(f"\n{question}") or result.text.endswith(f"Question: {question}")


def test_long_input_lands_within_five_percent_of_budget(nq_rows: list[dict[str, object]]) -> None:
    text = "\n\n".join(_nq_prompt(row)[0] for row in nq_rows[:120])
    result = Tokens().compress(text, target=Target(rate=0.4), model="gpt-4o")
    assert result.target_met
    assert abs(result.tokens_after - result.target_tokens) <= 0.05 * result.target_tokens
    assert result.text.count("\n") == text.count("\n")  # newlines are never dropped


def test_output_is_deterministic(nq_rows: list[dict[str, object]]) -> None:
    text, question = _nq_prompt(nq_rows[7])
    first = Tokens().compress(text, target=Target(rate=0.4), query=question)
    second = Tokens().compress(text, target=Target(rate=0.4), query=question)
    assert first.text.encode() == second.text.encode()
    assert first.decisions == second.decisions


@pytest.mark.slow
def test_question_line_and_query_words_survive(nq_rows: list[dict[str, object]]) -> None:
    for row in nq_rows[:100]:
        text, question = _nq_prompt(row)
        result = Tokens().compress(text, target=Target(rate=0.5), query=question, model="gpt-4o")
        # The question itself is protected; its "Question:" label is a label like any other.
        assert result.text.splitlines()[-1] in (question, f"Question: {question}")


def test_entities_and_dates_are_never_halved() -> None:
    text = (
        "The first Nobel Prize in Physics was awarded in 1901 to Wilhelm Conrad Röntgen, of Germany. "
        "Ludwig van Beethoven was baptised in Bonn on December 17, 1770 and wrote nine symphonies."
    )
    for rate in (0.3, 0.5, 0.7):
        out = Tokens().compress(text, target=Target(rate=rate), preserve=PreserveSpec.none()).text
        for whole in ("Wilhelm Conrad Röntgen", "Ludwig van Beethoven", "December 17, 1770"):
            parts = whole.replace(",", "").split()
            present = [p in out.replace(",", "").split() for p in parts]
            assert all(present) or not any(present), (whole, out)


def test_numbers_survive_whole_in_gsm8k(gsm8k_prompt: str) -> None:
    result = Tokens().compress(gsm8k_prompt, target=Target(rate=0.5), model="gpt-4o")
    assert result.target_met
    numbers_in = Counter(_NUMBER.findall(gsm8k_prompt))
    numbers_out = Counter(_NUMBER.findall(result.text))
    # No number is cut or glued to another: every number in the output was in the input.
    assert not numbers_out - numbers_in
    assert sum((numbers_in & numbers_out).values()) >= 0.95 * sum(numbers_in.values())
    for answer in re.findall(r"The answer is (\d+)", gsm8k_prompt):
        assert answer in numbers_out


def test_keep_tags_and_force_tokens_are_kept(nq_rows: list[dict[str, object]]) -> None:
    text, _ = _nq_prompt(nq_rows[3])
    tagged = f"<keep>Answer in one word, please.</keep> {text}"
    result = Tokens({"force_tokens": ["?", ","]}).compress(tagged, target=Target(rate=0.5))
    assert result.text.startswith("Answer in one word, please.")
    assert "<keep>" not in result.text
    assert result.text.count(",") == text.count(",") + 1


def test_unreachable_target_says_why() -> None:
    text = (
        "<keep>"
        + "Every word of this sentence must stay exactly as written here. " * 4
        + "</keep> and more words"
    )
    result = Tokens().compress(text, target=Target(max_tokens=5))
    assert not result.target_met
    assert "keep" in result.note
    assert result.text.startswith("Every word of this sentence must stay exactly as written here. " * 4)


def test_selfinfo_is_fast_enough_on_20k_tokens(nq_rows: list[dict[str, object]]) -> None:
    # A smoke check that a 20k-token input compresses at all; speed is measured in bench/.
    text = "\n".join(_nq_prompt(row)[0] for row in nq_rows[:150])
    result = Tokens().compress(text, target=Target(rate=0.3), model="gpt-4o")
    assert result.tokens_before > 15_000
    assert result.target_met


def test_wrong_kind_of_failure_is_wrapped() -> None:
    with pytest.raises(CompressorError, match="not available locally"):
        Tokens({"scorer": "llmlingua2", "model": "/nonexistent/llmlingua"}).compress(
            "some words to squeeze here", target=Target(rate=0.5)
        )


def test_long_inputs_explain_per_line_and_short_ones_per_unit(nq_rows: list[dict[str, object]]) -> None:
    short_text, question = _nq_prompt(nq_rows[5])
    short = Tokens().compress(short_text, target=Target(rate=0.5), query=question, model="gpt-4o")
    assert all(d.kind != "words" for d in short.decisions)
    assert any(d.kept for d in short.decisions) and any(not d.kept for d in short.decisions)
    long_text = "\n".join(_nq_prompt(row)[0] for row in nq_rows[:150])
    result = Tokens().compress(long_text, target=Target(rate=0.5), model="gpt-4o")
    units = segment(long_text, atomic_spans(long_text))
    assert {d.kind for d in result.decisions} == {"words"}
    assert len(long_text.splitlines()) <= len(result.decisions) < len(units) // 10
    assert [d.index for d in result.decisions] == list(range(len(result.decisions)))
    assert all(len(d.preview) <= 40 for d in result.decisions)
    # Every line group's tokens are counted once: together they are about the whole input.
    assert abs(sum(d.tokens for d in result.decisions) - result.tokens_before) <= 0.05 * result.tokens_before


def test_threads_get_the_same_output_as_one_caller(nq_rows: list[dict[str, object]]) -> None:
    from concurrent.futures import ThreadPoolExecutor

    compressor = Tokens()
    prompts = [_nq_prompt(row) for row in nq_rows[300:340]]

    def run(prompt: tuple[str, str]) -> str:
        return compressor.compress(prompt[0], target=Target(rate=0.4), query=prompt[1], model="gpt-4o").text

    alone = [run(p) for p in prompts]
    with ThreadPoolExecutor(max_workers=4) as pool:
        together = list(pool.map(run, prompts))
    assert together == alone


def test_without_a_query_the_trailing_question_is_the_query_and_is_kept() -> None:
    text = (
        "Passage: The Eiffel Tower was completed in 1889 for the World's Fair in Paris. It was designed "
        "by the engineering company of Gustave Eiffel, whose firm also built bridges.\n"
        "Question: who designed the eiffel tower"
    )
    result = Tokens().compress(text, target=Target(rate=0.6), model="gpt-4o")
    assert result.text.splitlines()[-1] in (
        "who designed the eiffel tower",
        "Question: who designed the eiffel tower",
    )
    assert "Gustave Eiffel" in result.text
    assert result.target_met


def test_edge_inputs_never_overshoot_silently() -> None:
    texts = [
        "",
        "   \n  \n",
        "!!!! ??? ...",
        "supercalifragilisticexpialidocious",
        "x" * 500,
        "a b c d e f g h",
    ]
    for text in texts:
        result = Tokens().compress(text, target=Target(rate=0.3), model="gpt-4o")
        assert result.text.count("\n") == text.count("\n")
        if result.tokens_after > result.target_tokens * 1.05:
            assert not result.target_met and "budget" in result.note
        else:
            assert result.target_met
