"""How fast ``tersegate report`` is over 1,000,000 audit records (bar: < 5 s).

Generates realistic records (5 teams, 4 models, 30 days, a valid hash chain,
rotated into files of 100 MB), then times the real command as a subprocess:
cold (the SQLite index is built from scratch), warm (index up to date, the
usual case), and a JSONL scan without the index. Medians over ``--repeats``.

    python bench/report_speed.py [--records 1000000] [--repeats 3] [--dir /tmp/tersegate-report-bench]
"""

from __future__ import annotations

import argparse
import hashlib
import random
import shutil
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import orjson

from proxy.audit.chainfile import GENESIS
from proxy.audit.chains import rotated_name
from proxy.audit.pricing import PriceBook, costs_for

TEAMS = ("search", "support", "rag", "agents", "analytics")
MODELS = ("gpt-4o", "gpt-4o-mini", "gpt-4.1", "o3-mini")
START = datetime(2025, 5, 1, tzinfo=UTC).timestamp()
ROTATE_BYTES = 100 * 1024 * 1024


def generate(folder: Path, count: int) -> list[Path]:
    rng = random.Random(7)
    book = PriceBook()
    prices = {model: book.price_for(model) for model in MODELS}
    source = book.source
    path = folder / "audit.jsonl"
    out = path.open("wb")
    size, prev = 0, GENESIS
    for i in range(count):
        model = MODELS[i % len(MODELS)]
        before = rng.randint(200, 20_000)
        after = before if i % 50 == 0 else int(before * rng.uniform(0.3, 0.9))
        usage = {
            "prompt_tokens": after + 40,
            "completion_tokens": rng.randint(10, 800),
            "cached_tokens": rng.choice((0, 0, 1024, 2048)),
            "reasoning_tokens": 0,
        }
        costs = costs_for(prices[model], usage, prompt_delta=before - after)
        ts = START + i * (30 * 86_400 / count)
        record = {
            "ts": datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
            "request_id": f"{i:024x}",
            "upstream_request_id": f"req_{i:024x}",
            "team": TEAMS[i % len(TEAMS)],
            "key_id": f"{i % 97:012x}",
            "policy": "default",
            "rules": ["trim-tool-output"],
            "mode": "enforce",
            "route": "/v1/chat/completions",
            "model": model,
            "stream": i % 3 == 0,
            "status": 200,
            "tokens_before": before,
            "tokens_after": after,
            "usage": usage,
            "cost_before_usd": costs.before_usd,
            "cost_after_usd": costs.after_usd,
            "saved_usd": costs.saved_usd,
            "price_missing": costs.price_missing,
            "price_source": source,
            "compress_ms": round(rng.uniform(0.5, 30), 3),
            "upstream_ms": round(rng.uniform(200, 4000), 3),
            "fail_open": "timeout" if i % 50 == 0 else None,
            "prev_hash": prev,
        }
        prev = record["hash"] = hashlib.sha256(orjson.dumps(record, option=orjson.OPT_SORT_KEYS)).hexdigest()
        line = orjson.dumps(record) + b"\n"
        if size + len(line) > ROTATE_BYTES:
            out.close()
            path.rename(rotated_name(path, START + i))
            out, size = path.open("wb"), 0
        out.write(line)
        size += len(line)
    out.close()
    return sorted(folder.glob("*.jsonl"))


def timed(args: list[str]) -> float:
    t0 = time.perf_counter()
    result = subprocess.run(args, capture_output=True, check=True)
    elapsed = time.perf_counter() - t0
    assert result.stdout.startswith(b"["), result.stderr
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/tersegate-report-bench"))
    parser.add_argument("--reuse", action="store_true", help="keep the records already in --dir")
    args = parser.parse_args()
    t0 = time.perf_counter()
    if args.reuse and any(args.dir.glob("*.jsonl")):
        files = sorted(args.dir.glob("*.jsonl"))
    else:
        shutil.rmtree(args.dir, ignore_errors=True)
        args.dir.mkdir(parents=True)
        files = generate(args.dir, args.records)
    total_mb = sum(f.stat().st_size for f in files) / 1e6
    print(
        f"{args.records:,} records in {len(files)} files ({total_mb:.0f} MB) in {time.perf_counter() - t0:.1f} s"
    )
    exe = [
        sys.executable,
        "-m",
        "proxy.cli",
        "report",
        "--audit",
        str(args.dir),
        "--by",
        "team,model,day",
        "--format",
        "json",
    ]
    index = args.dir / "index.sqlite"
    cold, warm = [], []
    for _ in range(args.repeats):
        index.unlink(missing_ok=True)
        for suffix in ("-wal", "-shm"):
            Path(str(index) + suffix).unlink(missing_ok=True)
        cold.append(timed([*exe, "--index", str(index)]))
        warm.append(timed([*exe, "--index", str(index)]))
    warm += [timed([*exe, "--index", str(index)]) for _ in range(args.repeats)]
    scan = [timed([*exe, "--no-index"]) for _ in range(args.repeats)]
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "proxy.cli", "audit", "verify", str(args.dir)], check=True, capture_output=True
    )
    verify_s = time.perf_counter() - t0
    print(
        f"report cold (index built)  median {statistics.median(cold):.2f} s  runs {[round(x, 2) for x in cold]}"
    )
    print(
        f"report warm (index current) median {statistics.median(warm):.2f} s  runs {[round(x, 2) for x in warm]}"
    )
    print(
        f"report JSONL scan, no index median {statistics.median(scan):.2f} s  runs {[round(x, 2) for x in scan]}"
    )
    print(f"audit verify (whole chain)  {verify_s:.2f} s")
    print(f"index size {index.stat().st_size / 1e6:.0f} MB")


if __name__ == "__main__":
    main()
