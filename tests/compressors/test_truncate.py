"""truncate: head, tail, middle on unit boundaries, preserved spans whole."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import evaldata
from compressors import OptionsError, PreserveSpec, Target, create, tokenizer_for
from compressors.markers import find_markers

MARKER = re.compile(r"\[(\d+) tokens omitted(?:; lines=[0-9,-]+)?\]")


@pytest.fixture(scope="module")
def docs() -> str:
    rows = evaldata.nq_rows(20)
    return "\n".join(
        f"Document [{i}](Title: {r['ctxs'][0]['title']}) {r['ctxs'][0]['text']}"
        for i, r in enumerate(rows, 1)
    )


@pytest.mark.evaldata(evaldata.NQ)
@pytest.mark.parametrize("mode", ["head", "tail", "middle"])
@pytest.mark.parametrize("unit", ["paragraph", "line", "sentence", "token"])
@pytest.mark.parametrize("rate", [0.6, 0.2, 0.03])
def test_budget_filled_within_five_percent(docs: str, mode: str, unit: str, rate: float) -> None:
    result = create("truncate", {"mode": mode, "unit": unit}).compress(
        docs, target=Target(rate=rate), model="gpt-4o"
    )
    budget = result.target_tokens
    assert budget is not None
    assert result.target_met
    # filled to within 5% (a preserved span at the cut may cost a few more tokens)
    assert 0.95 * budget - 8 <= result.tokens_after <= 1.05 * budget
    assert result.tokens_after == tokenizer_for("gpt-4o").count(result.text)
    head, marker, tail = MARKER.split(result.text)
    assert docs.startswith(head.rstrip("\n")) and docs.endswith(tail.lstrip("\n"))
    if mode == "head":
        assert tail.strip() == "" and head.strip()
    elif mode == "tail":
        assert head.strip() == "" and tail.strip()
    else:
        assert head.strip() and tail.strip()
    assert int(marker) > 0


@pytest.mark.evaldata(evaldata.NQ)
def test_line_units_cut_on_line_boundaries(docs: str) -> None:
    result = create("truncate", {"mode": "head", "unit": "line"}).compress(docs, target=Target(rate=0.3))
    kept = MARKER.split(result.text)[0]
    lines = docs.split("\n")
    kept_lines = kept.rstrip("\n").split("\n")
    # whole lines, except the one the cut fell in (refined to sentences)
    assert kept_lines[:-1] == lines[: len(kept_lines) - 1]
    assert lines[len(kept_lines) - 1].startswith(kept_lines[-1])


def test_middle_keeps_both_ends_and_counts_the_omission() -> None:
    lines = [f"line {i}: the quick brown fox jumps over the lazy dog" for i in range(200)]
    text = "\n".join(lines)
    result = create("truncate", {"mode": "middle"}).compress(text, target=Target(max_tokens=300))
    out = result.text.split("\n")
    assert out[0] == lines[0] and out[-1] == lines[-1]
    omitted = int(MARKER.search(result.text).group(1))  # type: ignore[union-attr]
    tokenizer = tokenizer_for(None)
    assert abs(omitted - (result.tokens_before - result.tokens_after)) < 40
    assert tokenizer.count(result.text) <= 315


def test_preserved_span_is_kept_or_dropped_whole_when_it_fits() -> None:
    block = "```python\n" + "\n".join(f"x_{i} = compute({i})" for i in range(60)) + "\n```"
    text = "Intro line one.\nIntro line two.\n" + block + "\nOutro line." + "\nMore prose here." * 200
    tokens = tokenizer_for(None).count(block)
    for max_tokens in (tokens + 10, tokens + 60, tokens + 200):
        for unit in ("line", "token"):
            out = (
                create("truncate", {"mode": "head", "unit": unit})
                .compress(text, target=Target(max_tokens=max_tokens))
                .text
            )
            assert block in out or "```" not in out


def test_a_span_bigger_than_the_budget_is_cut_on_its_lines_not_dropped() -> None:
    block = "```python\n" + "\n".join(f"x_{i} = compute({i})" for i in range(60)) + "\n```"
    text = "Intro line one.\nIntro line two.\n" + block + "\nOutro line."
    lines = text.split("\n")
    for rate in (0.2, 0.5):
        for unit in ("line", "token"):
            result = create("truncate", {"mode": "head", "unit": unit}).compress(
                text, target=Target(rate=rate)
            )
            head, _, _ = MARKER.split(result.text)
            kept = head.rstrip("\n").split("\n")
            assert "```python" in kept and len(kept) > 4  # the span's first lines, not a bare marker
            assert kept == lines[: len(kept)]  # whole lines only
            assert result.target_met


def test_token_cut_never_splits_a_preserved_url() -> None:
    url = "https://example.com/" + "segment/" * 30 + "end"
    text = "word " * 50 + url + " tail words" * 20
    compressor = create("truncate", {"mode": "head", "unit": "token"})
    for tokens in range(40, 120, 7):
        out = compressor.compress(text, target=Target(max_tokens=tokens)).text
        assert url in out or "https://" not in out


def test_preserve_none_allows_cutting_inside() -> None:
    text = "start " + "https://example.com/" + "seg/" * 200
    result = create("truncate", {"unit": "token"}).compress(
        text, target=Target(max_tokens=50), preserve=PreserveSpec.none()
    )
    assert "https://example.com/" in result.text and result.tokens_after <= 52


def test_short_input_unchanged_and_no_marker_option() -> None:
    compressor = create("truncate")
    assert compressor.compress("short", target=Target(rate=1.0)).text == "short"
    text = "\n".join(f"row {i} of the table" for i in range(100))
    out = create("truncate", {"marker": False}).compress(text, target=Target(rate=0.5)).text
    assert "omitted" not in out and text.startswith(out)


@pytest.mark.evaldata(evaldata.NQ)
def test_decisions_per_unit(docs: str) -> None:
    result = create("truncate", {"mode": "tail"}).compress(docs, target=Target(rate=0.5))
    assert len(result.decisions) == docs.count("\n") + 1
    assert [d.index for d in result.decisions] == list(range(len(result.decisions)))
    assert result.decisions[0].kept is False and result.decisions[-1].kept is True
    assert all(len(d.preview) <= 40 for d in result.decisions)


@pytest.mark.evaldata(evaldata.NQ)
def test_deterministic(docs: str) -> None:
    compressor = create("truncate", {"mode": "middle", "unit": "sentence"})
    outs = {compressor.compress(docs, target=Target(rate=0.37)).text for _ in range(3)}
    assert len(outs) == 1


@pytest.mark.parametrize("options", [{"mode": "center"}, {"unit": "word"}, {"marker": 1}])
def test_bad_options(options: dict[str, object]) -> None:
    with pytest.raises(OptionsError):
        create("truncate", options)


PIP_LIST = Path(__file__).parents[2] / "bench" / "cases" / "tooloutput" / "pip_list_json.txt"


def test_a_pretty_printed_json_document_is_digested_not_dropped() -> None:
    text = PIP_LIST.read_text()
    result = create("truncate").compress(text, target=Target(max_tokens=500), ref="0123456789abcdef01234567")
    value = json.loads(result.text)  # still valid JSON
    assert value[0] == {"name": "aiohappyeyeballs", "version": "2.7.1"} and len(value) > 10
    markers = [m for item in value if isinstance(item, str) for _, _, m in find_markers(item)]
    assert len(markers) == 1 and markers[0].unit == "records" and markers[0].ref == "0123456789abcdef01234567"
    assert len(value) - 1 + markers[0].count == len(json.loads(text))
    assert result.target_met and result.tokens_after <= 500


def test_a_log_one_span_covers_is_cut_on_lines_not_dropped() -> None:
    lines = [f'INFO:     127.0.0.1:{50000 + i} - "GET /items/{i} HTTP/1.1" 200 OK' for i in range(400)]
    text = "\n".join(lines)
    result = create("truncate", {"mode": "middle"}).compress(text, target=Target(max_tokens=400))
    head, _, tail = MARKER.split(result.text)
    kept = head.strip("\n").split("\n") + tail.strip("\n").split("\n")
    assert len(kept) > 10 and all(line in lines for line in kept)
    assert kept[0] == lines[0] and kept[-1] == lines[-1]
    assert result.target_met


def test_a_one_line_span_bigger_than_the_budget_is_kept_and_the_miss_reported() -> None:
    url = "https://example.com/" + "segment/" * 300 + "end"
    result = create("truncate").compress("see " + url + "\nbye", target=Target(max_tokens=50))
    assert url in result.text and not result.target_met and "kept whole" in result.note
