"""One hash chain per writing process: slots claimed by flock, found by verify and report, kept by rotation."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import orjson
import pytest
from harness import tersegate_command
from samples import audited_exchange

from proxy.audit.chainfile import GENESIS
from proxy.audit.chains import audit_chains, audit_files, chain_of
from proxy.audit.sink import JsonlAuditSink
from proxy.config.model import AuditConfig, InlineWrites
from proxy.metrics import Metrics


def sink(path: Path, *, inline: InlineWrites = "when_idle", **options: object) -> JsonlAuditSink:
    config = AuditConfig(path=path, **options)  # type: ignore[arg-type]
    return JsonlAuditSink(config, metrics=Metrics(), inline=inline)


async def interleave(sinks: list[JsonlAuditSink], count: int) -> None:
    """``count`` records per sink, the sinks taking turns (and racing within a turn)."""
    for i in range(count):
        await asyncio.gather(*(s.commit(audited_exchange(i * 10 + n)) for n, s in enumerate(sinks)))
    for s in sinks:
        await s.aclose()


def verify(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*tersegate_command(), "audit", "verify", *args], capture_output=True, text=True, timeout=60
    )


def lines(path: Path) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


@pytest.mark.parametrize("inline", ["when_idle", "always", "never"])
def test_two_writers_on_one_path_write_two_intact_chains(tmp_path: Path, inline: InlineWrites) -> None:
    path = tmp_path / "audit.jsonl"

    async def run() -> tuple[Path, Path]:
        first, second = sink(path, inline=inline), sink(path, inline=inline)
        chains = first.chain, second.chain
        await interleave([first, second], 20)
        return chains

    chains = asyncio.run(run())
    assert chains == (path, tmp_path / "audit.w1.jsonl")
    assert [len(lines(c)) for c in chains] == [20, 20]
    result = verify(str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok: 40 records in 2 file(s), 2 chains intact")


def test_a_freed_slot_is_resumed_by_the_next_writer(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"

    async def run() -> Path:
        held = sink(path)  # keeps slot 0 throughout
        await held.commit(audited_exchange(0))
        passing = sink(path)
        await passing.commit(audited_exchange(1))
        await passing.aclose()  # gives slot 1 back
        later = sink(path)
        await later.commit(audited_exchange(2))
        chain = later.chain
        await later.aclose()
        await held.aclose()
        return chain

    chain = asyncio.run(run())
    assert chain == tmp_path / "audit.w1.jsonl"
    first, second = lines(chain)
    assert first["prev_hash"] == GENESIS and second["prev_hash"] == first["hash"]
    assert verify(str(tmp_path)).returncode == 0


def test_rotation_keeps_each_chain_and_report_finds_every_file(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"

    async def run() -> None:
        await interleave([sink(path, rotate_bytes=2500), sink(path, rotate_bytes=2500)], 12)

    asyncio.run(run())
    chains = audit_chains(path)
    assert len(chains) == 2 and all(len(files) >= 3 for files in chains)
    assert [files[-1].name for files in chains] == ["audit.jsonl", "audit.w1.jsonl"]
    assert all(chain_of(f) == files[-1] for files in chains for f in files)
    assert sum(len(lines(f)) for f in audit_files(path)) == 24
    result = verify(str(tmp_path))
    assert result.returncode == 0, result.stderr
    report = subprocess.run(
        [*tersegate_command(), "report", "--audit", str(tmp_path), "--by", "team", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert orjson.loads(report.stdout)[0]["requests"] == 24


def test_a_tampered_second_chain_is_named(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"

    async def run() -> None:
        await interleave([sink(path), sink(path)], 4)

    asyncio.run(run())
    second = tmp_path / "audit.w1.jsonl"
    raw = second.read_bytes().splitlines(keepends=True)
    raw[2] = raw[2].replace(b'"team":"default"', b'"team":"finance"')
    second.write_bytes(b"".join(raw))
    result = verify(str(tmp_path))
    assert result.returncode == 1
    assert f"{second}:3: hash mismatch" in result.stderr


def test_verify_without_paths_reads_the_config(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "audit.jsonl"

    async def run() -> None:
        await interleave([sink(path), sink(path)], 3)

    asyncio.run(run())
    config = tmp_path / "config.yaml"
    config.write_text(
        "upstreams: {openai: {base_url: 'http://127.0.0.1:1/v1'}}\nteams: {default: {}}\n"
        "audit: {path: logs/audit.jsonl}\n"
    )
    result = verify("--config", str(config))
    assert result.returncode == 0, result.stderr
    assert "ok: 6 records in 2 file(s), 2 chains intact" in result.stdout
