"""Forwarding overhead: direct to the fake upstream vs through tersegate vs through LiteLLM's proxy.

One run on one machine, the same fake upstream (tests/fake_upstream.py: raw ASGI
under uvicorn + httptools + uvloop) for every target. Non-streaming chat
completions are driven by ``wrk`` (a Lua script POSTs the body) at concurrency
1 and 32; every (target, concurrency) cell is measured ``--repeats`` times,
interleaved across targets so background load hits them alike, and the median
of each figure is reported. Streaming time to first chunk is the median over
``--stream-n`` sequential streamed requests from this process.

tersegate runs as ``tersegate serve`` with compression off (no policy), once
with the audit on (JSONL, as a user runs it) and once with it off. LiteLLM's
proxy runs from its own venv (``bench/.venv-litellm``, installed only for this
benchmark: ``python -m venv bench/.venv-litellm && bench/.venv-litellm/bin/pip
install 'litellm[proxy]'``), pointed at the fake upstream as an
OpenAI-compatible model.

CPU pinning (2 cores): the proxy under test (or nothing, for direct) on CPU 0;
the fake upstream, wrk and this script on CPU 1.

    python bench/overhead.py [--duration 8] [--repeats 3] [--stream-n 200] [--no-litellm]

Prints a table and writes it, with the command, to bench/results/overhead.md.
"""

from __future__ import annotations

import argparse
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
    cpu_us: list[float] = field(default_factory=list)  # CPU time of the target process per request
    errors: int = 0

    def median(self, values: list[float]) -> float:
        return statistics.median(values) if values else float("nan")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


PIN = {"on": True}  # --no-pin turns it off


def pinned(cpu: str, argv: list[str]) -> list[str]:
    return ["taskset", "-c", cpu, *argv] if PIN["on"] and shutil.which("taskset") else argv


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


def start(
    argv: list[str], *, cpu: str, log: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            pinned(cpu, argv),
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


def tersegate_config(folder: Path, upstream_port: int, port: int, *, audit: bool) -> Path:
    path = folder / f"tersegate-{'audit' if audit else 'noaudit'}.yaml"
    audit_line = f"audit: {{path: {folder / 'audit' / 'bench.jsonl'}}}" if audit else "audit: {}"
    path.write_text(
        f"""listen: {{host: 127.0.0.1, port: {port}}}
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
    """User + system CPU time of a process (Linux /proc), 0 where unavailable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_wrk(url: str, script: Path, *, conc: int, duration: int, cell: Cell, pid: int) -> None:
    argv = pinned(
        LOAD_CPU, ["wrk", "-t1", f"-c{conc}", f"-d{duration}s", "--latency", "-s", str(script), url]
    )
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


def main() -> int:
    parser = argparse.ArgumentParser(description="tersegate forwarding overhead benchmark")
    parser.add_argument("--duration", type=int, default=8, help="seconds per wrk run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--stream-n", type=int, default=200)
    parser.add_argument("--no-litellm", action="store_true")
    parser.add_argument("--no-write", action="store_true", help="do not write bench/results/overhead.md")
    parser.add_argument("--no-pin", action="store_true", help="let the scheduler place every process")
    args = parser.parse_args()
    PIN["on"] = not args.no_pin
    if shutil.which("wrk") is None:
        print("wrk not found: apt-get install -y wrk", file=sys.stderr)
        return 1
    if PIN["on"] and hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {int(LOAD_CPU)})
    folder = Path(tempfile.mkdtemp(prefix="tersegate-overhead-"))
    script = lua_script(folder)
    up_port = free_port()
    procs: dict[str, subprocess.Popen[bytes]] = {}
    urls: dict[str, str] = {}
    load_start = os.getloadavg()
    try:
        procs["upstream"] = start(
            [sys.executable, "tests/fake_upstream.py", "--port", str(up_port)],
            cpu=LOAD_CPU,
            log=folder / "up.log",
        )
        urls["direct"] = f"http://127.0.0.1:{up_port}/v1/chat/completions"
        wait_ready(urls["direct"], procs["upstream"])
        tersegate = shutil.which("tersegate", path=str(Path(sys.executable).parent)) or "tersegate"
        for name, audit in (("tersegate (audit on)", True), ("tersegate (audit off)", False)):
            port = free_port()
            config = tersegate_config(folder, up_port, port, audit=audit)
            procs[name] = start(
                [tersegate, "serve", "--config", str(config)], cpu=PROXY_CPU, log=folder / f"{port}.log"
            )
            urls[name] = f"http://127.0.0.1:{port}/v1/chat/completions"
            wait_ready(urls[name], procs[name])
        if not args.no_litellm:
            if not LITELLM.exists():
                print(f"LiteLLM not installed at {LITELLM}; see the module docstring", file=sys.stderr)
                return 1
            port = free_port()
            procs["litellm proxy"] = start(
                [str(LITELLM), "--config", str(litellm_config(folder, up_port)), "--port", str(port)],
                cpu=PROXY_CPU,
                log=folder / "litellm.log",
                env={"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_TELEMETRY": "False", "NO_DOCS": "True"},
            )
            urls["litellm proxy"] = f"http://127.0.0.1:{port}/v1/chat/completions"
            wait_ready(urls["litellm proxy"], procs["litellm proxy"], timeout=180)
        targets = [
            t
            for t in ("direct", "tersegate (audit off)", "tersegate (audit on)", "litellm proxy")
            if t in urls
        ]
        cells = {(t, c): Cell() for t in targets for c in (1, 32)}
        # taskset execs the command, so the pid is the server's; direct: the upstream's own cost.
        pids = {name: procs["upstream" if name == "direct" else name].pid for name in targets}
        for name in targets:  # warm-up
            run_wrk(urls[name], script, conc=8, duration=2, cell=Cell(), pid=pids[name])
        for _ in range(args.repeats):
            for conc in (1, 32):
                for name in targets:
                    run_wrk(
                        urls[name],
                        script,
                        conc=conc,
                        duration=args.duration,
                        cell=cells[(name, conc)],
                        pid=pids[name],
                    )
        ttfc = {name: first_chunk_ms(urls[name], args.stream_n) for name in targets}
    finally:
        for proc in procs.values():
            stop(proc)
    report = render(args, targets, cells, ttfc, load_start)
    print(report)
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(report, encoding="utf-8")
    return 0


def render(
    args: argparse.Namespace,
    targets: list[str],
    cells: dict[tuple[str, int], Cell],
    ttfc: dict[str, float],
    load_start: tuple[float, float, float],
) -> str:
    def m(name: str, conc: int, attr: str) -> float:
        cell = cells[(name, conc)]
        return cell.median(getattr(cell, attr))

    lines = [
        "# Forwarding overhead (bench/overhead.py)",
        "",
        f"Command: `python bench/overhead.py --duration {args.duration} --repeats {args.repeats} "
        f"--stream-n {args.stream_n}{' --no-litellm' if args.no_litellm else ''}`",
        "",
        f"Machine: {os.cpu_count()} CPUs, load average at start {load_start[0]:.2f} / {load_start[1]:.2f} "
        "(other engineers' jobs share the machine). Pinning: proxy under test on CPU 0; fake upstream, "
        "wrk and the streaming client on CPU 1. Figures are medians over the repeats; non-streaming "
        "chat completions via `wrk -t1 --latency` with a POST body; time to first chunk is the median "
        "over sequential streamed requests. CPU us/request is the target process's CPU time (user + "
        "system) per request at c=32, a figure background load hardly moves (for direct: the upstream's).",
        "",
        "| target | c=1 req/s | c=1 p50 ms | c=1 p99 ms | c=32 req/s | c=32 p50 ms | c=32 p99 ms | "
        "stream first chunk ms | CPU us/request (c=32) | errors |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in targets:
        errors = cells[(name, 1)].errors + cells[(name, 32)].errors
        lines.append(
            f"| {name} | {m(name, 1, 'rps'):,.0f} | {m(name, 1, 'p50_ms'):.3f} | {m(name, 1, 'p99_ms'):.3f} | "
            f"{m(name, 32, 'rps'):,.0f} | {m(name, 32, 'p50_ms'):.2f} | {m(name, 32, 'p99_ms'):.2f} | "
            f"{ttfc[name]:.2f} | {m(name, 32, 'cpu_us'):.0f} | {errors} |"
        )
    lines += ["", "Bars:"]
    direct_p50 = m("direct", 1, "p50_ms")
    for name in ("tersegate (audit off)", "tersegate (audit on)"):
        added = (m(name, 1, "p50_ms") - direct_p50) * 1000
        rps = m(name, 32, "rps")
        lines.append(
            f"- {name}: added p50 at c=1 {added:.0f} us (bar <= 500: {'met' if added <= 500 else 'NOT met'}); "
            f"c=32 {rps:,.0f} req/s (bar >= 4,000: {'met' if rps >= 4000 else 'NOT met'})"
        )
        if "litellm proxy" in targets:
            ratio = rps / m("litellm proxy", 32, "rps")
            lines.append(
                f"  - vs LiteLLM proxy at c=32: {ratio:.1f}x (bar >= 10x: {'met' if ratio >= 10 else 'NOT met'})"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
