"""Compression work in worker processes, each job bounded by its request's deadline.

Compressors are CPU-bound Python: run in threads of the serving process they hold the GIL, so one
large prompt starved the event loop (``/healthz`` blocked for seconds) and a thread could not be
stopped once started. Here each of ``compression.workers`` processes runs one job at a time behind a
pipe. A job that has not started by its deadline never starts; a job still running at its deadline
is abandoned: its process is killed and a fresh one (forked from a preloaded forkserver, then warmed
with the current rules) takes its place, so neither the loop nor the pool is held. A late result is
never delivered. Compressor objects are small before their models load, so each job carries its
rule's compressor; a worker keeps the first one it saw per rule identity (and its loaded models).

Models load in the workers only (the serving process counts tokens, it never compresses). A reload
warms the new rules worker by worker while the others keep serving (``PolicyRewriter.adopt`` swaps
the policies once every worker has them), so a reload never leaves the pool with no warm worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import signal
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.context import ForkServerContext
from typing import Any

from compressors.base import Compressor, CompressorError
from compressors.embedding import cache_scope
from compressors.tokenizer import tokenizer_for
from proxy.policy.model import Step
from proxy.policy.query import QueryPlan
from proxy.policy.steps import StepTrace, run_steps

__all__ = [
    "WARM_MODELS",
    "WARM_TIMEOUT_S",
    "Done",
    "Failed",
    "Job",
    "WarmReport",
    "WorkerPool",
    "run_job",
]

log = logging.getLogger("tersegate.policy")

_WARM_TEXT = (
    "Document [1](Title: Warm-up) The proxy loads its models before the first request.\n\n"
    "Document [2](Title: Cache) Prompt caches bill a repeated prefix at a fraction of the price.\n\n"
    "Question: what does the proxy load first?"
)
WARM_TIMEOUT_S = 600.0  # a first model build (embedding: ONNX export) can take minutes
# Token counters of OpenAI's current encodings (o200k_base, cl100k_base): loaded at warm-up in every
# process, or the first request for a model of the other encoding spends its budget loading one.
WARM_MODELS = ("gpt-4o", "gpt-4")
# What the workers' forkserver imports once, so each worker starts with it (worker_preload: the
# token counters).
_PRELOAD = [
    "compressors.registry",
    "compressors.tokens",
    "proxy.policy.compressor_pool",
    "proxy.policy.worker_preload",
]


@dataclass(frozen=True, slots=True)
class Job:
    """One part to compress. ``deadline`` is ``time.monotonic()`` (system-wide on Linux)."""

    identity: str  # the rule's identity: what a worker caches its compressors under
    steps: tuple[Step, ...]
    text: str
    tokens: int
    plan: QueryPlan
    model: str | None
    deadline: float
    scope: str = "-"  # whose cached vectors the compressor may use (compressors.embedding.cache_scope)
    max_model_chars: int = 50_000  # compression.max_part_chars: model steps skip longer texts
    ref: str | None = None  # the original's id (proxy.policy.originals): markers carry it as hash=


@dataclass(frozen=True, slots=True)
class Done:
    text: str | None  # None: no saving, forward as is
    tokens_after: int
    ms: float
    note: str
    steps: tuple[StepTrace, ...] = ()


@dataclass(frozen=True, slots=True)
class Failed:
    reason: str
    compressor_error: bool  # a CompressorError (its message is safe to record), else the type only


@dataclass(frozen=True, slots=True)
class _Warm:
    jobs: tuple[tuple[str, tuple[Step, ...]], ...]  # (rule identity, its steps)


@dataclass(frozen=True, slots=True)
class WarmReport:
    """How one rule's warm-up went in a worker: seconds, and why it failed (None: it loaded)."""

    seconds: float
    error: str | None


def _compressors(cache: dict[str, Compressor], identity: str, steps: Sequence[Step]) -> list[Compressor]:
    """The worker's instance of each step's compressor (the first one it saw: its models stay loaded)."""
    return [cache.setdefault(f"{identity}:{i}", step.compressor) for i, step in enumerate(steps)]


def run_job(job: Job, cache: dict[str, Compressor]) -> Done:
    """What a worker process does with one job (``cache``: its compressors by rule identity and step)."""
    compressors = _compressors(cache, job.identity, job.steps)
    started = time.perf_counter()
    with cache_scope(job.scope):
        new_text, note, traces = run_steps(
            list(zip(job.steps, compressors, strict=True)),
            job.text,
            plan=job.plan,
            model=job.model,
            max_model_chars=job.max_model_chars,
            ref=job.ref,
        )
    after = tokenizer_for(job.model).count(new_text)
    ms = (time.perf_counter() - started) * 1000
    if after >= job.tokens:
        return Done(None, job.tokens, ms, note or "no saving", traces)
    return Done(new_text, after, ms, note, traces)


def _warm(message: _Warm, cache: dict[str, Compressor]) -> dict[str, WarmReport]:
    for model in WARM_MODELS:
        with contextlib.suppress(Exception):  # the serving process reports a missing encoding
            tokenizer_for(model).count("warm-up")
    report: dict[str, WarmReport] = {}
    for identity, steps in message.jobs:
        started = time.perf_counter()
        error = None
        try:  # a rule that cannot load fails open, and says why, at first use
            for step, compressor in zip(steps, _compressors(cache, identity, steps), strict=True):
                with cache_scope("warm-up"):
                    compressor.compress(
                        _WARM_TEXT, target=step.target, query="warm-up", preserve=step.preserve
                    )
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"[:300]
        report[identity] = WarmReport(time.perf_counter() - started, error)
    return report


def _serve(conn: Connection) -> None:
    """A worker process: jobs in, results out, until the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the parent drains
    cache: dict[str, Compressor] = {}
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if isinstance(message, _Warm):
            conn.send(_warm(message, cache))
            continue
        try:
            result: Done | Failed = run_job(message, cache)
        except CompressorError as exc:
            result = Failed(str(exc), compressor_error=True)
        except Exception as exc:
            result = Failed(type(exc).__name__, compressor_error=False)
        conn.send(result)


class _Worker:
    """One worker process and its pipe; ``call`` kills and replaces it when a job overruns."""

    def __init__(self, context: ForkServerContext) -> None:
        self._context = context
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tersegate-compress-io")
        self.generation = -1  # the rules it has warmed (WorkerPool's generation); -1: none
        self.conn: Connection | None = None
        self.proc: Any = None
        self._dead: list[Any] = []  # killed processes not yet reaped

    @property
    def alive(self) -> bool:
        return self.conn is not None and self.proc is not None and self.proc.is_alive()

    def spawn(self) -> None:
        """Start (or replace) the process. Blocking (the first start launches the forkserver,
        which imports the compressors): run it in a thread."""
        self.kill()
        while self._dead:
            with contextlib.suppress(Exception):
                self._dead.pop().join(5)
        self.generation = -1
        self.conn, self.proc = self._spawn()
        # The pipe's thread starts here, not in the first ``call``: Thread.start() waits for the new
        # thread to get the GIL, and on the event loop that wait was once 277 ms while warming up.
        self._io.submit(int).result()

    def _spawn(self) -> tuple[Connection, Any]:
        parent, child = self._context.Pipe()
        proc = self._context.Process(target=_serve, args=(child,), daemon=True, name="tersegate-compress")
        proc.start()
        child.close()
        return parent, proc

    def kill(self) -> None:
        """SIGKILL the process (no wait: it is reaped by the next ``spawn``, in a thread)."""
        conn, proc, self.conn, self.proc = self.conn, self.proc, None, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()
        if proc is not None:
            with contextlib.suppress(Exception):
                proc.kill()
            self._dead.append(proc)

    async def call(self, message: Job | _Warm, *, until: float | None) -> Any:
        """Send ``message`` and wait for the answer; past ``until`` (monotonic), kill the
        worker (the runner starts a new one) and raise TimeoutError. The pipe is used from a
        thread: a large job or result must not be pickled and copied on the event loop."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._io, self._roundtrip, message, until)
        except BaseException:
            self.kill()  # the pipe is mid-message, or the job overran: a fresh process follows
            raise

    def _roundtrip(self, message: Job | _Warm, until: float | None) -> Any:
        conn = self.conn
        if conn is None:
            raise EOFError("worker is not running")
        conn.send(message)
        if not conn.poll(None if until is None else max(0.0, until - time.monotonic())):
            raise TimeoutError
        return conn.recv()


class WorkerPool:
    """``workers`` processes fed from one queue. ``submit`` returns a future of Done | Failed, or
    None when the job's deadline passed before it started or while it ran."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._queue: asyncio.Queue[tuple[Job, asyncio.Future[Done | Failed | None]]] | None = None
        self._runners: list[asyncio.Task[None]] = []
        self._slots: list[_Worker] = []
        self._warm: _Warm = _Warm(())
        self._generation = 0
        self._context: ForkServerContext | None = None
        self._warming: set[_Worker] = set()  # a reload warms one worker at a time; the rest serve
        self._turn = asyncio.Event()  # set (and replaced) to wake idle runners: see _pulse
        self.report: dict[str, WarmReport] = {}  # identity -> the latest warm-up of that rule

    def _start(self) -> asyncio.Queue[tuple[Job, asyncio.Future[Done | Failed | None]]]:
        if self._queue is None:
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload(_PRELOAD)
            self._context = context
            self._queue = asyncio.Queue()
            for _ in range(self.workers):
                worker = _Worker(context)
                self._slots.append(worker)
                self._runners.append(asyncio.get_running_loop().create_task(self._runner(worker)))
        return self._queue

    def warm(self, rules: Sequence[tuple[str, tuple[Step, ...]]]) -> None:
        """Load ``rules``' compressors in every worker before its next job (and in replacements)."""
        if not rules and self._queue is None:
            return
        if [r[0] for r in rules] != [r[0] for r in self._warm.jobs] or self._queue is None:
            self._warm = _Warm(tuple(rules))
            self._generation += 1
        self._start()
        self._pulse()

    def _pulse(self) -> None:
        """Wake every runner waiting for a job, so each sees whether it must warm."""
        turn, self._turn = self._turn, asyncio.Event()
        turn.set()

    async def _next(self) -> tuple[Job, asyncio.Future[Done | Failed | None]] | None:
        """The next job, or None when woken by a pulse first (the queue keeps the job)."""
        assert self._queue is not None
        getter = asyncio.ensure_future(self._queue.get())
        pulse = asyncio.ensure_future(self._turn.wait())
        try:
            await asyncio.wait({getter, pulse}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            pulse.cancel()
            if not getter.done():
                getter.cancel()  # Queue.get leaves an item it was woken for to the next getter
        await asyncio.wait({getter})  # its cancellation takes a step; ours still propagates
        return None if getter.cancelled() else getter.result()

    async def warmed(self, timeout: float) -> None:
        """Wait until every worker has warmed the current rules (bounded by ``timeout``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(w.generation != self._generation for w in self._slots):
            await asyncio.sleep(0.02)

    def ready(self) -> bool:
        """Every worker is alive and warm (true before any start). During a reload's rolling
        warm-up the pool stays ready: every worker holds rules it can serve with."""
        return all(w.alive and w.generation >= 0 for w in self._slots)

    def submit(self, job: Job) -> asyncio.Future[Done | Failed | None]:
        future: asyncio.Future[Done | Failed | None] = asyncio.get_running_loop().create_future()
        self._start().put_nowait((job, future))
        return future

    async def _runner(self, worker: _Worker) -> None:
        assert self._queue is not None
        while True:
            await self._bring_up_to_date(worker)
            if not worker.alive:
                continue
            item = await self._next()
            if item is None:
                continue
            job, future = item
            if future.done():  # the request stopped waiting (budget, disconnect)
                continue
            if time.monotonic() >= job.deadline:
                future.set_result(None)
                continue
            try:
                result = await worker.call(job, until=job.deadline)
            except TimeoutError:
                log.info("compression job abandoned at its deadline; its worker was replaced")
                result = None
            except Exception as exc:
                result = Failed(type(exc).__name__, compressor_error=False)
            if not future.done():
                future.set_result(result)

    async def _bring_up_to_date(self, worker: _Worker) -> None:
        """Warm a new or replaced worker (or after a reload) with the current rules."""
        if not worker.alive:
            try:
                await asyncio.to_thread(worker.spawn)
            except Exception as exc:
                log.error("compression worker cannot start: %s; retrying in 1 s", type(exc).__name__)
                await asyncio.sleep(1)
                return
        if worker.generation == self._generation:
            return
        if worker.generation >= 0 and self._warming:
            return  # a reload, and another worker is warming: serve with the rules it has
        self._warming.add(worker)
        try:
            await self._warm_worker(worker)
        finally:
            self._warming.discard(worker)
            self._pulse()  # the next worker's turn

    async def _warm_worker(self, worker: _Worker) -> None:
        generation, message = self._generation, self._warm
        if worker.generation == generation:
            return
        try:
            report: dict[str, WarmReport] = await worker.call(
                message, until=time.monotonic() + WARM_TIMEOUT_S
            )
        except Exception as exc:  # the worker died or hung: each rule fails open at first use
            why = f"compression worker: {type(exc).__name__}"
            report = {identity: WarmReport(0.0, why) for identity, *_ in message.jobs}
        if generation == self._generation:
            self.report.update(report)
        worker.generation = generation

    def close(self) -> None:
        for runner in self._runners:
            runner.cancel()
        for worker in self._slots:
            worker.kill()
        self._runners.clear()
        self._slots.clear()
        self._queue = None
