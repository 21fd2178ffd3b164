"""What every tool-output test checks: kept lines byte-identical, markers accounting for every line."""

from __future__ import annotations

from compressors.markers import MARKER_RE, Marker, find_markers


def original_lines(text: str) -> list[str]:
    lines = text.split("\n")
    return lines[:-1] if text.endswith("\n") else lines


def account(original: str, compressed: str) -> list[Marker]:
    """Assert that each output line is a whole marker or the next original line not yet accounted
    for, byte for byte, and that markers' ``lines=`` and the kept lines cover every original line
    exactly once. Returns the markers."""
    lines = original_lines(original)
    covered = [False] * len(lines)
    markers: list[Marker] = []
    cursor = 0
    for line in original_lines(compressed):
        if MARKER_RE.fullmatch(line):
            [(_, _, marker)] = find_markers(line)
            assert marker.lines, f"a marker without lines=: {line[:120]}"
            for first, last in marker.lines:
                for n in range(first, last + 1):
                    assert not covered[n - 1], f"line {n} accounted for twice"
                    covered[n - 1] = True
            markers.append(marker)
        else:
            while cursor < len(lines) and covered[cursor]:
                cursor += 1
            assert cursor < len(lines), f"an extra line: {line[:120]!r}"
            assert line == lines[cursor], (
                f"line {cursor + 1} rewritten: {line[:120]!r} != {lines[cursor][:120]!r}"
            )
            covered[cursor] = True
        while cursor < len(lines) and covered[cursor]:
            cursor += 1
    missing = [n + 1 for n, done in enumerate(covered) if not done]
    assert not missing, f"lines neither kept nor in a marker: {missing[:20]}"
    return markers
