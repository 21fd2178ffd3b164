"""Models load once per process; unload() lets the unpinned ones go (the test run does so per module)."""

from __future__ import annotations

import threading

from compressors.models import load_once, unload


def test_a_model_loads_once_even_when_threads_ask_at_once() -> None:
    calls: list[int] = []
    key = ("test_models", "once")

    def loader() -> object:
        calls.append(1)
        return object()

    got: list[object] = []
    threads = [threading.Thread(target=lambda: got.append(load_once(key, loader))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1 and all(item is got[0] for item in got)


def test_unload_forgets_what_is_loaded_except_the_pinned() -> None:
    loose, pinned = ("test_models", "loose"), ("test_models", "pinned")
    first_loose = load_once(loose, object)
    first_pinned = load_once(pinned, object, pinned=True)
    assert unload() >= 1
    assert load_once(loose, object) is not first_loose  # loaded again
    assert load_once(pinned, object) is first_pinned
    assert unload() == 1  # the loose one again; the pinned one stays
