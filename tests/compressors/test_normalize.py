"""normalize: meaning-preserving clean-up."""

from __future__ import annotations

import json

import pytest

import evaldata
from compressors import OptionsError, PreserveSpec, Target, create, tokenizer_for
from compressors.preserve import find_spans

FULL = Target(rate=1.0)
PYDICOM = "swe-agent-traces/gpt4__pydicom-1458.traj"


def norm(text: str, **options: object) -> str:
    return create("normalize", options).compress(text, target=FULL).text


def test_whitespace_runs_trailing_spaces_and_blank_lines() -> None:
    text = "Hello    world,   again.   \n\n\n\n\nNext\tline  \n\n\nkept two blanks"
    assert norm(text) == "Hello world, again.\n\nNext\tline\n\n\nkept two blanks"


def test_leading_indentation_and_code_blocks_untouched() -> None:
    text = "Intro\n    indented   prose keeps   its indent\n```python\ndef f():   \n    x  =  1\n```\n"
    assert norm(text) == "Intro\n    indented prose keeps its indent\n```python\ndef f():\n    x  =  1\n```\n"


def test_spaces_inside_quotes_and_inline_code_stay() -> None:
    text = 'Say "a    b" and `x    y`   now'
    assert norm(text) == 'Say "a    b" and `x    y` now'


def test_whole_text_json_minified_in_key_order() -> None:
    doc = {"zeta": 1, "alpha": [1, 2, {"b": "caf\u00e9  x"}], "n": None}
    out = norm(json.dumps(doc, indent=4))
    assert out == '{"zeta":1,"alpha":[1,2,{"b":"caf\u00e9  x"}],"n":null}'
    assert list(json.loads(out)) == ["zeta", "alpha", "n"]


def test_embedded_and_fenced_json_minified() -> None:
    text = 'Body:\n{\n  "a": 1,\n  "b": [1, 2]\n}\nand\n```json\n{\n  "c": true\n}\n```\n'
    assert norm(text) == 'Body:\n{"a":1,"b":[1,2]}\nand\n```json\n{"c":true}\n```\n'


def test_json_that_would_not_round_trip_is_left() -> None:
    dup = '{\n  "a": 1,\n  "a": 2\n}'
    assert norm(dup) == dup
    assert norm('{\n  "a": 1,\n}') == '{\n  "a": 1,\n}'
    assert norm('{"a": 1}', minify_json=False) == '{"a": 1}'


def test_repeated_lines_and_blocks_collapse_with_a_count() -> None:
    text = "start\n" + "same line\n" * 38 + "a\nb\n" * 3 + "end"
    out = norm(text)
    assert out == (
        'start\nsame line\n[37 lines like "same line" omitted; lines=3-39]\n'
        'a\nb\n[4 lines like "a" omitted; lines=42-45]\nend'
    )
    assert norm("x\nx\ny", min_repeat=3) == "x\nx\ny"


def test_log_runs_collapse_to_first_count_last() -> None:
    lines = [f"2024-01-01 12:00:{i:02d} INFO request {i} took {i * 3}ms id=3ea751c{i}" for i in range(12)]
    out = norm("boot\n" + "\n".join(lines) + "\ndone").split("\n")
    marker = f'[10 lines like "{lines[1]}" omitted; lines=3-12]'
    assert out == ["boot", lines[0], marker, lines[-1], "done"]
    # number tables without words are data, not logs
    table = "\n".join(f"| {i} | {i * i} |" for i in range(10))
    assert norm(table) == table
    assert norm("\n".join(lines), collapse_logs=False) == "\n".join(lines)


def test_decisions_report_what_went() -> None:
    result = create("normalize").compress("a\n" + "dup\n" * 5 + "z", target=FULL)
    (decision,) = result.decisions
    assert (decision.index, decision.kept, decision.kind) == (2, False, "lines")
    assert decision.reason == "previous line repeated 4 more times"
    assert decision.tokens == tokenizer_for(None).count("dup\ndup\ndup\ndup")
    assert len(decision.preview) <= 40


def test_target_reported_not_chased() -> None:
    text = "A sentence with nothing to clean up at all."
    result = create("normalize").compress(text, target=Target(rate=0.5), model="gpt-4o")
    assert result.text == text
    assert not result.target_met
    assert result.note.startswith("normalize is lossless")
    met = create("normalize").compress("x  " * 100, target=Target(rate=0.9))
    assert met.target_met and met.tokens_after < met.tokens_before


@pytest.mark.parametrize(
    "options", [{"min_repeat": 1}, {"min_log_run": 2}, {"bogus": 1}, {"minify_json": "yes"}]
)
def test_bad_options_rejected(options: dict[str, object]) -> None:
    with pytest.raises(OptionsError):
        create("normalize", options)


@pytest.mark.evaldata(PYDICOM)
def test_swe_agent_trace_shrinks_and_keeps_code_and_paths() -> None:
    text = "\n\n".join(str(m["content"]) for m in evaldata.agent_messages(PYDICOM))
    compressor = create("normalize")
    result = compressor.compress(text, target=Target(rate=0.9), model="gpt-4o")
    assert result.tokens_after < result.tokens_before
    assert compressor.compress(text, target=Target(rate=0.9), model="gpt-4o").text == result.text
    spec = PreserveSpec(frozenset({"code", "paths", "urls"}))
    spans = find_spans(text, spec)
    assert len(spans) > 50
    for span in spans:
        # code, paths and URLs survive, up to line endings and trailing spaces
        piece = text[span.start : span.end].replace("\r\n", "\n")
        assert "\n".join(line.rstrip() for line in piece.split("\n")) in result.text
