"""A worker's seat among the ``listen.workers`` server processes, and the readiness board they share.

The supervisor (:mod:`proxy.server.supervisor`) starts each worker with its seat in
the environment: its index, the worker count, the run folder, the listening socket's
fd and the read end of a pipe whose other end only the supervisor holds (end of
file: the supervisor is gone, drain and exit). Each worker publishes its readiness
to ``<run>/ready/<index>.json``; ``GET /readyz``, whichever worker answers it, is 200
only when every worker is warm.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

__all__ = ["SEAT_ENV", "WorkerSeat"]

SEAT_ENV = "TERSEGATE_WORKER_SEAT"  # "index,count,listen_fd,parent_fd,run_dir"


@dataclass(frozen=True, slots=True)
class WorkerSeat:
    index: int
    count: int
    listen_fd: int
    parent_fd: int
    run_dir: Path

    def encode(self) -> str:
        return f"{self.index},{self.count},{self.listen_fd},{self.parent_fd},{self.run_dir}"

    @classmethod
    def from_env(cls) -> WorkerSeat | None:
        raw = os.environ.get(SEAT_ENV)
        if not raw:
            return None
        index, count, listen_fd, parent_fd, run_dir = raw.split(",", 4)
        return cls(int(index), int(count), int(listen_fd), int(parent_fd), Path(run_dir))

    def _board(self, index: int) -> Path:
        return self.run_dir / "ready" / f"{index}.json"

    def publish(self, pending: list[str], failed: dict[str, str]) -> None:
        """Write this worker's readiness for its siblings (atomically: temp file, then rename)."""
        path = self._board(self.index)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(orjson.dumps({"pid": os.getpid(), "pending": pending, "failed": failed}))
        tmp.replace(path)

    def siblings(self) -> tuple[list[str], dict[str, str]]:
        """What the other workers still wait for, each item prefixed with its worker."""
        pending: list[str] = []
        failed: dict[str, str] = {}
        for index in range(self.count):
            if index == self.index:
                continue
            state: Any = None
            with contextlib.suppress(OSError, orjson.JSONDecodeError):
                state = orjson.loads(self._board(index).read_bytes())
            if not isinstance(state, dict):
                pending.append(f"worker {index}: starting")
                continue
            pending.extend(f"worker {index}: {item}" for item in state.get("pending", []))
            failed.update({f"worker {index}: {k}": v for k, v in state.get("failed", {}).items()})
        return pending, failed

    def forget(self, index: int) -> None:
        """The supervisor's side: worker ``index`` exited; its replacement starts unready."""
        with contextlib.suppress(OSError):
            self._board(index).unlink()
