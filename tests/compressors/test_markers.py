"""The one marker grammar: written by format_marker, read back by find_markers."""

from __future__ import annotations

import json

import pytest

from compressors import Target, create
from compressors.markers import MARKER_RE, Marker, example_of, find_markers, format_marker, line_ranges

REF = "0123456789abcdef01234567"


def test_the_contract_examples_parse() -> None:
    text = (
        'before\n[912 lines like "tests/test_app.py::test_get PASSED" omitted; lines=12-923; '
        f"hash={REF}]\nafter"
    )
    [(start, end, marker)] = find_markers(text)
    assert text[start:end].startswith("[912 lines") and text[end:] == "\nafter"
    assert marker == Marker(912, "lines", "tests/test_app.py::test_get PASSED", ((12, 923),), None, REF)


def test_format_then_parse_round_trips_every_field() -> None:
    marker = Marker(
        880, "tests", "tests/x.py::test_a PASSED", ((3, 9), (12, 12)), "PASSED:880,SKIPPED:38", REF
    )
    text = str(marker)
    assert text == (
        '[880 tests like "tests/x.py::test_a PASSED" omitted; lines=3-9,12-12; '
        f"kinds=PASSED:880,SKIPPED:38; hash={REF}]"
    )
    assert find_markers(text) == [(0, len(text), marker)]
    assert MARKER_RE.fullmatch(format_marker(3, "tokens"))


def test_examples_are_made_safe_and_short() -> None:
    raw = 'a "quoted" [bracket]\nsecond line ' + "x" * 100
    example = example_of(raw)
    assert len(example) <= 60 and example.endswith("...")
    assert '"' not in example and "]" not in example and "\n" not in example
    [(_, _, marker)] = find_markers(format_marker(2, "lines", example=raw))
    assert marker.example == example


def test_a_marker_inside_a_json_string_still_parses() -> None:
    marker = format_marker(38, "records", example=json.dumps({"name": "aiohttp", "version": "3.9.5"}))
    doc = json.dumps([{"name": "a"}, marker, {"name": "z"}])
    [(_, _, parsed)] = find_markers(doc)
    assert parsed.count == 38 and parsed.unit == "records"
    assert json.loads(doc)[1] == marker


def test_bad_fields_are_refused() -> None:
    with pytest.raises(ValueError):
        format_marker(1, "Lines")
    with pytest.raises(ValueError):
        format_marker(1, "lines", ref="ABC")


def test_line_ranges() -> None:
    assert line_ranges([1, 2, 3, 7, 9, 10]) == ((1, 3), (7, 7), (9, 10))
    assert line_ranges([]) == ()


def test_truncate_and_normalize_write_the_grammar_with_the_ref() -> None:
    text = "\n".join(f"row {i} of the table, with some words in it" for i in range(300))
    out = create("truncate", {"mode": "middle"}).compress(text, target=Target(max_tokens=200), ref=REF).text
    [(_, _, marker)] = find_markers(out)
    assert marker.unit == "tokens" and marker.ref == REF and marker.lines
    (first, last) = marker.lines[0]
    whole = set(out.split("\n"))  # rows are unique: those not wholly kept are the marker's lines
    missing = {i for i, row in enumerate(text.split("\n"), 1) if row not in whole}
    assert missing == set(range(first, last + 1))
    logs = "\n".join(f"2024-01-01 12:00:{i:02d} INFO request {i} took {i}ms" for i in range(20))
    out = create("normalize").compress(logs, target=Target(rate=1.0), ref=REF).text
    [(_, _, marker)] = find_markers(out)
    assert marker == Marker(18, "lines", example_of(logs.split("\n")[1]), ((2, 19),), None, REF)


def test_a_ref_that_is_not_24_hex_is_refused_before_any_work() -> None:
    with pytest.raises(ValueError):
        create("truncate").compress("text", target=Target(rate=0.5), ref="not-a-hash")
