"""The audit-on path end to end: the audit's write modes (``audit.inline_writes``: when_idle, the
default; always; never, i.e. the writer thread only) and the audit off, by CPU time per request,
latency and req/s.

On a machine shared with other jobs, req/s and latency move with their load; the proxy process's own
CPU time per request (user + system, from /proc) moves much less, and it is what a request costs. Each
target is a ``tersegate serve`` (compression off, the audit on with the live SQLite index as
config.yaml ships it) pinned to CPU 0; wrk and the fake upstream run on CPU 1. Cells are interleaved
across targets, ``--repeats`` times; medians are reported.

    python bench/audit_inline.py [--modes when_idle,always,never] [--other NAME=DIR ...] \
        [--duration 4] [--repeats 5] [--no-index]

Each ``--other`` is a copy of the package with some other change (made with
``git archive HEAD proxy compressors | tar -x -C DIR`` and then edited), run in the default mode.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from overhead import (
    LOAD_CPU,
    PROXY_CPU,
    Cell,
    free_port,
    lua_script,
    place,
    run_wrk,
    start,
    stop,
    tersegate_config,
    wait_ready,
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", default="when_idle,always,never", help="audit.inline_writes values to run")
    parser.add_argument("--other", action="append", default=[], help="NAME=DIR: a variant's package")
    parser.add_argument("--duration", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-index", action="store_true", help="the audit without the live SQLite index")
    args = parser.parse_args()
    os.sched_setaffinity(0, {int(LOAD_CPU)})
    folder = Path(tempfile.mkdtemp(prefix="tersegate-audit-inline-"))
    script = lua_script(folder)
    tersegate = shutil.which("tersegate", path=str(Path(sys.executable).parent)) or "tersegate"
    up_port = free_port()
    procs = {
        "upstream": start(
            [sys.executable, "tests/fake_upstream.py", "--port", str(up_port)], log=folder / "up"
        )
    }
    urls: dict[str, str] = {}
    # name -> (audit on, audit.inline_writes, environment)
    targets: dict[str, tuple[bool, str | None, dict[str, str]]] = {"audit off": (False, None, {})}
    for mode in args.modes.split(","):
        targets[f"audit on, inline_writes: {mode}"] = (True, mode, {})
    for other in args.other:
        name, _, path = other.partition("=")
        targets[f"audit on, {name}"] = (True, None, {"PYTHONPATH": path})
    try:
        wait_ready(f"http://127.0.0.1:{up_port}/v1/chat/completions", procs["upstream"])
        place(procs["upstream"].pid, LOAD_CPU)
        for name, (audit, mode, env) in targets.items():
            port = free_port()
            config = tersegate_config(
                folder, up_port, port, audit=audit, index=not args.no_index, inline_writes=mode
            )
            procs[name] = start(
                [tersegate, "serve", "--config", str(config)], log=folder / f"{port}.log", env=env
            )
            urls[name] = f"http://127.0.0.1:{port}/v1/chat/completions"
            wait_ready(urls[name], procs[name])
            place(procs[name].pid, PROXY_CPU)
        cells = {(name, conc): Cell() for name in targets for conc in (1, 32)}
        for name in targets:  # warm-up
            run_wrk(urls[name], script, conc=8, duration=2, cell=Cell(), pid=procs[name].pid)
        for _ in range(args.repeats):
            for conc in (1, 32):
                for name in targets:
                    run_wrk(
                        urls[name],
                        script,
                        conc=conc,
                        duration=args.duration,
                        cell=cells[(name, conc)],
                        pid=procs[name].pid,
                    )
    finally:
        for proc in procs.values():
            stop(proc)
    med = statistics.median
    print(
        f"Command: `python bench/audit_inline.py --modes {args.modes} "
        f"{' '.join(repr('--other=' + o) for o in args.other)} "
        f"--duration {args.duration} "
        f"--repeats {args.repeats}{' --no-index' if args.no_index else ''}`\n"
    )
    print(
        "| target | c=1 CPU us/request | c=1 p50 ms | c=32 CPU us/request | c=32 req/s | c=32 p50 ms | errors |"
    )
    print("|---|---|---|---|---|---|---|")
    for name in targets:
        one, many = cells[(name, 1)], cells[(name, 32)]
        print(
            f"| {name} | {med(one.cpu_us):.0f} | {med(one.p50_ms):.3f} | {med(many.cpu_us):.0f} "
            f"| {med(many.rps):,.0f} | {med(many.p50_ms):.2f} | {one.errors + many.errors} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
