"""Two-stage relevance: bounded embedding, pieces of documents at tight budgets, time budget, CPU probe."""

from __future__ import annotations

import random
import re
import sys
import time
from pathlib import Path

import pytest

import evaldata
from compressors.base import Target
from compressors.cpu import Remembered, cpu_info, fastest
from compressors.embedding import Embedder, EncodeSpeed, cache_scope
from compressors.relevance import Relevance
from compressors.rerank import StageOptions, embed_limit
from compressors.tokenizer import tokenizer_for
from compressors.units import split_units
from compressors.windows import CHARS_PER_TOKEN, split_windows

needs_data = pytest.mark.evaldata(evaldata.NQ, evaldata.QA_PROMPT)
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))


def _haystack(size: int, number: int) -> tuple[str, str, str]:
    from long_context import build_case

    rows = evaldata.nq_rows()
    return build_case(rows, number, size, random.Random(number))


@needs_data
@pytest.mark.slow
def test_a_needle_sentence_in_a_long_haystack_survives_at_one_sixteenth() -> None:
    prompt, question, needle = _haystack(8000, 11)
    result = Relevance().compress(prompt, target=Target(rate=1 / 16), model="gpt-4o")
    assert needle in result.text
    assert result.target_met
    assert result.text.endswith(f"Question: {question}\nAnswer:")


@needs_data
def test_pieces_keep_document_order_headers_and_whole_sentences() -> None:
    prompt, _, _ = _haystack(3000, 5)
    result = Relevance().compress(prompt, target=Target(max_tokens=110), model="gpt-4o")
    lines = {
        int(m.group(1)): m.group(0) for m in re.finditer(r"^Document \[(\d+)\].*$", prompt, re.MULTILINE)
    }
    kept = re.findall(r"^Document \[(\d+)\](\(Title: [^\n]*?\) )(.*)$", result.text, re.MULTILINE)
    assert kept, result.text
    numbers = [int(n) for n, _, _ in kept]
    assert numbers == sorted(numbers)
    for number, header, body in kept:
        original = lines[int(number)]
        assert original.startswith(f"Document [{number}]{header}")
        position = 0
        for piece in re.split(r"(?<=[.!?]) ", body):  # each piece is in the original, in order
            found = original.find(piece, position)
            assert found >= 0, piece
            position = found + len(piece)
    assert any("pieces kept" in d.reason for d in result.decisions)


@needs_data
def test_the_embedding_reads_a_bounded_share_of_a_long_input() -> None:
    prompt, question, _ = _haystack(20000, 3)
    compressor = Relevance()
    tokens = tokenizer_for("gpt-4o").count(prompt)
    layout = split_units(prompt)
    scored = compressor.score(question, layout, layout.units(), tokens)
    windows = split_windows(layout, max_chars=200)
    # The budget: 3,000 tokens plus 5% of the input, about four characters a token.
    assert 0 < scored.embedded < len(windows) / 2
    assert len(scored.units) == len(layout.spans)


@needs_data
def test_a_time_budget_stops_the_embedding_and_says_so() -> None:
    prompt, question, _ = _haystack(20000, 7)
    compressor = Relevance({"max_ms": 1, "embed_tokens": 20000})
    compressor.compress("a b c.\n\nd e f.\n\ng h i.\n\nQuestion: a?", target=Target(rate=0.5))
    result = compressor.compress(prompt, target=Target(rate=0.1), query=question, model="gpt-4o")
    assert "within max_ms 1" in result.note
    assert result.target_met
    assert result.text.endswith(f"Question: {question}\nAnswer:")


@needs_data
def test_a_time_cap_binds_on_the_measured_encoder_and_says_so() -> None:
    prompt, question, _ = _haystack(20000, 3)
    tokens = tokenizer_for("gpt-4o").count(prompt)
    layout = split_units(prompt)
    with cache_scope("uncapped"):
        free = Relevance({"embed_ms_per_1k": 0}).score(question, layout, layout.units(), tokens)
    # 0.5 ms per 1k input tokens: ~10 ms for this input, a few windows on any CPU (none cached
    # in this scope: a cached window would cost nothing).
    with cache_scope("capped"):
        capped = Relevance({"embed_ms_per_1k": 0.5, "embed_min_ms": 0}).score(
            question, layout, layout.units(), tokens
        )
    assert 0 < capped.embedded < free.embedded / 4
    assert "embedding capped at" in capped.note
    assert "capped" not in free.note


def test_the_time_cap_binds_on_a_slow_encoder_not_on_a_fast_one() -> None:
    options = StageOptions("embedding", floor_tokens=3000, share=0.05, ms_per_1k=14, min_ms=300)
    budget = (3000 + 0.05 * 20000) * 4  # characters, at four a token
    # AVX-512 VNNI here: ~0.05 ms per token; the token budget binds first.
    fast_budget, fast_time = embed_limit(20000, options, 0.05 / 4)
    assert fast_budget == budget < fast_time
    # AVX2 only: ~0.19 ms per token; 14 ms per 1k of 20k tokens (280, raised to min_ms 300) buys ~1,580.
    slow_budget, slow_time = embed_limit(20000, options, 0.19 / 4)
    assert slow_budget == budget
    assert slow_time == pytest.approx(300 / 0.19 * 4)
    # A short input gets min_ms: a 3,000-token RAG prompt is read whole on a fast CPU.
    assert embed_limit(3000, options, 0.05 / 4)[1] > 3150 * 4
    # 40k tokens: embed_ms_per_1k binds, not min_ms.
    assert embed_limit(40000, options, 0.19 / 4)[1] == pytest.approx(560 / 0.19 * 4)
    # No cap, or no measurement yet: the token budget alone.
    assert embed_limit(20000, StageOptions("embedding"), 1.0)[1] == float("inf")
    assert embed_limit(20000, options, 0.0)[1] == float("inf")


@needs_data
def test_windows_already_cached_do_not_count_against_the_time_cap() -> None:
    prompt, question, _ = _haystack(20000, 5)
    tokens = tokenizer_for("gpt-4o").count(prompt)
    layout = split_units(prompt)
    # A cap that lets the encoder read about a tenth of the input new, at this machine's speed
    # now (the estimate is timed when the model loads, so the cap holds from the first call).
    per_1k = Embedder().ms_per_char() * CHARS_PER_TOKEN * 1000
    assert per_1k > 0
    compressor = Relevance({"embed_ms_per_1k": per_1k / 10, "embed_min_ms": 0})
    with cache_scope("cap-test"):
        Embedder().clear_cache()
        cold = compressor.score(question, layout, layout.units(), tokens)
        warm = compressor.score(question, layout, layout.units(), tokens)
    assert "embedding capped at" in cold.note
    assert warm.embedded > cold.embedded


def test_the_speed_estimate_is_the_fastest_recent_call() -> None:
    speed = EncodeSpeed()
    assert speed.ms_per_char() == 0.0
    for ms in (30, 10, 40, 1000):  # load from other processes does not move it
        speed.observe(1000, ms / 1000)
    assert speed.ms_per_char() == pytest.approx(0.01)
    for _ in range(100):  # only recent calls count: a slower machine state wins in the end
        speed.observe(1000, 0.5)
    assert speed.ms_per_char() == pytest.approx(0.5)
    speed.observe(0, 1.0)
    assert speed.ms_per_char() == pytest.approx(0.5)


def test_cpu_info_reads_model_and_flags(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nmodel name\t: Test CPU 9000\nflags\t\t: fpu sse avx2 fma avx512f avx512_vnni\n\n"
        "processor\t: 1\nmodel name\t: Other\nflags\t\t: fpu\n"
    )
    info = cpu_info(cpuinfo)
    assert info.model == "Test CPU 9000"
    assert info.flags == ("avx2", "avx512f", "avx512_vnni")
    assert "avx512_vnni" in info.describe()


def test_the_faster_runtime_is_picked() -> None:
    def slow(texts: object) -> None:
        time.sleep(0.02)

    def quick(texts: object) -> None:
        time.sleep(0.001)

    assert fastest({"slow": slow, "quick": quick}, ["a"]) == "quick"
    assert fastest({"only": slow}, ["a"]) == "only"


def test_the_fastest_runtime_is_remembered_per_machine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "builds" / "fastest.json"
    assert Remembered(path, ("numpy",)).get() is None
    Remembered(path, ("numpy",)).put("onnx-int8")
    assert Remembered(path, ("numpy",)).get() == "onnx-int8"  # a later process loads only the winner
    # Anything that decides the winner times again: another runtime version, oneDNN held to AVX2.
    assert Remembered(path, ("numpy", "no-such-package")).get() is None
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert Remembered(path, ("numpy",)).get() is None
    path.write_text("{not json")
    assert Remembered(path, ("numpy",)).get() is None
    (tmp_path / "file").write_text("")
    Remembered(tmp_path / "file" / "fastest.json", ("numpy",)).put("x")  # unwritable: no error
