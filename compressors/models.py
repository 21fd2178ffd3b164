"""Heavy models load lazily on first use, once per process, behind a lock.

A second caller waits for the first load and reuses its result.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

__all__ = ["load_once"]

T = TypeVar("T")

_lock = threading.Lock()
_key_locks: dict[Hashable, threading.Lock] = {}
_loaded: dict[Hashable, Any] = {}


def load_once(key: Hashable, loader: Callable[[], T]) -> T:
    """Return the object cached under ``key``, calling ``loader`` once to make it."""
    try:
        return _loaded[key]  # type: ignore[no-any-return]
    except KeyError:
        pass
    with _lock:
        key_lock = _key_locks.setdefault(key, threading.Lock())
    with key_lock:
        if key not in _loaded:
            _loaded[key] = loader()
        return _loaded[key]  # type: ignore[no-any-return]
