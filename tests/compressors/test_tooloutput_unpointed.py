"""File reads without line numbers, and the lower first-appearance target for a read the query
points nowhere into (``unpointed_max_tokens``): cut to its outline only when retrievable."""

from __future__ import annotations

import re
from pathlib import Path

from tooloutput_check import account

from compressors import Compressed, Target, create
from compressors.markers import find_markers

REF = "0123456789abcdef01234567"


def _source(name: str = "_models.py") -> str:
    """A real source file of an installed package, read with ``cat`` (no line numbers)."""
    import httpx

    return (Path(httpx.__file__).parent / name).read_text(encoding="utf-8")


def run(text: str, query: str, *, ref: str | None, unpointed: int | None = 600) -> Compressed:
    options = {} if unpointed is None else {"unpointed_max_tokens": unpointed}
    result = create("tooloutput", options).compress(
        text, target=Target(max_tokens=3000), query=query, ref=ref
    )
    account(text, result.text)
    return result


def defs(text: str) -> list[str]:
    return re.findall(r"^\s*(?:async )?def (\w+)", text, re.M)


def test_a_plain_cat_of_source_is_a_file_read_that_keeps_its_outline() -> None:
    text = _source()
    result = run(text, 'bash {"command": "cat httpx/_models.py"}', ref=None, unpointed=None)
    assert result.decisions[0].kind == "shape:fileread"
    assert result.tokens_after <= 3150
    # where everything is: the classes and the top-level functions, byte-identical
    for line in text.splitlines():
        if re.match(r"(class|def) \w+", line):
            assert line in result.text.splitlines()


def test_an_unpointed_read_is_cut_to_its_outline_when_it_can_be_got_back() -> None:
    text = _source("_auth.py")  # about 2,700 tokens: under the 3,000 target, it went as it came
    query = 'Explain the request path. bash {"command": "cat httpx/_auth.py"}'
    assert run(text, query, ref=REF, unpointed=None).text == text
    cold = run(text, query, ref=REF)
    assert cold.tokens_after < 0.6 * cold.tokens_before
    kept = set(defs(cold.text))
    assert kept == set(defs(text))  # every definition line stays: the next step names one of them
    assert all(m.ref == REF for _, _, m in find_markers(cold.text))  # every omitted line retrievable


def test_without_retrieval_or_with_a_pointer_into_the_read_the_target_applies() -> None:
    text = _source("_auth.py")
    cold_query = 'bash {"command": "cat httpx/_auth.py"}'
    assert run(text, cold_query, ref=None).text == text  # nothing to get the lines back from
    # the query names something on the read's lines: the whole target, so it goes as it came
    pointed = 'Where is _resolve_qop? bash {"command": "cat httpx/_auth.py"}'
    assert run(text, pointed, ref=REF).text == text
    # a name defined on several lines (every Auth class has auth_flow) points at none of them
    several = run(text, 'Where is auth_flow? bash {"command": "cat httpx/_auth.py"}', ref=REF)
    assert several.tokens_after < 0.6 * several.tokens_before


def test_a_small_read_nobody_points_into_goes_as_it_came_below_the_lower_target() -> None:
    text = "\n".join(f"def f{i}(x):\n    return x + {i}\n" for i in range(20))
    result = run("import os\n" + text, "cat small.py", ref=REF, unpointed=600)
    assert result.text == "import os\n" + text


def test_a_read_without_definitions_has_no_outline_to_fall_back_on() -> None:
    notes = "".join(f"{n:>6}\t- Fixed issue {n}: the option now shows its range.\n" for n in range(1, 120))
    result = run(notes, 'bash {"command": "cat -n CHANGES.md"}', ref=REF)
    assert result.text == notes  # a changelog under the target goes as it came


def test_an_outline_over_the_target_still_fills_it_with_definitions() -> None:
    """A big read nobody points into: a marker sits between every two definitions kept, so each is
    charged the marker it splits off; the budget goes to definitions, not to overshoot and retreat."""
    text = _source("_models.py")  # about 9,400 tokens, 95 definitions
    result = run(text, 'bash {"command": "cat httpx/_models.py"}', ref=REF)
    assert 2700 <= result.tokens_after <= 3150
    assert len(defs(result.text)) >= 0.85 * len(defs(text))


def test_a_call_that_names_a_range_chose_its_lines() -> None:
    """An agent reading lines 1-350 of a file it found nothing about yet (Claude Code's Read with
    offset/limit, ``sed -n``): the range is its pointer, so the read is not cut to its outline."""
    text = _source("_auth.py")
    ranged = 'Call: Read {"file_path": "httpx/_auth.py", "offset": 1, "limit": 350}'
    assert run(text, ranged, ref=REF).text == text
    assert run(text, 'Call: Read {"file_path": "httpx/_auth.py"}', ref=REF).tokens_after < 2000
