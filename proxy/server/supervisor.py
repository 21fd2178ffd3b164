"""``listen.workers: N``: N server processes on one port, kept running by a small supervisor.

The supervisor binds the listening socket once and starts N workers (each a fresh
``tersegate serve`` interpreter: no fork of a process holding threads or models),
which inherit the socket and accept from it; the kernel hands each new connection to
one of them, and connections waiting in the backlog survive a worker's death. The
supervisor loads no models and serves no requests. It

- replaces a worker that exits on its own (a crash, an OOM kill), backing off if one
  keeps dying at start-up;
- forwards SIGHUP to every worker (each reloads config and policies; each also
  watches the files itself);
- on SIGTERM or SIGINT stops replacing, closes its copy of the socket, sends SIGTERM
  to every worker once and waits while they drain, then exits 0 (workers run in
  their own process group, so a terminal's Ctrl-C reaches them only this way);
- gives each worker a pipe whose write end only the supervisor holds: if the
  supervisor dies (even SIGKILL), the workers read end-of-file and drain and exit.

Per run it makes a fresh folder for prometheus-client's multiprocess files and the
readiness board, and removes it at exit. See docs/workers.md.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from prometheus_client import multiprocess

from proxy.server.seats import SEAT_ENV, WorkerSeat

__all__ = ["Supervisor", "bind_socket", "worker_command"]

log = logging.getLogger("tersegate.supervisor")

_TICK_S = 0.1
_QUICK_DEATH_S = 10.0  # a worker dying sooner than this after its start counts towards back-off
_MAX_BACKOFF_S = 30.0


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` that child processes can inherit."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


@dataclass(slots=True)
class _Worker:
    index: int
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    quick_deaths: int = 0
    restart_at: float = 0.0


@dataclass(slots=True)
class Supervisor:
    """Runs ``command`` (a ``tersegate serve`` worker command line) ``count`` times on ``sock``."""

    command: Sequence[str]
    count: int
    sock: socket.socket
    grace_s: float = 30.0
    workers: list[_Worker] = field(default_factory=list)
    _stopping: bool = False
    _hup: bool = False
    _run_dir: Path = Path()
    _pipe_w: int = -1
    _pipe_r: int = -1

    def run(self) -> int:
        self._run_dir = Path(tempfile.mkdtemp(prefix="tersegate-run-"))
        (self._run_dir / "metrics").mkdir()
        self._pipe_r, self._pipe_w = os.pipe()
        os.set_inheritable(self._pipe_r, True)
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, self._on_signal)
        try:
            self.workers = [_Worker(i) for i in range(self.count)]
            for worker in self.workers:
                self._start(worker)
            while not self._stopping:
                self._tick()
                time.sleep(_TICK_S)
            self._drain()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            os.close(self._pipe_w)
            os.close(self._pipe_r)
            shutil.rmtree(self._run_dir, ignore_errors=True)
        return 0

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            self._hup = True
        elif not self._stopping:
            self._stopping = True
            log.info("%s: draining %d workers", signal.Signals(signum).name, self.count)

    def _seat(self, worker: _Worker) -> WorkerSeat:
        return WorkerSeat(worker.index, self.count, self.sock.fileno(), self._pipe_r, self._run_dir)

    def _start(self, worker: _Worker) -> None:
        env = {
            **os.environ,
            SEAT_ENV: self._seat(worker).encode(),
            "PROMETHEUS_MULTIPROC_DIR": str(self._run_dir / "metrics"),
        }
        worker.proc = subprocess.Popen(
            list(self.command),
            env=env,
            pass_fds=(self.sock.fileno(), self._pipe_r),
            process_group=0,  # Ctrl-C reaches the supervisor only; it forwards SIGTERM once
        )
        worker.started = time.monotonic()
        log.info("worker %d started (pid %d)", worker.index, worker.proc.pid)

    def _tick(self) -> None:
        if self._hup:
            self._hup = False
            log.info("SIGHUP: reloading every worker")
            self._signal_all(signal.SIGHUP)
        now = time.monotonic()
        for worker in self.workers:
            proc = worker.proc
            if proc is not None and proc.poll() is not None:
                self._reap(worker, proc, now)
            if worker.proc is None and now >= worker.restart_at:
                self._start(worker)

    def _reap(self, worker: _Worker, proc: subprocess.Popen[bytes], now: float) -> None:
        multiprocess.mark_process_dead(proc.pid, str(self._run_dir / "metrics"))  # type: ignore[no-untyped-call]
        self._seat(worker).forget(worker.index)
        worker.proc = None
        lived = now - worker.started
        worker.quick_deaths = worker.quick_deaths + 1 if lived < _QUICK_DEATH_S else 0
        delay = min(_MAX_BACKOFF_S, 0.5 * 2 ** (worker.quick_deaths - 1)) if worker.quick_deaths else 0.0
        worker.restart_at = now + delay
        how = f"signal {-proc.returncode}" if proc.returncode < 0 else f"status {proc.returncode}"
        log.error(
            "worker %d (pid %d) exited with %s after %.1f s; replacing it%s",
            worker.index,
            proc.pid,
            how,
            lived,
            f" in {delay:.1f} s" if delay else "",
        )

    def _signal_all(self, sig: int) -> None:
        for worker in self.workers:
            if worker.proc is not None and worker.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    worker.proc.send_signal(sig)

    def _drain(self) -> None:
        self.sock.close()  # no new worker will accept; the workers stop accepting as they drain
        self._signal_all(signal.SIGTERM)
        deadline = time.monotonic() + self.grace_s + 10
        for worker in self.workers:
            if worker.proc is None:
                continue
            try:
                worker.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error(
                    "worker %d (pid %d) did not drain in time; killing it", worker.index, worker.proc.pid
                )
                worker.proc.kill()
                worker.proc.wait()
        log.info("all workers stopped")


def worker_command(argv: Sequence[str]) -> list[str]:
    """The command line that runs one worker: this interpreter, the same ``serve`` options."""
    return [sys.executable, "-m", "proxy.cli", *argv]
