"""``normalize``: a meaning-preserving clean-up that costs no model call.

Whitespace runs inside prose lines collapse, trailing spaces go, 3+ blank lines
become one; JSON is minified (key order kept, only when it round-trips);
identical repeated lines or blocks become one copy and a count; long runs of
near-identical log lines (equal once numbers, hex and timestamps are masked)
become first + count + last. Leading whitespace is never changed, and fenced
code blocks lose only trailing spaces. The target is only reported against:
normalize does not cut to reach it.
"""

from __future__ import annotations

import bisect
import json
import re
from dataclasses import dataclass
from typing import Any

from compressors.base import Ask, Compressed, Compressor, Decision, OptionsError
from compressors.markers import format_marker
from compressors.preserve import PreserveSpec, Span, find_spans

__all__ = ["Normalize"]

_FENCE = re.compile(r"^[ \t]*(`{3,}|~{3,})([^\n]*)\n(.*?)^[ \t]*\1[ \t]*$", re.MULTILINE | re.DOTALL)
_TRAILING = re.compile(r"[ \t]+$", re.MULTILINE)
_INNER_RUN = re.compile(r"(?<=\S) {2,}(?=\S)")
_BLANK_RUN = re.compile(r"\n{4,}")  # three blank lines or more
# Masks what varies between otherwise equal log lines: timestamps, UUIDs, hex, numbers.
_LOG_MASK = re.compile(
    r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2})?(?:[.,]\d+)?Z?"
    r"|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
    r"|0x[0-9a-fA-F]+|\b[0-9a-f]{7,}\b|\d+"
)
_LETTERS = re.compile(r"[A-Za-z]")
# Whitespace inside these is data, whatever the policy preserves.
_ALWAYS_PROTECTED = frozenset({"code", "json", "quotes"})
_MAX_BLOCK = 8  # longest repeated block (in lines) looked for


@dataclass(frozen=True, slots=True)
class _Marks:
    """What the clean-up needs besides the text: the spans to protect and the marker's ``hash``."""

    preserve: PreserveSpec
    ref: str | None


@dataclass(slots=True)
class _Dropped:
    """A collapsed run, for the decisions: where it was and what went."""

    line: int
    text: str
    reason: str


def _minify(text: str) -> str | None:
    """``text`` minified if it is a JSON object/array that round-trips exactly, else None."""

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [key for key, _ in pairs]
        if len(set(keys)) != len(keys):
            raise ValueError("duplicate key")  # minifying would drop one of them
        return dict(pairs)

    try:
        value = json.loads(text, object_pairs_hook=no_duplicates)
    except ValueError:
        return None
    if not isinstance(value, dict | list):
        return None
    out = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    if json.loads(out) != value:  # e.g. NaN
        return None
    return out if len(out) < len(text) else None


class Normalize(Compressor):
    """Lossless-ish clean-up; see the module docstring."""

    name = "normalize"
    cost = "linear"
    option_types = {
        "minify_json": (bool, True),
        "collapse_repeats": (bool, True),
        "min_repeat": (int, 3),
        "collapse_logs": (bool, True),
        "min_log_run": (int, 5),
    }

    def _validate(self) -> None:
        if self.options["min_repeat"] < 2:
            raise OptionsError(f"normalize: min_repeat must be >= 2, got {self.options['min_repeat']}")
        if self.options["min_log_run"] < 3:
            raise OptionsError(f"normalize: min_log_run must be >= 3, got {self.options['min_log_run']}")

    def _compress(self, text: str, ask: Ask) -> Compressed:
        target, preserve, tokenizer = ask.target, ask.preserve, ask.tokenizer  # not question-aware
        tokens_before = tokenizer.count(text)
        dropped: list[_Dropped] = []
        out = self._normalize(text, _Marks(preserve, ask.ref), dropped)
        tokens_after = tokens_before if out == text else tokenizer.count(out)
        budget = target.budget(tokens_before)
        met = tokens_after <= budget * 1.05
        note = (
            ""
            if met
            else f"normalize is lossless; it reached {tokens_after} tokens for a {budget}-token target"
        )
        counts = tokenizer.count_many([d.text for d in dropped]) if dropped else []
        decisions = tuple(
            Decision(d.line, "lines", n, False, reason=d.reason, preview=d.text[:40])
            for d, n in zip(dropped, counts, strict=True)
        )
        return Compressed(out, tokens_before, tokens_after, self.name, budget, met, note, decisions)

    def _normalize(self, text: str, marks: _Marks, dropped: list[_Dropped]) -> str:
        text = text.replace("\r\n", "\n")
        if self.options["minify_json"] and text.lstrip()[:1] in ("{", "["):
            whole = _minify(text)
            if whole is not None:
                return whole
        parts: list[str] = []
        pos = 0
        line = 0  # line number of ``pos`` in the input, for decisions
        for fence in _FENCE.finditer(text):
            parts.append(self._clean_prose(text[pos : fence.start()], marks, dropped, line))
            parts.append(self._clean_fence(fence))
            line += text.count("\n", pos, fence.end())
            pos = fence.end()
        parts.append(self._clean_prose(text[pos:], marks, dropped, line))
        return _BLANK_RUN.sub("\n\n", "".join(parts))

    def _clean_fence(self, fence: re.Match[str]) -> str:
        block = fence.group(0)
        info, body = fence.group(2).strip().lower(), fence.group(3)
        if self.options["minify_json"] and info in ("json", "jsonc", "json5"):
            small = _minify(body)
            if small is not None:
                return block.replace(body, small + "\n", 1)
        return _TRAILING.sub("", block)  # code keeps its indentation

    def _clean_prose(self, text: str, marks: _Marks, dropped: list[_Dropped], first_line: int) -> str:
        if not text:
            return text
        lines_before = text.count("\n")
        if self.options["minify_json"] and ("{" in text or "[" in text):
            text = _minify_spans(text)
        text = _TRAILING.sub("", text)
        if _INNER_RUN.search(text):
            spec = PreserveSpec(marks.preserve.categories | _ALWAYS_PROTECTED, marks.preserve.patterns)
            text = _collapse_runs(text, find_spans(text, spec))
        if not (self.options["collapse_repeats"] or self.options["collapse_logs"]):
            return text
        lines = text.split("\n")
        # input line (0-based) of each line; a minified JSON block shifts them, so markers then omit lines=
        origin = list(range(first_line, first_line + len(lines)))
        exact = len(lines) == lines_before + 1
        if self.options["collapse_repeats"]:
            lines, origin = _collapse_repeats(
                lines, origin, self.options["min_repeat"], dropped, marks, exact
            )
        if self.options["collapse_logs"]:
            lines = _collapse_logs(lines, origin, self.options["min_log_run"], dropped, marks, exact)
        return "\n".join(lines)


def _minify_spans(text: str) -> str:
    """Minify the JSON blocks found by the preserve engine (objects and arrays only)."""
    parts: list[str] = []
    pos = 0
    for span in find_spans(text, PreserveSpec(frozenset({"json"}))):
        if text[span.start] not in "{[":
            continue  # YAML-looking block: left alone
        small = _minify(text[span.start : span.end])
        if small is None:
            continue
        parts.append(text[pos : span.start])
        parts.append(small)
        pos = span.end
    parts.append(text[pos:])
    return "".join(parts)


def _collapse_runs(text: str, spans: list[Span]) -> str:
    """Collapse runs of inner spaces to one, except inside protected spans."""
    starts = [s.start for s in spans]

    def replace(match: re.Match[str]) -> str:
        i = bisect.bisect_right(starts, match.start()) - 1
        if i >= 0 and spans[i].end > match.start():
            return match.group(0)
        return " "

    return _INNER_RUN.sub(replace, text)


def _block_repeats(lines: list[str], i: int, size: int) -> int:
    """How many times ``lines[i:i+size]`` occurs back to back from ``i``."""
    block = lines[i : i + size]
    count = 1
    while lines[i + count * size : i + (count + 1) * size] == block:
        count += 1
    return count


def _marker(count: int, example: str, first: int, last: int, marks: _Marks, exact: bool) -> str:
    """A marker for ``count`` omitted lines, input lines ``first..last`` (0-based)."""
    lines = ((first + 1, last + 1),) if exact else ()
    return format_marker(count, "lines", example=example, lines=lines, ref=marks.ref)


def _collapse_repeats(
    lines: list[str],
    origin: list[int],
    min_repeat: int,
    dropped: list[_Dropped],
    marks: _Marks,
    exact: bool,
) -> tuple[list[str], list[int]]:
    out: list[str] = []
    out_origin: list[int] = []
    i = 0
    while i < len(lines):
        best_size, best_count = 1, 1
        if lines[i].strip():
            for size in range(1, _MAX_BLOCK + 1):
                if i + 2 * size > len(lines) or lines[i + size] != lines[i]:
                    continue
                count = _block_repeats(lines, i, size)
                needed = min_repeat if size == 1 else 2
                if count >= needed and (count - 1) * size > (best_count - 1) * best_size:
                    best_size, best_count = size, count
        out.extend(lines[i : i + best_size])
        out_origin.extend(origin[i : i + best_size])
        if best_count > 1:
            what = "previous line" if best_size == 1 else f"previous {best_size} lines"
            reason = f"{what} repeated {best_count - 1} more times"
            gone = lines[i + best_size : i + best_size * best_count]
            first, last = origin[i + best_size], origin[i + best_size * best_count - 1]
            out.append(_marker(len(gone), lines[i], first, last, marks, exact))
            out_origin.append(origin[i + best_size])
            dropped.append(_Dropped(origin[i + best_size], "\n".join(gone), reason))
        i += best_size * best_count
    return out, out_origin


def _collapse_logs(
    lines: list[str], origin: list[int], min_run: int, dropped: list[_Dropped], marks: _Marks, exact: bool
) -> list[str]:
    masks = [_LOG_MASK.sub("#", line) if line.strip() else "" for line in lines]
    out: list[str] = []
    i = 0
    while i < len(lines):
        j = i + 1
        # a log line has words and something that varies (a number, hex, a timestamp)
        if masks[i] and "#" in masks[i] and len(_LETTERS.findall(masks[i])) >= 3:
            while j < len(lines) and masks[j] == masks[i]:
                j += 1
        if j - i >= min_run:
            reason = f"{j - i - 2} similar lines omitted"
            marker = _marker(j - i - 2, lines[i + 1], origin[i + 1], origin[j - 2], marks, exact)
            out.extend((lines[i], marker, lines[j - 1]))
            dropped.append(_Dropped(origin[i + 1], "\n".join(lines[i + 1 : j - 1]), reason))
        else:
            out.extend(lines[i:j])
        i = j
    return out
