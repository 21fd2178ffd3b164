"""A rule's steps run on one part, in a compression worker: each step's output is the next one's
input, and each step's tokens, time and note are traced for ``tersegate compress --explain``.

A step whose compressor runs a model (``Compressor.cost_class == "model"``) is skipped on a text
longer than ``compression.max_part_chars``: its work grows with the text faster than the latency
budget allows. The linear steps around it still run, so a part too big for an expensive step
still gets the cheap ones (and a model step after a step that shrank the text runs when the text
now fits).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from compressors.base import Compressor
from compressors.tokenizer import tokenizer_for
from proxy.policy.model import Step
from proxy.policy.query import Fit, QueryPlan, compress_around

__all__ = ["StepTrace", "run_steps"]


@dataclass(frozen=True, slots=True)
class StepTrace:
    """What one step did to a part (summed over the stretches compressed around kept spans)."""

    compressor: str
    tokens_before: int
    tokens_after: int
    ms: float
    note: str = ""


@dataclass(slots=True)
class _Tally:
    before: int = 0
    after: int = 0
    ms: float = 0.0
    notes: list[str] = field(default_factory=list)


class _Chain:
    """The steps as one ``Run`` (:func:`proxy.policy.query.compress_around` calls it per stretch)."""

    def __init__(
        self,
        steps: Sequence[tuple[Step, Compressor]],
        *,
        query: str | None,
        model: str | None,
        max_model_chars: int,
        ref: str | None = None,
    ) -> None:
        self.steps = steps
        self.ref = ref  # the original's id: every marker a step writes carries it as hash=
        self.query = query
        self.model = model
        self.max_model_chars = max_model_chars
        self.tallies = [_Tally() for _ in steps]

    def __call__(self, text: str, fit: Fit) -> str:
        tokens: int | None = None  # of ``text``, once a step has counted it
        for (step, compressor), tally in zip(self.steps, self.tallies, strict=True):
            if compressor.cost_class == "model" and len(text) > self.max_model_chars:
                tokens = tokenizer_for(self.model).count(text) if tokens is None else tokens
                tally.before += tokens
                tally.after += tokens
                note = f"skipped: {len(text)} chars, above max_part_chars ({self.max_model_chars})"
                _add(tally.notes, note)
                continue
            started = time.perf_counter()
            done = compressor.compress(
                text,
                target=fit(step.target),
                query=self.query,
                preserve=step.preserve,
                model=self.model,
                ref=self.ref,
            )
            tally.ms += (time.perf_counter() - started) * 1000
            tally.before += done.tokens_before
            tally.after += done.tokens_after
            _add(tally.notes, done.note)
            text, tokens = done.text, done.tokens_after
        return text


def _add(notes: list[str], note: str) -> None:
    if note and note not in notes:
        notes.append(note)


def run_steps(
    steps: Sequence[tuple[Step, Compressor]],
    text: str,
    *,
    plan: QueryPlan,
    model: str | None,
    max_model_chars: int,
    ref: str | None = None,
) -> tuple[str, str, tuple[StepTrace, ...]]:
    """Run ``steps`` (each with the compressor instance to use) on ``text``. Returns the new text,
    the steps' notes (prefixed with the step's compressor when there are several) and a trace per step."""
    chain = _Chain(steps, query=plan.query, model=model, max_model_chars=max_model_chars, ref=ref)
    out, kept, note = compress_around(chain, text, plan=plan, model=model)
    traces = tuple(
        StepTrace(step.compressor_name, t.before + kept, t.after + kept, t.ms, "; ".join(t.notes))
        for (step, _), t in zip(steps, chain.tallies, strict=True)
    )
    named = len(steps) > 1
    notes = [note] if note else []
    notes += [f"{t.compressor}: {t.note}" if named else t.note for t in traces if t.note]
    return out, "; ".join(notes), traces
