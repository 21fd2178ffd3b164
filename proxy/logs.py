"""Logging: one line per event, ``time level logger message``, on stderr.

Nothing logged by the proxy carries a key or prompt text: requests are named by
their request id, team and route only. uvicorn's access log is off (it would
log every request at info and cost time on the hot path).
"""

from __future__ import annotations

import logging
import sys

__all__ = ["setup_logging"]

_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def setup_logging(level: str, *, tag: str | None = None) -> None:
    """``tag`` (a worker's ``w1``) goes before every line's logger name."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter(_FORMAT.replace("%(name)s", f"[{tag}] %(name)s") if tag else _FORMAT)
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.getLogger("uvicorn.access").disabled = True
    # asyncio's debug chatter may name peers and URLs; keep it at warning.
    logging.getLogger("asyncio").setLevel(max(logging.WARNING, root.level))
