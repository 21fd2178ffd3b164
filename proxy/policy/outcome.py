"""The rewrite being built for one request (:class:`Outcome`), and its assembly into a :class:`Rewrite`.

The engine selects parts into an outcome, gives each a form (memo, compressor, or as it came) and
maybe a compaction; :func:`assemble` then says what is forwarded: the body (in ``enforce`` mode),
the tokens before and after, and one detail row per part (``--explain``, the audit).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from proxy.apis import Part, rewrite_body
from proxy.exchange import Rewrite
from proxy.policy.compactor import Compacted
from proxy.policy.forms import Form, FormKeys
from proxy.policy.model import Policy, Rule
from proxy.policy.retrieval import offers
from proxy.policy.steps import StepTrace

__all__ = ["Outcome", "Selected", "assemble"]

Path = tuple[str | int, ...]
# Forms memoised as they came for a reason that passes (warm-up, a budget overrun, an error):
# a compaction batch compresses them when it changes the history anyway.
_PASSING = ("latency_budget", "compressor_error")


@dataclass(slots=True)
class Selected:
    part: Part
    rule: Rule
    tokens: int
    keys: FormKeys
    form: Form | None = None
    made: Form | None = None  # what the compressor returned, for a new part
    source: str = "new"  # new | memo | drop | kept (a drop called off) | too_large (max_part_chars)
    ref: str | None = None  # retrieve policies: the original's id, for hash= in its markers
    steps: tuple[StepTrace, ...] = ()  # what each step did, for a new part (--explain)


@dataclass(slots=True)
class Outcome:
    """The rewrite being built for one request."""

    namespace: str
    selected: list[Selected] = field(default_factory=list)
    fail_open: str | None = None
    compress_ms: float = 0.0
    originals_scope: str = ""  # retrieve policies: the scope originals are kept in

    def passing(self) -> dict[Path, Selected]:
        """The parts memoised as they came for a reason that passes, by path."""
        return {
            c.part.path: c
            for c in self.selected
            if c.source == "memo"
            and c.form is not None
            and c.form.text is None
            and c.form.note.startswith(_PASSING)
        }

    def forwarded(
        self, parts: Sequence[Part], counts: Sequence[int]
    ) -> tuple[dict[Path, str], list[Path], list[int]]:
        """``(new texts by part path, messages dropped, each part's tokens)`` as the parts' forms
        forward them (``counts``: the tokens each part came with)."""
        texts: dict[Path, str] = {}
        drops: list[Path] = []
        after = list(counts)
        index = {p.path: i for i, p in enumerate(parts)}
        for chosen in self.selected:
            form = chosen.form
            if chosen.source == "drop":
                _apply_drop(chosen.part, texts, drops)
                after[index[chosen.part.path]] = 0
            elif form is not None and form.text is not None:
                texts[chosen.part.path] = form.text
                after[index[chosen.part.path]] = form.tokens_after
        return texts, drops, after


def assemble(
    policy: Policy,
    mode: str,
    body: dict[str, Any],
    parts: Sequence[Part],
    counts: Sequence[int],
    outcome: Outcome,
    compacted: Compacted | None = None,
    *,
    retrieve: bool = False,
) -> Rewrite:
    """The rewrite of ``outcome`` (and ``compacted``'s stubs); ``retrieve``: may offer the expand tool."""
    texts, drops, after = outcome.forwarded(parts, counts)
    index = {p.path: i for i, p in enumerate(parts)}
    by_path = {c.part.path: c for c in outcome.selected}
    for path, (stub, tokens) in (compacted.texts if compacted else {}).items():
        if path not in drops:
            texts[path], after[index[path]] = stub, tokens
    stubbed = set(compacted.texts) if compacted else set()
    details = tuple(
        _detail(p, by_path.get(p.path), b, a, p.path in stubbed)
        for p, b, a in zip(parts, counts, after, strict=True)
    )
    changed = bool(texts or drops)
    return Rewrite(
        body=rewrite_body(body, texts, drops, compacted.added if compacted else None)
        if changed and mode == "enforce"
        else None,
        policy=policy.name,
        mode=mode,
        rules=tuple(dict.fromkeys(c.rule.name for c in outcome.selected))
        + (("compaction",) if stubbed else ()),
        tokens_before=sum(counts),
        tokens_after=sum(after),
        compress_ms=outcome.compress_ms,
        fail_open=outcome.fail_open,
        parts=details,
        retrieve=retrieve and mode == "enforce" and offers(parts, texts, stubbed),
    )


def _apply_drop(part: Part, texts: dict[Path, str], drops: list[Path]) -> None:
    if part.droppable and part.message_path is not None and isinstance(part.message_path[-1], int):
        if part.message_path not in drops:
            drops.append(part.message_path)
    else:
        texts[part.path] = part.blank  # tool results must stay paired with their call


def _detail(part: Part, chosen: Selected | None, before: int, after: int, stubbed: bool) -> dict[str, Any]:
    if stubbed:
        return {**_detail(part, chosen, before, after, False), "source": "compacted", "tokens_after": after}
    return {
        "message": part.message,
        "role": part.role,
        "tool": part.tool_name,
        "rule": chosen.rule.name if chosen else None,
        "compressor": (chosen.rule.compressor_name if chosen.rule.action == "compress" else "drop")
        if chosen
        else None,
        "tokens_before": before,
        "tokens_after": after,
        "ms": round(chosen.form.ms, 2) if chosen and chosen.form else 0.0,
        "source": chosen.source if chosen else None,
        "note": chosen.form.note if chosen and chosen.form else "",
        "steps": [dataclasses.asdict(trace) for trace in chosen.steps] if chosen else [],
    }
