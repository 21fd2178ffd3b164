"""Forwarding overhead: direct to the fake upstream vs through tersegate vs through LiteLLM's proxy.

One run on one machine, the same fake upstream (tests/fake_upstream.py: raw ASGI
under uvicorn + httptools + uvloop) for every target. Non-streaming chat
completions are driven by ``wrk`` (a Lua script POSTs the body) at concurrency
1 and 32; every (target, concurrency) cell is measured ``--repeats`` times,
interleaved across targets so background load hits them alike, and the median
of each figure is reported. Streaming time to first chunk is the median over
``--stream-n`` sequential streamed requests from this process.

tersegate runs as ``tersegate serve`` with compression off (no policy), once
with the audit on (JSONL plus the live SQLite report index, as config.yaml
ships it) and once with it off. LiteLLM's
proxy runs from its own venv (``bench/.venv-litellm``, installed only for this
benchmark: ``python -m venv bench/.venv-litellm && bench/.venv-litellm/bin/pip
install 'litellm[proxy]'``), pointed at the fake upstream as an
OpenAI-compatible model.

CPU placement (2 cores), reported with the figures. Concurrency 32, "split":
the proxy under test on CPU 0; the fake upstream, wrk and this script on CPU 1.
Concurrency 1 is measured in two placements: "one CPU" (everything on CPU 1)
and "split". In this VM a wake-up on the other CPU costs tens to hundreds of
microseconds (the proxy adds four of them per request in the split placement,
direct has none), which is a property of the machine rather than of the proxy;
the one-CPU figure is the proxy's own added latency. Streaming time to first
chunk is measured in the one-CPU placement.

Scale-out: ``--workers 2`` adds a tersegate target with the audit on and ``listen.workers: 2``
(its workers are placed with the proxy), and a *free* placement at c=32 where nothing is pinned,
so one worker and two can be compared on both cores. ``--baseline DIR`` adds the audit-on target
run from another checkout of tersegate (``PYTHONPATH=DIR``), e.g. the commit before a change.

    python bench/overhead.py [--duration 8] [--repeats 3] [--stream-n 200] [--no-litellm]
        [--workers 2] [--baseline /tmp/tersegate-before]

Prints a table and writes it, with the command, to bench/results/overhead.md.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
LITELLM = ROOT / "bench" / ".venv-litellm" / "bin" / "litellm"
RESULTS = ROOT / "bench" / "results" / "overhead.md"
BODY = '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello to the benchmark, please."}]}'
STREAM_BODY = BODY[:-1] + ',"stream":true}'
PROXY_CPU, LOAD_CPU = "0", "1"
# LiteLLM's proxy refuses to start without a strong master key; every target gets the same header.
BENCH_KEY = "sk-" + os.urandom(32).hex()
HEADERS = {"content-type": "application/json", "authorization": f"Bearer {BENCH_KEY}"}


@dataclass
class Cell:
    rps: list[float] = field(default_factory=list)
    p50_ms: list[float] = field(default_factory=list)
    p99_ms: list[float] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)  # the target process's CPU time per request
    errors: int = 0

    def median(self, values: list[float]) -> float:
        return statistics.median(values) if values else float("nan")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def pinned(cpu: str, argv: list[str]) -> list[str]:
    return ["taskset", "-c", cpu, *argv] if shutil.which("taskset") else argv


def tree(pid: int) -> list[int]:
    """``pid`` and its descendants (a supervisor's workers)."""
    found = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            for child in (task / "children").read_text().split():
                found.extend(tree(int(child)))
    return found


def place(pid: int, cpu: str | None) -> None:
    """Move every thread of ``pid`` and its children to ``cpu`` (None: any CPU)."""
    cpus = set(range(os.cpu_count() or 1)) if cpu is None else {int(cpu)}
    for proc in tree(pid):
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{proc}/task").iterdir():
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(int(task.name), cpus)


def wait_ready(url: str, proc: subprocess.Popen[bytes], *, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        try:
            r = httpx.post(url, content=BODY, headers=HEADERS, timeout=5)
            if r.status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready")


def start(argv: list[str], *, log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            cwd=ROOT,
        )


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def tersegate_config(
    folder: Path,
    upstream_port: int,
    port: int,
    *,
    audit: bool,
    workers: int = 1,
    index: bool = True,
    inline_writes: str | None = None,
) -> Path:
    path = folder / f"tersegate-{'audit' if audit else 'noaudit'}-{port}.yaml"
    sub = folder / f"audit-{port}"
    # As config.yaml ships: the JSONL plus the SQLite report index the proxy keeps current.
    options = (f", sqlite: {sub / 'bench.sqlite'}" if index else "") + (
        f", inline_writes: {inline_writes}" if inline_writes else ""
    )
    audit_line = f"audit: {{path: {sub / 'bench.jsonl'}{options}}}" if audit else "audit: {}"
    path.write_text(
        f"""listen: {{host: 127.0.0.1, port: {port}{f", workers: {workers}" if workers > 1 else ""}}}
auth: passthrough
default_team: default
upstreams:
  fake: {{base_url: "http://127.0.0.1:{upstream_port}/v1", api_key_env: BENCH_UNUSED_KEY}}
default_upstream: fake
policies_dir: {folder / "policies"}
{audit_line}
log_level: warning
teams:
  default: {{}}
""",
        encoding="utf-8",
    )
    (folder / "policies").mkdir(exist_ok=True)
    return path


def litellm_config(folder: Path, upstream_port: int) -> Path:
    path = folder / "litellm.yaml"
    path.write_text(
        f"""model_list:
  - model_name: gpt-4o-mini
    litellm_params:
      model: openai/gpt-4o-mini
      api_base: http://127.0.0.1:{upstream_port}/v1
      api_key: sk-fake
litellm_settings:
  telemetry: false
  drop_params: true
general_settings:
  master_key: {BENCH_KEY}
""",
        encoding="utf-8",
    )
    return path


def lua_script(folder: Path) -> Path:
    path = folder / "post.lua"
    escaped = BODY.replace("\\", "\\\\").replace("'", "\\'")
    path.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = '{escaped}'\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["Authorization"] = "Bearer {BENCH_KEY}"\n',
        encoding="utf-8",
    )
    return path


def _ms(text: str) -> float:
    for unit, scale in (("us", 0.001), ("ms", 1.0), ("s", 1000.0)):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * scale
    return float(text)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its live children (Linux /proc), 0 where unavailable."""
    total = 0.0
    for proc in tree(pid):
        try:
            fields = Path(f"/proc/{proc}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def run_wrk(url: str, script: Path, *, conc: int, duration: int, cell: Cell, pid: int) -> None:
    argv = ["wrk", "-t1", f"-c{conc}", f"-d{duration}s", "--latency", "-s", str(script), url]
    if len(os.sched_getaffinity(0)) == 1:  # not the free placement
        argv = pinned(LOAD_CPU, argv)
    cpu_before = cpu_seconds(pid)
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    cpu = cpu_seconds(pid) - cpu_before
    for line in out.splitlines():
        parts = line.split()
        if "requests in" in line and cpu > 0:
            cell.cpu_us.append(cpu * 1e6 / max(1, int(parts[0])))
        elif line.startswith("Requests/sec:"):
            cell.rps.append(float(parts[1]))
        elif parts[:1] == ["50%"]:
            cell.p50_ms.append(_ms(parts[1]))
        elif parts[:1] == ["99%"]:
            cell.p99_ms.append(_ms(parts[1]))
        elif "Non-2xx" in line or "Socket errors" in line:
            cell.errors += int(parts[-1]) if parts[-1].isdigit() else 1


def first_chunk_ms(url: str, n: int) -> float:
    times = []
    with httpx.Client(timeout=30) as client:
        for _ in range(n):
            t0 = time.perf_counter()
            with client.stream(
                "POST", url, content=STREAM_BODY, headers={"content-type": "application/json"}
            ) as r:
                raw = r.iter_raw()
                next(raw)
                times.append((time.perf_counter() - t0) * 1000)
                for _chunk in raw:
                    pass
    return statistics.median(times)


def start_targets(
    folder: Path, *, litellm: bool, workers: int = 1, baseline: str | None = None
) -> tuple[dict[str, subprocess.Popen[bytes]], dict[str, str]]:
    up_port = free_port()
    procs: dict[str, subprocess.Popen[bytes]] = {}
    urls: dict[str, str] = {}
    procs["direct"] = start(
        [sys.executable, "tests/fake_upstream.py", "--port", str(up_port)], log=folder / "up.log"
    )
    urls["direct"] = f"http://127.0.0.1:{up_port}/v1/chat/completions"
    wait_ready(urls["direct"], procs["direct"])
    tersegate = shutil.which("tersegate", path=str(Path(sys.executable).parent)) or "tersegate"
    variants: list[tuple[str, bool, int, dict[str, str]]] = [
        ("tersegate (audit off)", False, 1, {}),
        ("tersegate (audit on)", True, 1, {}),
    ]
    if baseline:
        variants.append(("tersegate baseline (audit on)", True, 1, {"PYTHONPATH": baseline}))
    if workers > 1:
        variants.append((f"tersegate (audit on, workers: {workers})", True, workers, {}))
    for name, audit, count, env in variants:
        port = free_port()
        config = tersegate_config(folder, up_port, port, audit=audit, workers=count)
        procs[name] = start(
            [tersegate, "serve", "--config", str(config)], log=folder / f"{port}.log", env=env
        )
        urls[name] = f"http://127.0.0.1:{port}/v1/chat/completions"
        wait_ready(urls[name], procs[name])
        if count > 1:  # every worker answered (each loads the price map on its first request)
            for _ in range(20 * count):
                httpx.post(urls[name], content=BODY, headers=HEADERS, timeout=10)
    if litellm:
        port = free_port()
        procs["litellm proxy"] = start(
            [str(LITELLM), "--config", str(litellm_config(folder, up_port)), "--port", str(port)],
            log=folder / "litellm.log",
            env={"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_TELEMETRY": "False", "NO_DOCS": "True"},
        )
        urls["litellm proxy"] = f"http://127.0.0.1:{port}/v1/chat/completions"
        wait_ready(urls["litellm proxy"], procs["litellm proxy"], timeout=180)
    return procs, urls


def apply_layout(layout: str, procs: dict[str, subprocess.Popen[bytes]]) -> None:
    """``one``: everything on the load CPU; ``split``: proxies on their own CPU; ``free``: unpinned."""
    for name, proc in procs.items():
        if layout == "free":
            place(proc.pid, None)
        else:
            place(proc.pid, LOAD_CPU if layout == "one" or name == "direct" else PROXY_CPU)
    os.sched_setaffinity(0, set(range(os.cpu_count() or 1)) if layout == "free" else {int(LOAD_CPU)})


def measure(
    args: argparse.Namespace, procs: dict[str, subprocess.Popen[bytes]], urls: dict[str, str], script: Path
) -> tuple[dict[tuple[str, int, str], Cell], dict[str, float]]:
    targets = list(urls)
    cells = {(t, c, lay): Cell() for t in targets for c, lay in RUNS}
    for layout in LAYOUTS:
        apply_layout(layout, procs)
        for name in targets:  # warm-up
            run_wrk(urls[name], script, conc=8, duration=2, cell=Cell(), pid=procs[name].pid)
        for repeat in range(args.repeats):
            # interleaved, so background load hits every target alike; each round starts one target
            # later, so no target (the baseline, added last) always runs last
            shift = repeat % len(targets)
            for conc, lay in RUNS:
                if lay != layout:
                    continue
                for name in targets[shift:] + targets[:shift]:
                    cell = cells[(name, conc, lay)]
                    run_wrk(
                        urls[name], script, conc=conc, duration=args.duration, cell=cell, pid=procs[name].pid
                    )
        if layout == "one":
            ttfc = {name: first_chunk_ms(urls[name], args.stream_n) for name in targets}
    return cells, ttfc


RUNS = ((1, "one"), (1, "split"), (32, "split"), (32, "free"))
LAYOUTS = ("one", "split", "free")


def main() -> int:
    parser = argparse.ArgumentParser(description="tersegate forwarding overhead benchmark")
    parser.add_argument("--duration", type=int, default=8, help="seconds per wrk run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--stream-n", type=int, default=200)
    parser.add_argument("--no-litellm", action="store_true")
    parser.add_argument("--no-write", action="store_true", help="do not write the results file")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results file (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=1, help="also run an audit-on target with N workers")
    parser.add_argument("--baseline", help="also run the audit-on target from this tersegate checkout")
    args = parser.parse_args()
    if shutil.which("wrk") is None or (os.cpu_count() or 1) < 2:
        print("needs wrk (apt-get install -y wrk) and 2 CPUs", file=sys.stderr)
        return 1
    if not args.no_litellm and not LITELLM.exists():
        print(f"LiteLLM not installed at {LITELLM}; see the module docstring", file=sys.stderr)
        return 1
    folder = Path(tempfile.mkdtemp(prefix="tersegate-overhead-"))
    script = lua_script(folder)
    load_start = os.getloadavg()
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        procs, urls = start_targets(
            folder, litellm=not args.no_litellm, workers=args.workers, baseline=args.baseline
        )
        cells, ttfc = measure(args, procs, urls, script)
    finally:
        for proc in procs.values():
            stop(proc)
    report = render(args, list(urls), cells, ttfc, load_start, os.getloadavg())
    print(report)
    if not args.no_write:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report, encoding="utf-8")
    return 0


def render(
    args: argparse.Namespace,
    targets: list[str],
    cells: dict[tuple[str, int, str], Cell],
    ttfc: dict[str, float],
    load_start: tuple[float, float, float],
    load_end: tuple[float, float, float],
) -> str:
    def m(name: str, conc: int, layout: str, attr: str) -> float:
        cell = cells[(name, conc, layout)]
        return cell.median(getattr(cell, attr))

    lines = [
        "# Forwarding overhead (bench/overhead.py)",
        "",
        f"Command: `python bench/overhead.py --duration {args.duration} --repeats {args.repeats} "
        f"--stream-n {args.stream_n}{' --no-litellm' if args.no_litellm else ''}"
        f"{f' --workers {args.workers}' if args.workers > 1 else ''}"
        f"{f' --baseline {args.baseline}' if args.baseline else ''}"
        f"{f' --out {args.out.relative_to(ROOT)}' if args.out != RESULTS and args.out.is_relative_to(ROOT) else ''}`",
        "",
        f"Machine: {os.cpu_count()} CPUs (a VM); 1-minute load average {load_start[0]:.2f} at start, "
        f"{load_end[0]:.2f} at end: other engineers' jobs share the machine, so req/s and latencies are "
        "noisy; CPU us/request (the target process's user + system time per request at c=32; for direct, "
        "the upstream's) is barely moved by background load. Medians over the repeats; non-streaming chat "
        "completions via `wrk -t1 --latency` with a POST body. Placement: *one CPU* = proxy, fake upstream, "
        "wrk and the streaming client all on CPU 1; *split* = proxy on CPU 0, the rest on CPU 1 (cross-CPU "
        "wake-ups are slow in this VM: four per proxied request, none for direct); *free* = nothing pinned "
        "(every process, every worker and wrk may use both CPUs).",
        "",
        "| target | c=1 p50 ms (one CPU) | c=1 p99 ms (one CPU) | c=1 req/s (one CPU) | c=1 p50 ms (split) "
        "| c=32 req/s (split) | c=32 p50 ms | c=32 p99 ms | stream first chunk ms (one CPU) "
        "| CPU us/request | c=32 req/s (free) | errors |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in targets:
        errors = sum(cells[(name, c, lay)].errors for c, lay in RUNS)
        lines.append(
            f"| {name} | {m(name, 1, 'one', 'p50_ms'):.3f} | {m(name, 1, 'one', 'p99_ms'):.3f} "
            f"| {m(name, 1, 'one', 'rps'):,.0f} | {m(name, 1, 'split', 'p50_ms'):.3f} "
            f"| {m(name, 32, 'split', 'rps'):,.0f} | {m(name, 32, 'split', 'p50_ms'):.2f} "
            f"| {m(name, 32, 'split', 'p99_ms'):.2f} | {ttfc[name]:.2f} | {m(name, 32, 'split', 'cpu_us'):.0f} "
            f"| {m(name, 32, 'free', 'rps'):,.0f} | {errors} |"
        )
    lines += ["", "Bars:"]
    for name in [t for t in targets if t.startswith("tersegate")]:
        added = (m(name, 1, "one", "p50_ms") - m("direct", 1, "one", "p50_ms")) * 1000
        added_split = (m(name, 1, "split", "p50_ms") - m("direct", 1, "split", "p50_ms")) * 1000
        rps = m(name, 32, "split", "rps")
        lines.append(
            f"- {name}: added p50 at c=1 {added:.0f} us on one CPU, {added_split:.0f} us split "
            f"(bar <= 500: {'met' if added <= 500 else 'NOT met'} on one CPU, "
            f"{'met' if added_split <= 500 else 'NOT met'} split); c=32 {rps:,.0f} req/s "
            f"(bar >= 4,000: {'met' if rps >= 4000 else 'NOT met'})"
        )
        if "litellm proxy" in targets:
            ratio = rps / m("litellm proxy", 32, "split", "rps")
            lines.append(
                f"  - vs LiteLLM proxy at c=32: {ratio:.1f}x (bar >= 10x: {'met' if ratio >= 10 else 'NOT met'})"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
