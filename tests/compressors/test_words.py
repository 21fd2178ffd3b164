"""Word units: segmentation rebuilds real text byte for byte, atomic spans stay whole, reassembly."""

from __future__ import annotations

import itertools
import re

import pytest

import evaldata
from compressors.words import Unit, Units, assemble, atomic_spans, segment


@pytest.fixture(scope="module")
def tool_output() -> str:
    """Real coding-agent tool output: code, paths, indentation, numbers glued to punctuation."""
    texts: list[str] = []
    for trace in sorted(evaldata.TRACES):
        texts += [str(m["content"]) for m in evaldata.agent_messages(trace) if m["role"] in ("tool", "user")]
    return "\n\n".join(texts)


@pytest.mark.evaldata(*evaldata.TRACES)
def test_units_rebuild_real_tool_output_byte_for_byte(tool_output: str) -> None:
    units = segment(tool_output, atomic_spans(tool_output))
    assert len(units) > 5000
    assert assemble(tool_output, units, [True] * len(units)) == tool_output
    gaps = [tool_output[a.end : b.start] for a, b in itertools.pairwise(units)]
    assert all(not gap.strip() for gap in gaps)  # only whitespace between units


@pytest.mark.evaldata(*evaldata.TRACES)
def test_units_is_a_sequence_of_unit(tool_output: str) -> None:
    units = segment(tool_output[:5000])
    assert isinstance(units, Units)
    listed = list(units)
    assert len(listed) == len(units)
    assert units[3] == listed[3] and units[-1] == listed[-1]
    assert units[2:5] == listed[2:5]
    assert {u.kind for u in listed} <= {"word", "number", "punct"}
    assert all(tool_output[u.start : u.end].strip() for u in listed)


def test_atomic_spans_are_single_units_and_cutting_spans_widen_to_whole_words() -> None:
    text = "Ludwig van Beethoven was baptised in Bonn on December 17, 1770; it cost $5 million."
    units = segment(text, atomic_spans(text))
    pieces = [text[u.start : u.end] for u in units if u.kind == "atomic"]
    assert pieces == ["Ludwig van Beethoven", "December 17, 1770", "$5 million"]
    # A span that starts and ends inside words holds the whole words.
    cut = segment(text, [(text.index("aptised"), text.index("n Bonn") + 3)])
    assert [text[u.start : u.end] for u in cut if u.kind == "atomic"] == ["baptised in Bonn"]


def test_overlapping_widened_spans_merge_into_one_unit() -> None:
    text = "alpha beta gamma delta"
    units = segment(text, [(2, 8), (8, 13)])  # "pha be" and "ta ga": widened, they share "beta"
    assert [(u.kind, text[u.start : u.end]) for u in units] == [
        ("atomic", "alpha beta gamma"),
        ("word", "delta"),
    ]


def test_dates_need_a_real_month_and_a_word_boundary() -> None:
    text = "Sunday 12, 2018 and 123 May 2018 and X2018-05-18 but 18 May 2018 and 2018-05-18."
    spans = [text[a:b] for a, b in atomic_spans(text)]
    assert "Sunday 12, 2018" not in spans
    assert "May 2018" in spans  # found inside "123 May 2018", the "23" cannot start a date
    assert "18 May 2018" in spans and "2018-05-18" in spans
    assert "X2018-05-18" not in spans


def test_dropped_units_leave_one_space_and_every_newline() -> None:
    text = "def f(x):\n    return x * 2  # double\n\n\nprint(f(21))"
    units = segment(text)
    kept = [text[u.start : u.end] not in ("#", "double", "*") for u in units]
    out = assemble(text, units, kept)
    assert out.count("\n") == text.count("\n")
    assert "  " not in out.replace("\n    ", "\n")
    assert "x 2" in out  # "x" and "2" are not glued together


def test_no_number_is_glued_or_cut() -> None:
    text = "25*2= 50 and 120 / 60 = 2, then 3-4 items"
    units = segment(text, atomic_spans(text))
    for keep_every in (2, 3):
        out = assemble(text, units, [i % keep_every == 0 for i in range(len(units))])
        numbers_in = set(re.findall(r"\d+", text))
        assert set(re.findall(r"\d+", out)) <= numbers_in


def test_plain_units_carry_their_kind() -> None:
    text = "Costs $5, or 3.5% (not 4)!"
    units = segment(text)
    assert [(text[u.start : u.end], u.kind) for u in units] == [
        ("Costs", "word"),
        ("$5", "number"),
        (",", "punct"),
        ("or", "word"),
        ("3.5%", "number"),
        ("(", "punct"),
        ("not", "word"),
        ("4", "number"),
        (")", "punct"),
        ("!", "punct"),
    ]
    assert units[0] == Unit(0, 5, "word")


def test_hyphen_and_slash_compounds_are_one_unit() -> None:
    # Dropping the "-" of "3-phosphoglycerate" leaves "3 phosphoglycerate", a different string to a reader.
    text = "It makes 3-phosphoglycerate, runs 12.9-kilometre laps at 54 Mbit/s for Road/Track but 25 - 2 stays apart."
    pieces = [text[u.start : u.end] for u in segment(text)]
    for whole in ("3-phosphoglycerate", "12.9-kilometre", "Mbit/s", "Road/Track"):
        assert whole in pieces, pieces
    assert "-" in pieces and "25" in pieces and "2" in pieces
