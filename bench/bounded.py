"""Bounded work (issue 13): one large prompt vs everyone else, and mixed load with unique texts.

Two proxies side by side in one run, on the same fake upstream: ``before`` (main at d401771,
extracted with ``git archive`` into a temporary folder) and ``after`` (this tree). Both run
``tersegate serve`` with the shipped ``support`` policy (``tokens`` compressor, 300 ms budget) and
no audit.

* ``/healthz`` p99 (and max) while one large prompt (2 MB, 30 MB) is in flight, polled every 20 ms
  from a separate process; the big request gets at most ``--big-timeout`` seconds (the before
  proxy needs minutes for 30 MB: the figure is then marked as cut).
* Mixed load: ``wrk`` at concurrency 16 posting chat requests whose user message is a ~2,400
  character support ticket; 0% or 20% of them unique (never seen, so compressed), the rest drawn
  from 20 fixed texts (compressed once, then memo hits). Requests per second.

    python bench/bounded.py [--duration 8] [--big-timeout 30] [--only after] [--before REV]
                            [--audit] [--sizes 2,30]

``--audit`` turns the audit on in both proxies (its cache model reads and writes a digest per 128
tokens of a parsed prompt: ~24,000 for 6 MB); ``--before`` names the commit of the ``before`` tree.

Prints a table and writes it, with the command, to bench/results/bounded.md.
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
from pathlib import Path

import httpx
import orjson

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "bounded.md"
sys.path.insert(0, str(ROOT / "tests"))
import samples  # noqa: E402

BEFORE = "d401771"
PROBE = """
import sys, time, httpx
latencies = []
with httpx.Client(timeout=5) as client:
    print("started", flush=True)
    import select
    while not select.select([sys.stdin], [], [], 0)[0]:
        started = time.perf_counter()
        try:
            client.get(sys.argv[1] + "/healthz")
            latencies.append((time.perf_counter() - started) * 1000)
        except httpx.HTTPError:
            latencies.append(5000.0)  # a timed-out probe counts as 5 s
        time.sleep(0.02)
print(" ".join(f"{x:.2f}" for x in latencies), flush=True)
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def ticket(chars: int, seed: int) -> str:
    return samples.ticket(chars, seed, end=" ")


def tree_for(name: str, folder: Path, before: str) -> Path:
    if name == "after":
        return ROOT
    target = folder / "before"
    target.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", before], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True)
    return target


def start_proxy(
    tree: Path, folder: Path, upstream: str, *, audit: bool
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    (folder / "policies").mkdir(parents=True)
    shutil.copy(ROOT / "policies" / "support.yaml", folder / "policies" / "support.yaml")
    config = {
        "listen": {"host": "127.0.0.1", "port": port},
        "auth": "passthrough",
        "upstreams": {"fake": {"base_url": upstream + "/v1", "timeout_s": 600}},
        "default_upstream": "fake",
        "teams": {"default": {"policy": "support"}},
        "log_level": "warning",
    }
    if audit:
        config["audit"] = {"path": "audit.jsonl"}
    (folder / "config.yaml").write_bytes(orjson.dumps(config))  # JSON is YAML
    env = {**os.environ, "PYTHONPATH": str(tree)}
    log = (folder / "proxy.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "proxy.cli", "serve", "--config", str(folder / "config.yaml")],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=folder,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            health = httpx.get(url + "/healthz", timeout=2).json()
            if health.get("compression", "ready") == "ready":
                break
        time.sleep(0.2)
    time.sleep(2)  # the before tree has no readiness report: give its warm-up time
    return proc, url


def big_prompt(url: str, megabytes: int, timeout: float) -> tuple[float, float, float, bool]:
    """(healthz p99 ms, max ms, seconds the big request took, finished)."""
    probe = subprocess.Popen(
        [sys.executable, "-c", PROBE, url], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert probe.stdout is not None and probe.stdout.readline().strip() == "started"
    time.sleep(0.5)
    body = orjson.dumps(
        {"model": "gpt-4o", "messages": [{"role": "user", "content": ticket(megabytes * 10**6, megabytes)}]}
    )
    started = time.monotonic()
    finished = True
    try:
        httpx.post(
            url + "/v1/chat/completions",
            content=body,
            headers={"content-type": "application/json"},
            timeout=timeout,
        )
    except httpx.HTTPError:
        finished = False
    took = time.monotonic() - started
    time.sleep(0.5)  # the audit's commit (and its cache model) runs after the response is sent
    out, _ = probe.communicate("stop\n", timeout=60)
    latencies = [float(x) for x in out.split()]
    return statistics.quantiles(latencies, n=100, method="inclusive")[98], max(latencies), took, finished


def lua(folder: Path, unique_pct: int) -> Path:
    base = ticket(2400, 99).replace('"', "")
    path = folder / f"mixed{unique_pct}.lua"
    path.write_text(
        f"""
local base = "{base}"
local fixed = {{}}
local counter = 0
local threads = 0
function setup(thread) thread:set("tid", threads); threads = threads + 1 end
local function body(tag)
  return '{{"model":"gpt-4o","messages":[{{"role":"user","content":"' .. tag .. ' ' .. base .. '"}}]}}'
end
function init(args) for i = 1, 20 do fixed[i] = body("Fixed ticket " .. i .. ".") end end
function request()
  counter = counter + 1
  local text
  if counter % 100 < {unique_pct} then text = body("Ticket " .. tid .. "-" .. counter .. ".")
  else text = fixed[counter % 20 + 1] end
  return wrk.format("POST", "/v1/chat/completions",
    {{["Content-Type"] = "application/json", ["Authorization"] = "Bearer k"}}, text)
end
""",
        encoding="utf-8",
    )
    return path


def mixed(url: str, script: Path, duration: int) -> tuple[float, int]:
    argv = ["wrk", "-t2", "-c16", f"-d{duration}s", "-s", str(script), url + "/v1/chat/completions"]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    rps, errors = 0.0, 0
    for line in out.splitlines():
        parts = line.split()
        if line.startswith("Requests/sec:"):
            rps = float(parts[1])
        elif "Non-2xx" in line or "Socket errors" in line or "timeout" in line:
            errors += sum(int(p.strip(",")) for p in parts if p.strip(",").isdigit())
    return rps, errors


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)  # the before proxy may be stuck compressing for minutes
        proc.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=8)
    parser.add_argument("--big-timeout", type=float, default=30.0)
    parser.add_argument("--only", choices=("before", "after"))
    parser.add_argument("--before", default=BEFORE, help="the before tree's commit")
    parser.add_argument("--audit", action="store_true", help="the audit on in both proxies")
    parser.add_argument("--sizes", default="2,30", help="megabytes of the large prompts, comma-separated")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    targets = [args.only] if args.only else ["before", "after"]
    rows: list[str] = []
    with tempfile.TemporaryDirectory(prefix="tersegate-bounded-") as tmp:
        folder = Path(tmp)
        fake_port = free_port()
        fake = subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "fake_upstream.py"), "--port", str(fake_port)],
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        upstream = f"http://127.0.0.1:{fake_port}"
        time.sleep(2)
        try:
            for name in targets:
                tree = tree_for(name, folder, args.before)
                cells: list[str] = []
                proc, url = start_proxy(tree, folder / f"{name}-mixed", upstream, audit=args.audit)
                try:
                    for pct in (0, 20):
                        rps, errors = mixed(url, lua(folder, pct), args.duration)
                        cells.append(f"{rps:,.0f}" + (f" ({errors} errors)" if errors else ""))
                finally:
                    stop(proc)
                for megabytes in sizes:
                    proc, url = start_proxy(tree, folder / f"{name}-{megabytes}", upstream, audit=args.audit)
                    try:
                        p99, worst, took, done = big_prompt(url, megabytes, args.big_timeout)
                    finally:
                        stop(proc)
                    note = f"{took:.1f} s" if done else f"not done after {took:.0f} s (cut)"
                    cells.append(f"{p99:,.0f} / {worst:,.0f} ms; big request {note}")
                rows.append(f"| {name} | " + " | ".join(cells) + " |")
                print(rows[-1], flush=True)
        finally:
            fake.send_signal(signal.SIGINT)
            fake.wait(10)
    header = (
        "| tree | mixed req/s, 0% unique | mixed req/s, 20% unique | "
        + " | ".join(f"/healthz p99 / max, {size} MB prompt in flight" for size in sizes)
        + " |\n|"
        + "---|" * (3 + len(sizes))
    )
    load = os.getloadavg()
    text = (
        "# Bounded work: large prompts and mixed load\n\n"
        f"Command: `python bench/bounded.py {' '.join(sys.argv[1:])}`; before = main at {args.before}; "
        f"audit {'on' if args.audit else 'off'}; load average at the end {load[0]:.1f} (2 cores, shared).\n\n"
        f"{header}\n" + "\n".join(rows) + "\n"
    )
    RESULTS.write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
