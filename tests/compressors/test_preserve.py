"""The preserve engine: which spans survive, and the inline tags."""

from __future__ import annotations

import itertools
import json
import re

import pytest

import evaldata
from compressors.preserve import CATEGORIES, PreserveSpec, Region, find_spans, split_tags

PYDICOM = "swe-agent-traces/gpt4__pydicom-1458.traj"


def spans_of(text: str, *categories: str) -> list[tuple[str, str]]:
    spec = PreserveSpec(frozenset(categories)) if categories else PreserveSpec.default()
    return [(s.category, text[s.start : s.end]) for s in find_spans(text, spec)]


def texts_of(text: str, *categories: str) -> list[str]:
    return [t for _, t in spans_of(text, *categories)]


def test_code_fences_and_inline_code() -> None:
    text = "Run `pip install x` then:\n```python\ndef f():\n    return {'a': 1}\n```\nand ~~~\nraw\n~~~\ndone"
    assert texts_of(text, "code") == [
        "`pip install x`",
        "```python\ndef f():\n    return {'a': 1}\n```",
        "~~~\nraw\n~~~",
    ]


def test_unclosed_fence_is_not_a_block() -> None:
    assert texts_of("```python\nprint(1)\nno closing fence", "code") == []


def test_json_objects_and_arrays_parse_and_citations_do_not() -> None:
    text = 'Body {"model": "gpt-4o", "n": [1, 2]} cites [1] and [2, 3] but not {broken: json}.'
    assert texts_of(text, "json") == ['{"model": "gpt-4o", "n": [1, 2]}', "[2, 3]"]


def test_multiline_json_is_one_span() -> None:
    doc = json.dumps({"a": {"b": [1, 2, {"c": "d"}]}, "e": None}, indent=2)
    text = f"Here:\n{doc}\nThat was it."
    assert texts_of(text, "json") == [doc]


def test_yaml_block_nested_or_long_but_not_two_prose_lines() -> None:
    text = "Config below\nserver:\n  host: localhost\n  port: 8080\nend of config\nQuestion: who?\nAnswer:"
    assert texts_of(text, "json") == ["server:\n  host: localhost\n  port: 8080"]


def test_urls_without_trailing_punctuation() -> None:
    text = "See https://example.com/a/b?x=1&y=2. Or (www.foo.org), or HTTP://X.ORG/Path!"
    assert texts_of(text, "urls") == ["https://example.com/a/b?x=1&y=2", "www.foo.org", "HTTP://X.ORG/Path"]


def test_emails() -> None:
    assert texts_of("mail bob.smith+x@mail.example.co.uk, not @handle", "emails") == [
        "bob.smith+x@mail.example.co.uk"
    ]


def test_paths_absolute_relative_windows_but_not_prose_slashes() -> None:
    text = "Edit /usr/lib/python3.11/os.py, ./run.sh, ../up, src/proxy/server.py and C:\\Users\\me\\f.txt and/or km/h"
    assert texts_of(text, "paths") == [
        "/usr/lib/python3.11/os.py",
        "./run.sh",
        "../up",
        "src/proxy/server.py",
        "C:\\Users\\me\\f.txt",
    ]


def test_url_paths_are_not_file_paths() -> None:
    assert texts_of("https://example.com/a/b.html", "paths") == []


def test_numbers_signs_currency_thousands_percent() -> None:
    text = "Costs $1,234.50 or -42 or 3.5% or \u20ac20 or -$5 or 1e-3, not x2 or abc123; 7."
    assert texts_of(text, "numbers") == ["$1,234.50", "-42", "3.5%", "\u20ac20", "-$5", "1e-3", "7"]


def test_dates_times_versions() -> None:
    text = (
        "On 2024-01-03T12:30:00Z, 03/01/2024, Jan 3, 2024, 3rd of March 2024, at 12:30 pm, "
        "v1.2.3 and Python 3.11.7; May 2020. Jay 5 is a name."
    )
    assert texts_of(text, "dates") == [
        "2024-01-03T12:30:00Z",
        "03/01/2024",
        "Jan 3, 2024",
        "3rd of March 2024",
        "12:30 pm",
        "v1.2.3",
        "3.11.7",
        "May 2020",
    ]


def test_identifiers_uuids_hashes() -> None:
    text = (
        "Use my_var, __init__, camelCase, JavaScript, os.path.join(), MAX_SIZE, NASA, e.g. this, "
        "uuid 123e4567-e89b-12d3-a456-426614174000, commit 3ea751c087f3, 0x1F, not deadbeef nor Hello."
    )
    assert texts_of(text, "ids") == [
        "my_var",
        "__init__",
        "camelCase",
        "JavaScript",
        "os.path.join()",
        "MAX_SIZE",
        "NASA",
        "123e4567-e89b-12d3-a456-426614174000",
        "3ea751c087f3",
        "0x1F",
    ]


def test_quotes_but_not_apostrophes() -> None:
    text = "He said \"hello there\" and 'quoted text' but don't split people's words. \u201cSmart\u201d ok."
    assert texts_of(text, "quotes") == ['"hello there"', "'quoted text'", "\u201cSmart\u201d"]


def test_custom_regex_patterns() -> None:
    spec = PreserveSpec.parse(["urls", {"regex": r"TICKET-\d+"}])
    text = "Fix TICKET-42 per https://x.org/t"
    assert [(s.category, text[s.start : s.end]) for s in find_spans(text, spec)] == [
        ("custom", "TICKET-42"),
        ("urls", "https://x.org/t"),
    ]


def test_overlaps_merge_into_one_span_named_after_earliest_longest() -> None:
    # the URL contains a path-like part, a number and a version: one span, never split
    text = "get https://host/v1.2.3/api/12 now"
    assert spans_of(text) == [("urls", "https://host/v1.2.3/api/12")]
    # two candidates overlapping partially merge to their union
    spec = PreserveSpec(frozenset(), (re.compile("abc"), re.compile("bcd")))
    assert [(s.start, s.end) for s in find_spans("xabcdx", spec)] == [(1, 5)]


@pytest.mark.evaldata(PYDICOM)
def test_spans_sorted_disjoint_and_within_text_on_real_data() -> None:
    text = "\n".join(str(m["content"]) for m in evaldata.agent_messages(PYDICOM))
    spans = find_spans(text, PreserveSpec.default())
    assert len(spans) > 100
    assert all(0 <= a.start < a.end <= b.start < b.end <= len(text) for a, b in itertools.pairwise(spans))
    assert {s.category for s in spans} >= {"code", "paths", "numbers", "ids", "quotes"}


@pytest.mark.evaldata(evaldata.KV75)
def test_kv_retrieval_json_prompt_keeps_every_uuid() -> None:
    [row] = evaldata.kv_rows(1)
    text = "JSON data:\n" + json.dumps(dict(row["ordered_kv_records"]), indent=1)
    spans = find_spans(text, PreserveSpec(frozenset({"ids"})))
    found = {text[s.start : s.end] for s in spans}
    uuids = {key for pair in row["ordered_kv_records"] for key in pair}
    assert uuids <= found
    assert found - uuids == {"JSON"}


def test_none_and_empty() -> None:
    assert find_spans("https://x.org 123", PreserveSpec.none()) == []
    assert find_spans("", PreserveSpec.default()) == []


def test_parse_rejects_unknown_and_bad_regex() -> None:
    assert PreserveSpec.parse(["all"]).categories == frozenset(CATEGORIES)
    with pytest.raises(ValueError, match="unknown preserve category"):
        PreserveSpec.parse(["nope"])
    with pytest.raises(ValueError, match="preserve regex"):
        PreserveSpec.parse([{"regex": "("}])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("plain text", [Region("plain text", "compress")]),
        (
            "a <keep>b</keep> c",
            [Region("a ", "compress"), Region("b", "keep"), Region(" c", "compress")],
        ),
        (
            "x <llmlingua, rate=0.3>y</llmlingua> z <llmlingua compress=False>k</llmlingua>",
            [
                Region("x ", "compress"),
                Region("y", "rate", 0.3),
                Region(" z ", "compress"),
                Region("k", "keep"),
            ],
        ),
        ("<KEEP>A</Keep>", [Region("A", "keep")]),
        ("p <llmlingua,compress=True>m</llmlingua> q", [Region("p m q", "compress")]),
        ("<llmlingua ,  rate = .5 >r</llmlingua>", [Region("r", "rate", 0.5)]),
    ],
)
def test_split_tags(text: str, expected: list[Region]) -> None:
    assert split_tags(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "<keep>unclosed",
        "</keep> stray",
        "bad rate <llmlingua, rate=5>q</llmlingua>",
        "bad flag <llmlingua, compress=maybe>q</llmlingua>",
        "<llmlingua>no args</llmlingua>",
        "a < b and c > d",
    ],
)
def test_malformed_tags_stay_literal(text: str) -> None:
    assert split_tags(text) == [Region(text, "compress")]


def test_tags_remove_only_matched_pairs() -> None:
    regions = split_tags("</keep> a <keep>b</keep> <keep>open")
    assert regions == [
        Region("</keep> a ", "compress"),
        Region("b", "keep"),
        Region(" <keep>open", "compress"),
    ]
