"""Fixtures shared by every test folder (their code lives in :mod:`harness`), and the evaldata marker.

Tests that read the public evaluation data (``../shared/evaldata``, see :mod:`evaldata`)
carry ``@pytest.mark.evaldata`` (optionally naming the files they read); so do tests
using a fixture that reads it (:data:`DATA_FIXTURES`). Where the data is absent they
are skipped, and the run says once, at its end, how many and how to get the data.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from harness import make_proxy, spawn_proxy, upstream

import evaldata
from compressors.models import unload

__all__ = ["make_proxy", "spawn_proxy", "upstream"]

# Fixtures that read evaluation data: a test using one needs the data as if it carried the marker.
DATA_FIXTURES = {"nq_rows": (evaldata.NQ,), "gsm8k_prompt": (evaldata.GSM8K_PROMPT,)}
SKIP_REASON = "the public evaluation data is absent"


def _needed(item: pytest.Item) -> tuple[str, ...] | None:
    """The data files ``item`` reads (all of them for a bare marker), or None if it reads none."""
    names: list[str] = []
    marked = False
    for mark in item.iter_markers("evaldata"):
        marked = True
        names.extend(mark.args)
    for fixture, files in DATA_FIXTURES.items():
        if fixture in getattr(item, "fixturenames", ()):
            marked = True
            names.extend(files)
    if not marked:
        return None
    return tuple(names)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        needed = _needed(item)
        if needed is None:
            continue
        item.add_marker(pytest.mark.evaldata)
        absent = evaldata.missing(*needed)
        if absent:
            item.add_marker(pytest.mark.skip(reason=f"{SKIP_REASON} ({absent[0]} not in {evaldata.root()})"))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    skipped = [r for r in terminalreporter.stats.get("skipped", []) if SKIP_REASON in str(r.longrepr)]
    if not skipped:
        return
    count = f"{len(skipped)} test{'s' if len(skipped) != 1 else ''}"
    terminalreporter.write_line(
        f"{count} skipped: {SKIP_REASON} at {evaldata.root()} (or ${evaldata.ENV}). "
        "Get it with `python -m evaldata.fetch`; sources and licences: README.md, 'Evaluation data'.",
        yellow=True,
    )


def _client_classes() -> list[type[Any]]:
    """``httpx.Client`` and, where installed, ``httpx2.Client`` (newer openai and anthropic SDKs
    are built on the ``httpx2`` fork: patching only httpx leaves their sockets to the collector)."""
    classes: list[type[Any]] = [httpx.Client]
    with contextlib.suppress(ImportError):
        classes.append(importlib.import_module("httpx2").Client)
    return classes


@pytest.fixture(autouse=True)
def close_http_clients() -> Iterator[None]:
    """Every HTTP client a test opens (the openai and anthropic SDK clients are ones) is closed
    when the test ends: left to the garbage collector, their keep-alive sockets raise
    ResourceWarning in whichever later test the collector happens to run."""
    opened: weakref.WeakSet[Any] = weakref.WeakSet()
    originals = {cls: cls.__init__ for cls in _client_classes()}

    def tracking(original: Callable[..., None]) -> Callable[..., None]:
        def tracked(self: Any, *args: Any, **kwargs: Any) -> None:
            original(self, *args, **kwargs)
            opened.add(self)

        return tracked

    for cls, original in originals.items():
        cls.__init__ = tracking(original)
    try:
        yield
    finally:
        for cls, original in originals.items():
            cls.__init__ = original
        for client in list(opened):
            client.close()


@pytest.fixture(autouse=True, scope="module")
def release_models() -> Iterator[None]:
    """The models a test module loaded are let go when it ends: kept for the rest of the run,
    they held most of its memory (about 2.5 GB of the 2.7 GB peak)."""
    yield
    if unload():  # a full collection costs about 0.25 s with torch loaded: only when it frees a model
        gc.collect()
