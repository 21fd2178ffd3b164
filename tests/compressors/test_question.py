"""The one question finder: what counts as the question of a prompt, and its bounds."""

from __future__ import annotations

import time

import pytest

from compressors.base import Target
from compressors.question import MAX_QUESTION_TOKENS, find_question, query_of
from compressors.relevance import Relevance, derive_query
from compressors.tokens import Tokens
from compressors.units import split_units

PASSAGES = "\n".join(
    f"Document [{i}](Title: Town {i}) Town {i} lies on river {i} and has {i * 1000} people."
    for i in range(1, 31)
)
KV = '{"a1b2": "v1", "c3d4": "v2", "e5f6": "v3"}'


@pytest.mark.parametrize("label", ["Question", "question", "Query", "KEY"])
def test_a_final_label_line_with_a_short_trailer_is_the_question(label: str) -> None:
    text = f"Context one.\n\nContext two.\n\n{label}: where is the bug\nAnswer:"
    found = find_question(text)
    assert found is not None and found.final
    assert found.text == "where is the bug"
    assert text[found.start : found.end] == f"{label}: where is the bug"


def test_relevance_and_tokens_take_the_same_key_line_as_their_query() -> None:
    text = f'Extract the value of the key.\n\nJSON data:\n{KV}\n\nKey: "c3d4"\nCorresponding value:'
    assert query_of(text) == '"c3d4"'
    match = derive_query(text, split_units(text))
    assert match is not None and match.text == '"c3d4"'
    # tokens keeps its derived query verbatim: the asked key survives a hard cut
    out = Tokens({"scorer": "selfinfo"}).compress(text, target=Target(rate=0.1), model="gpt-4o")
    assert '"c3d4"' in out.text


def test_a_label_line_followed_by_a_long_text_is_not_final() -> None:
    text = "Question: how many legs?\nLet's think step by step\n" + "a step\n" * 8 + "The answer is 4"
    assert find_question(text) is None
    few_shot = text + "\n\n" + text.replace("legs", "arms")
    assert find_question(few_shot) is None  # a few-shot prompt asks no question of its own


def test_a_final_sentence_ending_in_a_question_mark() -> None:
    text = "Here is the log.\n\n" + "error line\n" * 50 + "\nCan you tell me why it fails? Thanks."
    found = find_question(text)
    assert found is not None and found.final and found.text == "Can you tell me why it fails?"
    assert find_question("Some context here. Which river flows through Paris??") is not None


def test_a_question_mark_inside_a_title_or_quote_is_not_a_question() -> None:
    text = 'The band played "Who\'s on First?" numerous times on radio, and the song "Why?", later too.'
    assert find_question(text) is None


def test_an_opening_question_above_pasted_material() -> None:
    log = "\n".join(f"line {i}: ok" for i in range(40))
    text = f"Why does the build fail? It worked yesterday.\n\n{log}"
    found = find_question(text)
    assert found is not None and not found.final
    assert found.text == "Why does the build fail?"
    assert text[found.start : found.end] == "Why does the build fail?"
    assert text[found.start : found.line_end(text)] == "Why does the build fail? It worked yesterday."


def test_a_question_that_is_the_whole_text_is_not_a_question() -> None:
    assert find_question("Which file holds the bug?") is None
    assert find_question("  Question: where is the bug\nAnswer:\n") is None
    assert find_question("") is None


def test_a_question_longer_than_the_bound_is_not_a_question() -> None:
    words = " ".join(f"word{i}" for i in range(MAX_QUESTION_TOKENS))
    assert find_question(f"{PASSAGES}\n\nQuestion: {words}\nAnswer:") is None
    short = f"{PASSAGES}\n\nQuestion: which town has 3000 people\nAnswer:"
    assert query_of(short) == "which town has 3000 people"


def test_a_long_one_line_question_message_yields_its_first_question_sentence() -> None:
    line = "Question: which town has 3000 people? Answer from these. " + PASSAGES.replace("\n", " ")
    found = find_question(line)
    assert found is not None and not found.final
    assert found.text == "which town has 3000 people?"
    assert line[found.start : found.end] == "Question: which town has 3000 people?"
    # a short line is all question: nothing else to compress
    assert find_question("Question: which town has 3000 people? Answer from the list.") is None


def test_relevance_without_a_given_query_ranks_by_the_long_lines_question() -> None:
    line = "Question: which town has 3000 people? Answer from these. " + PASSAGES.replace("\n", " ")
    out = Relevance({"scorer": "bm25", "units": "sentences"}).compress(line, target=Target(max_tokens=40))
    assert out.text.startswith("Question: which town has 3000 people?")
    assert "3000 people" in out.text.split("?", 1)[1]


def test_the_finder_is_linear_on_huge_texts() -> None:
    cases = ["x" * 200_000, "why? " * 40_000, ("a" * 5000 + "?\n") * 40, "Question: " + "y " * 100_000]
    for text in cases:
        started = time.perf_counter()
        find_question(text, anywhere=True)
        assert time.perf_counter() - started < 0.5  # a quadratic scan takes minutes here
