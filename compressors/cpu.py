"""What CPU this process runs on, and which of its runtimes encodes fastest here.

The machines users run on differ (AVX-512 with VNNI, AVX2 only, ...) and so does the
fastest int8 runtime: OpenVINO wins on Intel with VNNI, ONNX Runtime can win elsewhere.
:func:`fastest` times each candidate on the same fixed texts and picks the quickest, so
the choice follows the machine instead of a guess from its flags; the flags are logged
beside the timings to explain the choice.
"""

from __future__ import annotations

import logging
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CpuInfo", "cpu_info", "fastest"]

log = logging.getLogger(__name__)

_FLAGS_OF_INTEREST = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "avx512_bf16")
_PROBE_ROUNDS = 3


@dataclass(frozen=True, slots=True)
class CpuInfo:
    """The CPU's model name and the vector-instruction flags that decide int8 speed."""

    model: str
    flags: tuple[str, ...]

    def describe(self) -> str:
        return f"{self.model} ({' '.join(self.flags) or 'no avx2/avx512/vnni'})"


def cpu_info(cpuinfo: Path = Path("/proc/cpuinfo")) -> CpuInfo:
    """The first CPU's model and flags from ``/proc/cpuinfo`` (Linux), else what ``platform`` says."""
    model, flags = platform.processor() or platform.machine(), set[str]()
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return CpuInfo(model, ())
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model in ("", platform.machine(), platform.processor()):
            model = value.strip()
        elif key == "flags" and not flags:
            flags = set(value.split())
        if key == "" and flags:
            break  # the first processor's block is enough
    return CpuInfo(model, tuple(flag for flag in _FLAGS_OF_INTEREST if flag in flags))


def fastest(candidates: Mapping[str, Callable[[Sequence[str]], object]], texts: Sequence[str]) -> str:
    """The name of the candidate that encodes ``texts`` fastest (best of a few alternating rounds).

    Each candidate runs once untimed first (allocations, kernel choice). Rounds alternate
    between candidates, so a burst of load from other processes hits them alike.
    """
    if len(candidates) == 1:
        return next(iter(candidates))
    best: dict[str, float] = {}
    for encode in candidates.values():
        encode(texts)
    for _ in range(_PROBE_ROUNDS):
        for name, encode in candidates.items():
            started = time.perf_counter()
            encode(texts)
            elapsed = time.perf_counter() - started
            best[name] = min(best.get(name, elapsed), elapsed)
    chosen = min(best, key=lambda name: (best[name], name))
    timings = ", ".join(f"{name} {seconds * 1000:.0f} ms" for name, seconds in sorted(best.items()))
    log.info("embedding runtime: %s is fastest on %s (%s)", chosen, cpu_info().describe(), timings)
    return chosen
