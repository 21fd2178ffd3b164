"""Imported once, by the compression workers' forkserver only (``set_forkserver_preload``).

Importing it loads the token counters of :data:`WARM_MODELS` (o200k_base, cl100k_base: ~1.2 s of
CPU). Every worker is forked from that server with them already in memory, shared copy-on-write,
instead of each worker (and each replacement of a killed one) loading them again before it is warm.
A module is the only hook ``multiprocessing`` offers there; nothing else imports this one.
"""

from __future__ import annotations

import contextlib

from compressors.tokenizer import tokenizer_for
from proxy.policy.compressor_pool import WARM_MODELS

# A failure here would end the forkserver (it only forgives ImportError): a missing encoding is
# reported by the serving process's own warm-up instead.
with contextlib.suppress(Exception):
    for _model in WARM_MODELS:
        tokenizer_for(_model).count("warm-up")
