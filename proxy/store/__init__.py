"""Shared state: where the compress-once memo and the audit's cache model keep what must outlive a process.

One interface (:class:`proxy.store.base.SharedStore`), several backends (memory, sqlite, redis). It sits below
policy and audit, which both use it, and above config.
"""
