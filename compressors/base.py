"""The one interface every compressor implements, and the values it speaks.

A compressor is constructed once from validated options (``Compressor.__init__``
raises :class:`OptionsError` for anything unknown or out of range) and then
called many times with :meth:`Compressor.compress`. Compressors are pure and
deterministic: the same text, target, query, preserve spec and model give
byte-identical output. Provider prompt caches depend on it.
"""

from __future__ import annotations

import abc
import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, NamedTuple

from compressors.preserve import PreserveSpec, Region, split_tags
from compressors.tokenizer import Tokenizer, tokenizer_for

# How a compressor's work grows with its input: "linear" is a pass or two over the text with no model
# (the proxy runs it on parts of any size, bounded by the latency budget); "model" runs a model over
# the text (the proxy skips it on parts above its size cap, ``compression.max_part_chars``).
Cost = Literal["linear", "model"]

_REF = re.compile(r"[0-9a-f]{24}")


class CompressorError(Exception):
    """A compressor failed on an input. Callers fail open on it: the text goes uncompressed."""


class OptionsError(ValueError):
    """An option given to a compressor is unknown or invalid. Raised at construction."""


@dataclass(frozen=True, slots=True)
class Target:
    """How much to keep: ``rate`` (kept/original tokens) or ``max_tokens``; one of them.

    When both are given, the smaller resulting budget wins.
    """

    rate: float | None = None
    max_tokens: int | None = None

    def __post_init__(self) -> None:
        if self.rate is None and self.max_tokens is None:
            raise OptionsError("target needs rate or max_tokens")
        if self.rate is not None and not 0.0 < self.rate <= 1.0:
            raise OptionsError(f"rate must be in (0, 1], got {self.rate}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise OptionsError(f"max_tokens must be >= 1, got {self.max_tokens}")

    def budget(self, tokens_before: int) -> int:
        """The token budget for an input of ``tokens_before`` tokens."""
        budgets: list[int] = []
        if self.rate is not None:
            budgets.append(max(1, round(tokens_before * self.rate)))
        if self.max_tokens is not None:
            budgets.append(self.max_tokens)
        return min(budgets)


@dataclass(frozen=True, slots=True)
class Decision:
    """What a compressor did with one unit (document, line, word, span) of the input.

    ``index`` is the unit's position in the input; ``kind`` names the unit type
    (``document``, ``paragraph``, ``line``, ``word``, ``preserved``...);
    ``score`` is the relevance/information score used for ranking, if any.
    ``preview`` is at most 40 characters of the unit, for ``--explain`` output only.
    """

    index: int
    kind: str
    tokens: int
    kept: bool
    score: float | None = None
    reason: str = ""
    preview: str = ""


class Ask(NamedTuple):
    """What one ``_compress`` call is asked for, besides the text: the target, the query (or None),
    the spans that must survive, the target model's token counter, and ``ref``: the id the proxy
    stored the original under (24 lowercase hex), which every marker the compressor writes carries
    as ``hash=`` (docs/markers.md). Compressors never compute it."""

    target: Target
    query: str | None
    preserve: PreserveSpec
    tokenizer: Tokenizer
    ref: str | None = None


@dataclass(frozen=True, slots=True)
class Compressed:
    """The result of one compression."""

    text: str
    tokens_before: int
    tokens_after: int
    compressor: str
    target_tokens: int | None = None
    # False when preserved spans (or a compressor that cannot cut further) made
    # the target unreachable; ``note`` then says why. Never a silent overshoot.
    target_met: bool = True
    note: str = ""
    decisions: tuple[Decision, ...] = field(default=())

    @property
    def saved_tokens(self) -> int:
        return self.tokens_before - self.tokens_after

    @property
    def ratio(self) -> float:
        """Kept/original tokens (1.0 for empty input)."""
        return self.tokens_after / self.tokens_before if self.tokens_before else 1.0


class Compressor(abc.ABC):
    """Base class of every compressor.

    Subclasses set ``name`` and ``option_types``, and implement :meth:`_compress`.
    Options are validated once, here; ``self.options`` holds the parsed values
    (defaults filled in). Heavy models load lazily on first use, once per
    process, behind a lock (see :mod:`compressors.models`).
    """

    name: ClassVar[str]
    # option name -> (type or tuple of types, default). Subclasses may add
    # semantic checks in ``_validate``.
    option_types: ClassVar[Mapping[str, tuple[type | tuple[type, ...], Any]]] = {}
    # Taken as costly unless the class says otherwise: an unknown cost gets the size cap.
    cost: ClassVar[Cost] = "model"

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        given = dict(options or {})
        unknown = sorted(set(given) - set(self.option_types))
        if unknown:
            known = ", ".join(sorted(self.option_types)) or "none"
            raise OptionsError(f"{self.name}: unknown option(s) {', '.join(unknown)} (known: {known})")
        parsed: dict[str, Any] = {}
        for key, (types, default) in self.option_types.items():
            value = given.get(key, default)
            allowed = types if isinstance(types, tuple) else (types,)
            if value is not None and (
                not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed)
            ):
                raise OptionsError(f"{self.name}: option {key} has the wrong type ({type(value).__name__})")
            parsed[key] = value
        self.options: Mapping[str, Any] = parsed
        self._validate()

    @property
    def cost_class(self) -> Cost:
        """``cost``, or what this instance's options make it (relevance with bm25 needs no model)."""
        return self.cost

    def _validate(self) -> None:
        """Semantic checks on ``self.options``; raise :class:`OptionsError`."""

    def compress(
        self,
        text: str,
        *,
        target: Target,
        query: str | None = None,
        preserve: PreserveSpec | None = None,
        model: str | None = None,
        ref: str | None = None,
    ) -> Compressed:
        """Compress ``text`` towards ``target`` tokens of ``model``'s tokenizer.

        ``query`` makes question-aware compressors keep what answers it.
        ``preserve`` names spans that must survive byte for byte (inline
        ``<keep>`` / ``<llmlingua ...>`` tags are always honoured).
        ``ref`` (24 lowercase hex) goes into every omission marker as ``hash=``.
        Raises :class:`CompressorError` on failure.
        """
        if ref is not None and not _REF.fullmatch(ref):
            raise ValueError(f"ref must be 24 lowercase hex characters, got {ref!r}")
        tokenizer = tokenizer_for(model)
        spec = preserve or PreserveSpec.default()
        try:
            regions = split_tags(text)
            if len(regions) == 1 and regions[0].mode == "compress" and regions[0].text == text:
                # hot path: no tags, no extra tokenization
                return self._compress(text, Ask(target, query, spec, tokenizer, ref))
            return self._compress_regions(text, regions, Ask(target, query, spec, tokenizer, ref))
        except CompressorError:
            raise
        except Exception as exc:  # contained: the caller fails open on CompressorError
            raise CompressorError(f"{self.name}: {type(exc).__name__}: {exc}") from exc

    def _compress_regions(
        self,
        text: str,
        regions: list[Region],
        ask: Ask,
    ) -> Compressed:
        """Inline tags: ``keep`` regions verbatim, ``rate`` regions at their own rate,
        the plain regions sharing what is left of the budget; joined in order."""
        target, tokenizer = ask.target, ask.tokenizer
        tokens_before = tokenizer.count(text)
        budget = target.budget(tokens_before)
        counts = tokenizer.count_many([region.text for region in regions])
        results: dict[int, Compressed] = {}
        fixed = 0  # tokens held by keep regions and rate regions
        for i, region in enumerate(regions):
            if region.mode == "rate":
                results[i] = self._compress(region.text, ask._replace(target=Target(rate=region.rate)))
                fixed += results[i].tokens_after
            elif region.mode == "keep":
                fixed += counts[i]
        plain = [i for i, region in enumerate(regions) if region.mode == "compress"]
        plain_tokens = sum(counts[i] for i in plain)
        remaining = budget - fixed
        for i in plain:
            share = counts[i] if remaining >= plain_tokens else remaining * counts[i] // plain_tokens
            results[i] = self._compress(
                regions[i].text, ask._replace(target=Target(max_tokens=max(1, share)))
            )
        return self._join_regions(regions, counts, results, tokens_before, budget, fixed, tokenizer)

    def _join_regions(
        self,
        regions: list[Region],
        counts: list[int],
        results: dict[int, Compressed],
        tokens_before: int,
        budget: int,
        fixed: int,
        tokenizer: Tokenizer,
    ) -> Compressed:
        parts: list[str] = []
        decisions: list[Decision] = []
        notes: list[str] = []
        offset = 0  # unit indices continue across regions
        for i, region in enumerate(regions):
            result = results.get(i)
            if result is None:  # a keep region
                parts.append(region.text)
                decisions.append(
                    Decision(
                        offset,
                        "keep-tag",
                        counts[i],
                        True,
                        reason="inline keep tag",
                        preview=region.text[:40],
                    )
                )
                offset += 1
                continue
            parts.append(result.text)
            decisions.extend(dataclasses.replace(d, index=d.index + offset) for d in result.decisions)
            offset += max((d.index + 1 for d in result.decisions), default=0)
            if result.note and result.note not in notes:
                notes.append(result.note)
        joined = "".join(parts)
        tokens_after = tokenizer.count(joined)
        met = tokens_after <= budget * 1.05
        if not met:
            notes.insert(0, f"inline keep/rate regions hold {fixed} tokens of a {budget}-token budget")
        return Compressed(
            text=joined,
            tokens_before=tokens_before,
            tokens_after=tokens_after,
            compressor=self.name,
            target_tokens=budget,
            target_met=met,
            note="; ".join(notes),
            decisions=tuple(decisions),
        )

    @abc.abstractmethod
    def _compress(self, text: str, ask: Ask) -> Compressed:
        """Do the work (tags already handled: ``text`` is one plain region)."""
