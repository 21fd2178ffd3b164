"""The audit's cost per record: written inline from the event loop vs handed to the writer thread.

``JsonlAuditSink.commit`` is what a request waits for before its last byte. This measures it in
one process, without HTTP, so background load on the shared machine moves it less than the
end-to-end figure: *c=1*, sequential commits (the latency one request adds, p50/p99 in us);
*c=32*, 32 coroutines committing in a loop (records/s the loop sustains, and the process's
CPU us per record). Modes alternate within each repeat; medians over the repeats.

    python bench/audit_commit.py [--records 4000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

from proxy.audit.sink import JsonlAuditSink
from proxy.config.model import AuditConfig, InlineWrites
from proxy.metrics import Metrics

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from samples import audited_exchange

MODES: dict[str, InlineWrites] = {
    "writer thread": "never",
    "inline write when idle (default)": "when_idle",
    "inline write always": "always",
}


async def one_run(folder: Path, inline: InlineWrites, records: int) -> tuple[float, float, float, float]:
    """``(c=1 p50 us, c=1 p99 us, c=32 records/s, c=32 CPU us/record)``."""
    sink = JsonlAuditSink(
        AuditConfig(path=folder / f"audit-{time.monotonic_ns()}.jsonl"),
        metrics=Metrics(),
        inline=inline,
    )
    for i in range(200):  # warm: price map, file
        await sink.commit(audited_exchange(i))
    times = []
    for i in range(records):
        t0 = time.perf_counter()
        await sink.commit(audited_exchange(i))
        times.append((time.perf_counter() - t0) * 1e6)
    times.sort()
    per_worker = records // 32

    async def worker(w: int) -> None:
        for i in range(per_worker):
            await sink.commit(audited_exchange(w * per_worker + i))

    t0, c0 = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker(w) for w in range(32)))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    await sink.aclose()
    done = per_worker * 32
    return times[len(times) // 2], times[int(len(times) * 0.99)], done / wall, cpu * 1e6 / done


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=4000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    results: dict[str, list[tuple[float, float, float, float]]] = {name: [] for name in MODES}
    with tempfile.TemporaryDirectory(prefix="tersegate-audit-bench-") as tmp:
        for _ in range(args.repeats):
            for name, inline in MODES.items():
                results[name].append(asyncio.run(one_run(Path(tmp), inline, args.records)))
    print(f"Command: `python bench/audit_commit.py --records {args.records} --repeats {args.repeats}`\n")
    print("| audit write | c=1 p50 us | c=1 p99 us | c=32 records/s | c=32 CPU us/record |")
    print("|---|---|---|---|---|")
    for name, runs in results.items():
        p50, p99, rps, cpu = (statistics.median(r[k] for r in runs) for k in range(4))
        print(f"| {name} | {p50:.1f} | {p99:.1f} | {rps:,.0f} | {cpu:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
