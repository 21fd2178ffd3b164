"""Heavy models load lazily on first use, once per process, behind a lock.

A second caller waits for the first load and reuses its result. :func:`unload` forgets them
(a test run between modules, a process done with its models), except those loaded ``pinned``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

__all__ = ["load_once", "unload"]

T = TypeVar("T")

_lock = threading.Lock()
_key_locks: dict[Hashable, threading.Lock] = {}
_loaded: dict[Hashable, Any] = {}
_pinned: set[Hashable] = set()


def load_once(key: Hashable, loader: Callable[[], T], *, pinned: bool = False) -> T:
    """Return the object cached under ``key``, calling ``loader`` once to make it.

    ``pinned``: :func:`unload` keeps it (for objects that other caches hold anyway, where
    unloading would only make the next caller load a second copy)."""
    try:
        return _loaded[key]  # type: ignore[no-any-return]
    except KeyError:
        pass
    with _lock:
        key_lock = _key_locks.setdefault(key, threading.Lock())
        if pinned:
            _pinned.add(key)
    with key_lock:
        try:
            return _loaded[key]  # type: ignore[no-any-return]
        except KeyError:  # still absent, or unloaded since the first look: load it
            loaded = _loaded[key] = loader()
            return loaded


def unload() -> int:
    """Forget every loaded object except the pinned ones, so its memory can be given back once
    no caller holds it (the next use loads it again). Returns how many were forgotten."""
    with _lock:
        keys = [key for key in _loaded if key not in _pinned]
        for key in keys:
            del _loaded[key]
    return len(keys)
