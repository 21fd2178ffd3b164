"""Each compressor says what its work costs as a text grows; the proxy caps text sizes by it."""

from __future__ import annotations

import pytest

from compressors import create
from compressors.base import Ask, Compressed, Compressor


@pytest.mark.parametrize(
    ("name", "options", "cost"),
    [
        ("normalize", {}, "linear"),
        ("truncate", {"mode": "middle"}, "linear"),
        ("relevance", {"scorer": "bm25"}, "linear"),
        ("relevance", {"scorer": "embedding"}, "model"),
        ("relevance", {"scorer": "hybrid"}, "model"),
        ("tokens", {"scorer": "selfinfo"}, "model"),
    ],
)
def test_each_compressor_declares_its_cost(name: str, options: dict[str, str], cost: str) -> None:
    assert create(name, options).cost_class == cost


def test_a_compressor_that_says_nothing_is_taken_as_costly() -> None:
    class Echo(Compressor):
        name = "echo"

        def _compress(self, text: str, ask: Ask) -> Compressed:
            count = ask.tokenizer.count(text)
            return Compressed(text, count, count, self.name)

    assert Echo().cost_class == "model"
