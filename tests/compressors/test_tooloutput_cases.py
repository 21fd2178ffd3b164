"""tooloutput on real outputs of real commands (bench/cases/tooloutput, see make.py there)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from tooloutput_check import account

from compressors import Compressed, Target, create, tokenizer_for
from compressors.markers import find_markers

CASES = Path(__file__).parents[2] / "bench" / "cases" / "tooloutput"
REF = "0123456789abcdef01234567"
BUDGET = 1500
SHAPE = {
    "starlette_pytest_v": "tests",
    "click_pytest_q": "tests",
    "httpx_client_cat_n": "fileread",
    "click_core_read": "fileread",
    "uvicorn_log": "logs",
    "starlette_git_log_stat": "git",
    "starlette_git_diff": "git",
    "starlette_grep": "search",
    "pip_list_json": "json",
    "click_tests_mypy": "diagnostics",
    "starlette_ruff": "diagnostics",
}


def case(name: str) -> tuple[str, dict[str, Any]]:
    return (CASES / f"{name}.txt").read_text(), json.loads((CASES / f"{name}.json").read_text())


@cache
def compressed(name: str) -> Compressed:
    text, meta = case(name)
    return create("tooloutput").compress(text, target=Target(max_tokens=BUDGET), query=meta["query"], ref=REF)


def test_every_case_is_listed() -> None:
    assert {p.stem for p in CASES.glob("*.json")} == {*SHAPE, "starlette_small_pytest"}


@pytest.mark.parametrize("name", sorted(SHAPE))
def test_facts_survive_and_the_right_shape_compresses(name: str) -> None:
    _, meta = case(name)
    result = compressed(name)
    assert [fact for fact in meta["facts"] if fact not in result.text] == []
    assert result.decisions[0].kind == f"shape:{SHAPE[name]}"
    assert result.tokens_after < result.tokens_before
    assert result.tokens_after == tokenizer_for(None).count(result.text)
    assert result.target_met or result.note  # a missed target always says why


def test_tool_outputs_are_at_least_60_percent_smaller_in_sum() -> None:
    before = sum(compressed(name).tokens_before for name in SHAPE)
    after = sum(compressed(name).tokens_after for name in SHAPE)
    assert after <= 0.4 * before


@pytest.mark.parametrize("name", sorted(set(SHAPE) - {"pip_list_json"}))
def test_kept_lines_are_byte_identical_and_markers_account_for_every_line(name: str) -> None:
    text, _ = case(name)
    markers = account(text, compressed(name).text)
    assert markers and all(marker.ref == REF for marker in markers)


def test_the_json_listing_stays_valid_json_and_counts_what_went() -> None:
    text, _ = case("pip_list_json")
    value = json.loads(compressed("pip_list_json").text)
    gone = [m for item in value if isinstance(item, str) for _, _, m in find_markers(item)]
    assert gone and all(m.ref == REF for m in gone)
    assert len(value) - len(gone) + sum(m.count for m in gone) == len(json.loads(text))
    kept = [item for item in value if isinstance(item, dict)]
    assert all(item in json.loads(text) for item in kept)


def test_a_run_with_failures_never_reads_as_clean() -> None:
    result = compressed("starlette_pytest_v").text
    assert "4 failed, 917 passed" in result and result.count(" FAILED") >= 4
    tests = [m for _, _, m in find_markers(result) if m.unit == "tests"]
    assert tests and all("FAILED" not in (m.kinds or "") for m in tests)


def test_diagnostics_of_a_frequent_kind_list_every_line_number() -> None:
    text, _ = case("starlette_ruff")
    out = compressed("starlette_ruff").text
    listed: list[str] = []
    for _, _, marker in find_markers(out):
        if marker.unit == "diagnostics":
            file, *kinds = (marker.kinds or "").split(" ")
            listed += [
                f"{file}:{n}:{kind.split(':')[0]}" for kind in kinds for n in kind.split(":")[1].split(",")
            ]
    kept = {line for line in out.split("\n") if line.startswith("starlette/")}
    for line in text.split("\n"):
        if line.startswith("starlette/") and line not in kept:
            path, number, _, rest = line.split(":", 3)
            code = rest.split()[0]
            assert f"{path}:{number}:{code}" in listed, line


def test_a_short_output_is_returned_unchanged() -> None:
    text, _ = case("starlette_small_pytest")
    result = create("tooloutput").compress(text, target=Target(max_tokens=10))
    assert result.text == text and result.tokens_after == result.tokens_before < 200


@pytest.mark.parametrize("name", ["starlette_pytest_v", "uvicorn_log", "starlette_ruff"])
def test_deterministic(name: str) -> None:
    text, meta = case(name)
    again = create("tooloutput").compress(
        text, target=Target(max_tokens=BUDGET), query=meta["query"], ref=REF
    )
    assert again.text == compressed(name).text


def test_the_file_a_diff_query_names_keeps_its_changes() -> None:
    out = compressed("starlette_git_diff").text
    section = out.split("diff --git a/starlette/middleware/gzip.py", 1)[1].split("\ndiff --git", 1)[0]
    assert '+        elif message_type == "http.response.pathsend":  # pragma: no branch' in section
