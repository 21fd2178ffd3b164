"""Hot reload of config.yaml and the policies: on SIGHUP, and when a file changes.

A reload parses and validates everything off the event loop (building a
compressor may import a model library); a valid set is handed to ``apply``,
which warms its compressors in the workers while the old set serves, then swaps
it in one step, so a request sees either the old config and policies or the new
ones, and never a cold model. An invalid set is logged (``file:line: message``) and the last good one
keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

from watchfiles import Change, awatch

from proxy.config.model import Config, load_config
from proxy.config.yamlsource import ConfigErrors
from proxy.metrics import Metrics
from proxy.policy.model import PolicySet, load_policies

__all__ = ["PolicyReloader"]

log = logging.getLogger("tersegate.reload")

Apply = Callable[[Config, PolicySet], Awaitable[None]]


class PolicyReloader:
    """Watches ``config.path`` and ``config.policies_dir``; reloads on change or SIGHUP."""

    def __init__(self, config: Config, *, apply: Apply, metrics: Metrics, debounce_ms: int = 300) -> None:
        self._config = config
        self._apply = apply
        self._metrics = metrics
        self._debounce_ms = debounce_ms
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._signal_installed = False

    async def start(self) -> None:
        self._stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
            self._signal_installed = True
        except (ValueError, RuntimeError, NotImplementedError):  # not the main thread, or no SIGHUP
            log.debug("SIGHUP reload unavailable in this thread")
        self._task = asyncio.create_task(self._watch(), name="tersegate-reload-watch")

    async def aclose(self) -> None:
        self._stop.set()
        if self._signal_installed:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
            self._signal_installed = False
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def _on_sighup(self) -> None:
        asyncio.get_running_loop().create_task(self.reload(reason="SIGHUP"))

    async def reload(self, *, reason: str) -> bool:
        """Load and validate the config and its policies; apply them if valid."""
        async with self._lock:
            path = self._config.path
            try:
                config, policies = await asyncio.to_thread(_load, path)
            except ConfigErrors as exc:
                log.error("reload (%s) rejected; still serving the last good config:\n%s", reason, exc)
                self._metrics.policy_reloads.labels(outcome="error").inc()
                return False
            except Exception:  # never let a reload bug take the proxy down
                log.exception("reload (%s) failed; still serving the last good config", reason)
                self._metrics.policy_reloads.labels(outcome="error").inc()
                return False
            for warning in policies.warnings:
                log.warning("%s", warning)
            self._config = config
            await self._apply(config, policies)
            self._metrics.policy_reloads.labels(outcome="ok").inc()
            log.info("reloaded %s (%s): %d policies", path, reason, len(policies.policies))
            return True

    def _watched(self) -> tuple[Path, Path]:
        return self._config.path.resolve(), self._config.policies_dir.resolve()

    async def _watch(self) -> None:
        while not self._stop.is_set():
            config_file, policies_dir = self._watched()
            dirs = {config_file.parent, policies_dir} if policies_dir.is_dir() else {config_file.parent}

            def relevant(
                _: Change, changed: str, config_file: Path = config_file, pdir: Path = policies_dir
            ) -> bool:
                p = Path(changed)
                return p == config_file or (p.parent == pdir and p.suffix in (".yaml", ".yml"))

            try:
                async for _ in awatch(
                    *sorted(dirs),
                    watch_filter=relevant,
                    debounce=self._debounce_ms,
                    stop_event=self._stop,
                    recursive=False,
                ):
                    await self.reload(reason="file change")
                    if self._watched() != (config_file, policies_dir):
                        break  # policies_dir moved: watch the new place
            except (OSError, RuntimeError) as exc:  # a watched folder vanished; SIGHUP still works
                log.warning("file watch stopped (%s); retrying in 5 s", exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), timeout=5)


def _load(path: Path) -> tuple[Config, PolicySet]:
    config = load_config(path)
    return config, load_policies(config)
