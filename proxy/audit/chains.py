"""Audit chains on disk: one hash chain per writing process, each in its own files.

The configured ``audit.path`` (``audit.jsonl``) holds chain 0. Every writer claims a
chain slot by holding an exclusive ``flock`` on ``<chain file>.lock`` for as long as it
runs: the first process gets ``audit.jsonl``, a second process writing at the same
time (another worker, or a second ``tersegate serve`` on the same config) gets
``audit.w1.jsonl``, and so on. Two processes never append to one chain, and the
kernel drops the lock when its holder dies (SIGKILL too), so the next process to
claim the slot resumes that chain from its last record. Rotation renames a chain's
active file to ``<stem>.<UTC stamp><suffix>`` (``audit.w1.20250102T030405123456Z.jsonl``),
so every chain keeps its own rotated files in order. See docs/workers.md.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

__all__ = [
    "MAX_SLOTS",
    "audit_chains",
    "audit_files",
    "chain_files",
    "chain_of",
    "chain_path",
    "claim_chain",
    "group_chains",
    "rotated_name",
]

log = logging.getLogger("tersegate.audit")

MAX_SLOTS = 256  # concurrent writers of one audit path
_STAMP = re.compile(r"\.\d{8}T\d{12}Z$")  # a rotated file's stem ends with its stamp
_SLOT = re.compile(r"\.w[1-9][0-9]*$")


def chain_path(path: Path, slot: int) -> Path:
    """``audit.jsonl`` for slot 0, ``audit.w<slot>.jsonl`` for the others."""
    return path if slot == 0 else path.with_name(f"{path.stem}.w{slot}{path.suffix}")


def rotated_name(path: Path, when: float) -> Path:
    """``audit.jsonl`` -> ``audit.20250102T030405123456Z.jsonl``: sorts before the active file, in time order."""
    stamp = datetime.fromtimestamp(when, UTC).strftime("%Y%m%dT%H%M%S%fZ")
    return path.with_name(f"{path.stem}.{stamp}{path.suffix}")


def chain_of(file: Path) -> Path:
    """The active file of the chain ``file`` belongs to (a rotated file's stamp removed)."""
    return file.with_name(_STAMP.sub("", file.stem) + file.suffix)


def chain_files(chain: Path) -> list[Path]:
    """One chain's rotated files in order, then its active file (if present)."""
    pattern = f"{chain.stem}.[0-9]*T*Z{chain.suffix}"
    rotated = sorted(p for p in chain.parent.glob(pattern) if p.is_file() and chain_of(p) == chain)
    return rotated + ([chain] if chain.is_file() else [])


def audit_chains(path: Path) -> list[list[Path]]:
    """Every chain of the audit log ``path`` (chain 0 first), each as its files in order."""
    slots = {
        chain_of(p)
        for p in path.parent.glob(f"{path.stem}.w[1-9]*{path.suffix}")
        if p.is_file() and _SLOT.search(chain_of(p).stem)
    }
    ordered = [path, *sorted(slots, key=lambda p: int(p.stem.rsplit(".w", 1)[1]))]
    return [files for chain in ordered if (files := chain_files(chain))]


def audit_files(path: Path) -> list[Path]:
    """The files of every chain of ``path``: for reports, which sum records whatever their chain."""
    return [file for chain in audit_chains(path) for file in chain]


def group_chains(paths: Sequence[Path]) -> list[list[Path]]:
    """``paths`` split by chain, in the order chains first appear, each keeping the given order."""
    chains: dict[Path, list[Path]] = {}
    for path in paths:
        chains.setdefault(chain_of(path), []).append(path)
    return list(chains.values())


def _holder(lock: Path) -> str:
    try:
        pid = lock.read_text(encoding="ascii").strip()
    except OSError:
        return "another process"
    return f"process {pid}" if pid.isdigit() else "another process"


def claim_chain(path: Path) -> tuple[Path, int]:
    """``(chain file, lock fd)``: the first free chain slot of ``path``, locked until the fd is closed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    held: list[str] = []
    for slot in range(MAX_SLOTS):
        chain = chain_path(path, slot)
        lock = chain.with_name(chain.name + ".lock")
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            held.append(f"{chain.name} is held by {_holder(lock)}")
            continue
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        if held:
            log.info("audit: %s; this process writes its own chain %s", ", ".join(held), chain.name)
        return chain, fd
    raise OSError(errno.EBUSY, f"all {MAX_SLOTS} audit chain slots of {path} are held by running processes")
