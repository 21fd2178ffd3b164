"""What CPU this process runs on, and which of its runtimes encodes fastest here.

The machines users run on differ (AVX-512 with VNNI, AVX2 only, ...) and so does the
fastest int8 runtime: OpenVINO wins on Intel with VNNI, ONNX Runtime can win elsewhere.
:func:`fastest` times each candidate on the same fixed texts and picks the quickest, so
the choice follows the machine instead of a guess from its flags; the flags are logged
beside the timings to explain the choice.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import logging
import os
import platform
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CpuInfo", "Remembered", "cpu_info", "fastest"]

log = logging.getLogger(__name__)

_FLAGS_OF_INTEREST = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "avx512_bf16")
_PROBE_ROUNDS = 3
# What else decides which runtime is fastest: oneDNN's instruction-set cap (how an AVX2-only
# CPU is emulated here) and the runtimes' own versions.
_ISA_ENV = "ONEDNN_MAX_CPU_ISA"


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


class Remembered:
    """The outcome of :func:`fastest` kept in a JSON file for this machine, so a process that
    loads a model later (each compression worker, each restart) loads only the winner instead
    of every candidate and the timing rounds (~2 s). The key is the CPU, the cores this process
    may use, oneDNN's instruction-set cap and the versions of ``packages``; any change times
    again. Deleting the file does too."""

    def __init__(self, path: Path, packages: Sequence[str]) -> None:
        self.path = path
        versions = []
        for name in packages:
            try:
                versions.append(f"{name} {importlib.metadata.version(name)}")
            except importlib.metadata.PackageNotFoundError:
                versions.append(f"{name} absent")
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        isa = os.environ.get(_ISA_ENV, "")
        self.key = f"{cpu_info().describe()}; {cores} cores; {_ISA_ENV}={isa}; {', '.join(versions)}"

    def get(self) -> str | None:
        """The remembered winner for this key, or None."""
        try:
            saved = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(saved, dict) or saved.get("key") != self.key:
            return None
        choice = saved.get("fastest")
        return choice if isinstance(choice, str) else None

    def put(self, choice: str) -> None:
        """Remember ``choice`` (atomically; an unwritable folder only costs the next process a probe)."""
        with contextlib.suppress(OSError):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            handle, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".fastest-")
            with os.fdopen(handle, "w", encoding="utf-8") as out:
                json.dump({"key": self.key, "fastest": choice}, out)
            os.replace(tmp, self.path)
