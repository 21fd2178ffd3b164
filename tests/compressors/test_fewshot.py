"""Few-shot prompts: template lines kept by ``tokens``, and the coarse-to-fine ``examples: select`` mode."""

from __future__ import annotations

import re

import pytest

import evaldata
from compressors.base import OptionsError, Target
from compressors.templates import demonstrations, template_openings, template_spans
from compressors.tokenizer import tokenizer_for
from compressors.tokens import Tokens

needs_data = pytest.mark.evaldata(evaldata.GSM8K_PROMPT)
NEW_QUESTION = (
    "Question: A baker makes 24 muffins a day and sells them in boxes of 4 for $6 a box. "
    "How much does she earn in a week?\nLet's think step by step"
)
ANSWER_LINE = re.compile(r"^The answer is (\d+)$", re.MULTILINE)


@pytest.fixture(scope="module")
def fewshot() -> str:
    return evaldata.text(evaldata.GSM8K_PROMPT).rstrip() + f"\n\n{NEW_QUESTION}\n"


@needs_data
def test_the_recurring_lines_of_the_examples_are_found(fewshot: str) -> None:
    openings = template_openings(fewshot)
    assert {"Question:", "Let's think step by step", "The answer is"} <= openings
    spans = [fewshot[a:b] for a, b in template_spans(fewshot)]
    assert spans.count("Let's think step by step") == 9
    assert "The answer is 115" in spans  # the short value after an opening belongs to it
    assert len(demonstrations(fewshot)) == 9


def test_prose_without_repeated_lines_has_no_template() -> None:
    text = "The sky is blue.\nGrass is green.\n\nWater is wet.\nFire is hot.\n\nSnow is cold.\nSand is dry.\n"
    assert template_spans(text) == []
    assert demonstrations(text) == []


@needs_data
def test_answer_lines_and_the_new_question_survive_half_the_tokens(fewshot: str) -> None:
    answers = ANSWER_LINE.findall(evaldata.text(evaldata.GSM8K_PROMPT))
    result = Tokens().compress(fewshot, target=Target(rate=0.5), model="gpt-4o")
    assert ANSWER_LINE.findall(result.text) == answers
    assert result.text.count("Let's think step by step") == 9
    assert result.text.rstrip().endswith(NEW_QUESTION)
    assert result.target_met


@needs_data
def test_select_keeps_whole_examples_at_one_twentieth(fewshot: str) -> None:
    count = tokenizer_for("gpt-4o").count
    demos = evaldata.text(evaldata.GSM8K_PROMPT).rstrip()
    budget = round(count(demos) / 20) + count(f"\n\n{NEW_QUESTION}\n")
    result = Tokens({"examples": "select"}).compress(
        fewshot, target=Target(max_tokens=budget), model="gpt-4o"
    )
    examples = re.split(r"\n\n(?=Question:)", result.text.rstrip())
    assert examples[-1] == NEW_QUESTION
    assert len(examples) >= 2
    for example in examples[:-1]:  # every kept example whole: question, reasoning, answer line
        assert example.startswith("Question: ")
        assert "\nLet's think step by step\n" in example
        assert ANSWER_LINE.search(example)
    dropped = [d for d in result.decisions if d.kind == "demonstration" and not d.kept]
    assert len(dropped) == 8 - (len(examples) - 1)
    assert "demonstrations whole" in result.note
    assert result.tokens_after <= budget * 1.05


@pytest.mark.parametrize("options", [{"examples": "all"}, {"inner": 0}, {"inner": 1.5}])
def test_bad_fewshot_options_are_rejected(options: dict[str, object]) -> None:
    with pytest.raises(OptionsError):
        Tokens(options)
