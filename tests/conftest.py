"""Fixtures shared by every test folder; their code lives in :mod:`harness`."""

from harness import make_proxy, spawn_proxy, upstream

__all__ = ["make_proxy", "spawn_proxy", "upstream"]
