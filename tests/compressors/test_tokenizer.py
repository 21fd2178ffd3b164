"""Offline, exact token counts for the target model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from compressors.tokenizer import Tokenizer, encoding_name_for, tokenizer_for

# Token ids published in OpenAI's cookbook "How to count tokens with tiktoken"
# (examples/How_to_count_tokens_with_tiktoken.ipynb, compare_encodings), not computed here.
COOKBOOK: dict[str, dict[str, list[int]]] = {
    "antidisestablishmentarianism": {
        "p50k_base": [415, 29207, 44390, 3699, 1042],
        "cl100k_base": [519, 85342, 34500, 479, 8997, 2191],
        "o200k_base": [493, 129901, 376, 160388, 21203, 2367],
    },
    "2 + 2 = 4": {
        "p50k_base": [17, 1343, 362, 796, 604],
        "cl100k_base": [17, 489, 220, 17, 284, 220, 19],
        "o200k_base": [17, 659, 220, 17, 314, 220, 19],
    },
    "\u304a\u8a95\u751f\u65e5\u304a\u3081\u3067\u3068\u3046": {
        "cl100k_base": [33334, 45918, 243, 21990, 9080, 33334, 62004, 16556, 78699],
        "o200k_base": [8930, 9697, 243, 128225, 8930, 17693, 4344, 48669],
    },
    "tiktoken is great!": {"cl100k_base": [83, 1609, 5963, 374, 2294, 0]},
}


@pytest.mark.parametrize(
    ("text", "encoding", "ids"),
    [(text, enc, ids) for text, by_enc in COOKBOOK.items() for enc, ids in by_enc.items()],
)
def test_published_token_ids(text: str, encoding: str, ids: list[int]) -> None:
    tokenizer = Tokenizer(encoding, exact=True, model=None)
    assert tokenizer.encode(text) == ids
    assert tokenizer.count(text) == len(ids)
    assert tokenizer.decode(ids) == text


def test_o200k_and_cl100k_differ_where_they_should() -> None:
    text = "\u304a\u8a95\u751f\u65e5\u304a\u3081\u3067\u3068\u3046"
    assert tokenizer_for("gpt-4o").count(text) < tokenizer_for("gpt-4").count(text)


@pytest.mark.parametrize(
    ("model", "encoding", "exact"),
    [
        ("gpt-4o", "o200k_base", True),
        ("openai/gpt-4o-2024-08-06", "o200k_base", True),
        ("gpt-4o-mini", "o200k_base", True),
        ("o3-mini", "o200k_base", True),
        ("gpt-4.1-nano", "o200k_base", True),
        ("ft:gpt-4o-mini:acme::abc", "o200k_base", True),
        ("gpt-4-turbo", "cl100k_base", True),
        ("gpt-3.5-turbo-0125", "cl100k_base", True),
        ("text-embedding-3-small", "cl100k_base", True),
        ("text-davinci-003", "p50k_base", True),
        ("claude-3-5-sonnet", "o200k_base", False),
        ("llama-3-70b", "o200k_base", False),
        ("", "o200k_base", False),
        (None, "o200k_base", False),
    ],
)
def test_model_to_encoding(model: str | None, encoding: str, exact: bool) -> None:
    assert encoding_name_for(model) == (encoding, exact)
    tokenizer = tokenizer_for(model)
    assert (tokenizer.encoding, tokenizer.exact) == (encoding, exact)
    assert tokenizer.count("hello world") == 2


def test_unknown_models_never_crash() -> None:
    for model in ["???", "x" * 500, "unicode-\u00e9\u00e8", "/", "ft:"]:
        assert tokenizer_for(model).count("some text") > 0


def test_special_token_text_counts_as_plain_text() -> None:
    tokenizer = tokenizer_for("gpt-4o")
    assert tokenizer.count("<|endoftext|>") > 1
    assert tokenizer.count("") == 0


def test_count_many_matches_count() -> None:
    tokenizer = tokenizer_for("gpt-4")
    texts = ["one", "two words", "", "\u304a\u8a95\u751f\u65e5", "x = [1, 2, 3]\n"]
    assert tokenizer.count_many(texts) == [tokenizer.count(t) for t in texts]


def test_thread_safe_counts() -> None:
    tokenizer = tokenizer_for("gpt-4o")
    text = "The quick brown fox jumps over the lazy dog. " * 200
    expected = tokenizer.count(text)
    results: list[int] = []

    def work() -> None:
        results.extend(tokenizer.count(text) for _ in range(20))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [expected] * 80


_OFFLINE_SCRIPT = """
import json, sys
if sys.argv[1] == "litellm-first":
    import litellm  # noqa: F401  (it rewrites TIKTOKEN_CACHE_DIR on import)
from compressors.tokenizer import tokenizer_for
text = "antidisestablishmentarianism"
print(json.dumps({m: tokenizer_for(m).count(text) for m in ["gpt-4o", "gpt-4", "text-davinci-003", "mystery"]}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("order", ["plain", "litellm-first"])
def test_counts_work_with_the_network_unreachable(order: str, tmp_path: Path) -> None:
    empty_cache = tmp_path / "tiktoken-cache"
    empty_cache.mkdir()
    env = {
        **os.environ,
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "HTTP_PROXY": "http://127.0.0.1:9",
        "https_proxy": "http://127.0.0.1:9",
        "http_proxy": "http://127.0.0.1:9",
        "NO_PROXY": "",
        "TIKTOKEN_CACHE_DIR": str(empty_cache),
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "HF_HUB_OFFLINE": "1",
    }
    done = subprocess.run(
        [sys.executable, "-c", _OFFLINE_SCRIPT, order],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 0, done.stderr[-2000:]
    counts = json.loads(done.stdout.strip().splitlines()[-1])
    assert counts == {"gpt-4o": 6, "gpt-4": 6, "text-davinci-003": 5, "mystery": 6}
    assert list(empty_cache.iterdir()) == []  # nothing was downloaded into the cache
