"""The token memo: each text of a request tokenized once, shared by the policy engine and the audit.

The policy engine counts every part's tokens (rules match on them, the audit records them); the
audit's cache model needs the token ids of whole blocks (OpenAI's prefix cache is matched in
128-token steps of ids; Anthropic's blocks are counted). A block's text is the part text with a
role line and sometimes a rendered JSON tail around it, so the cache model builds a block's ids
from the ids the engine kept for its parts (:meth:`TokenMemo.ids_within`) and tokenizes only what
lies around them. Exact, not an estimate: the block's ids are what tokenizing it whole would give.

Keyed by scope (the team, or ``*`` when the memo is shared across teams), encoding and the text's
SHA-256: a text one team sent must not make another team's request faster. Two bytes-bounded LRUs:
ids (4 bytes a token: 4.4 KB per 1k tokens with both entries' bookkeeping, measured) and, beside them,
counts alone (~300 bytes an entry), so counts outlive the ids they came from when ids churn (and
are all that is kept when no audit needs ids).

Why a cut is exact (:data:`_CUT`): tiktoken splits a text into pre-tokens with a regex, then merges
bytes only within a pre-token. A cut between a letter or digit and a newline that a non-space
follows, after such a newline, or at a space between two letters or digits is a pre-token boundary
of cl100k, o200k and p50k, and every pre-token on either side matches alone as it does in the
whole (no pattern carries a newline or a space into a letter run, or a letter into punctuation or
whitespace). So ``ids(a + b) == ids(a) + ids(b)`` whenever ``a + b`` is cut there; the tests check
it on random and adversarial texts. One exception, for the event loop's sake: a text over 128 KB is
encoded in pieces, and where no exact cut lies within 64 KB of a piece's bound the piece ends at the
bound (:func:`_encode`): a token or two may differ there, the same way every time.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from proxy.store.lru import BytesLRU

__all__ = ["COUNTS_BYTES", "IDS_BYTES", "TokenMemo", "Tokenizing"]

IDS_BYTES = 64 * 1024 * 1024  # ~15M tokens of ids
COUNTS_BYTES = 16 * 1024 * 1024  # ~55k texts' counts
_ENTRY = 200  # an entry's dict/tuple/key bookkeeping, roughly
# A zero-width match at an exact cut (see the module docs): letter or digit | newline non-space;
# letter or digit, newline | non-space; letter or digit | space letter or digit.
_CUT = re.compile(r"(?<=[^\W_])(?=\n\S)|(?<=[^\W_]\n)(?=\S)|(?<=[^\W_])(?= [^\W_])")
# Huge texts are encoded in pieces: one tiktoken call holds the GIL while it builds its list of
# ids (about 130 ms for 30 MB), so pieces of this size let the event loop in between.
_PIECE = 64 * 1024
_SEARCH = 4096  # how far into a part a cut is looked for when its edge in a block is not one
_MIN_REUSE = 16  # shorter part texts are tokenized with what surrounds them
_SHORT = 32  # texts up to this long are their own key: cheaper than hashing them


class Tokenizing(Protocol):
    """What the memo needs of :class:`compressors.tokenizer.Tokenizer`."""

    @property
    def encoding(self) -> str: ...

    def encode(self, text: str) -> list[int]: ...


class TokenMemo:
    """Token ids and counts of texts, per team scope, bounded in bytes (see module docs)."""

    def __init__(
        self,
        *,
        ids_bytes: int = IDS_BYTES,
        counts_bytes: int = COUNTS_BYTES,
        shared_across_teams: bool = False,
    ) -> None:
        self._ids: BytesLRU[bytes] = BytesLRU(max_bytes=ids_bytes, entry_overhead=_ENTRY)
        self._counts: BytesLRU[int] = BytesLRU(max_bytes=counts_bytes, entry_overhead=_ENTRY)
        self.shared_across_teams = shared_across_teams

    @property
    def bytes_used(self) -> int:
        return self._ids.bytes_used + self._counts.bytes_used

    def _key(self, team: str, tokenizer: Tokenizing, text: str) -> tuple[str, str, str | bytes]:
        scope = "*" if self.shared_across_teams else team
        if len(text) <= _SHORT:  # role lines and JSON tails: the text is a cheaper key than its digest
            return (scope, tokenizer.encoding, text)
        return (scope, tokenizer.encoding, hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest())

    def count(self, team: str, tokenizer: Tokenizing, text: str) -> int:
        """``text``'s token count; a miss tokenizes it and keeps its ids for the audit."""
        if not text:
            return 0
        key = self._key(team, tokenizer, text)
        count = self._counts.get(key)
        if count is None:
            ids = self._ids.get(key)
            count = len(ids if ids is not None else self._encoded(key, tokenizer, text)) // 4
            self._counts.setdefault(key, count, size=100)
        return count

    def counts(self, team: str, tokenizer: Tokenizing, texts: Sequence[str]) -> list[int]:
        return [self.count(team, tokenizer, text) for text in texts]

    def ids(self, team: str, tokenizer: Tokenizing, text: str) -> bytes:
        """``text``'s token ids as little-endian uint32 bytes."""
        if not text:
            return b""
        key = self._key(team, tokenizer, text)
        ids = self._ids.get(key)
        if ids is None:
            ids = self._encoded(key, tokenizer, text)
            self._counts.setdefault(key, len(ids) // 4, size=100)
        return ids

    def _encoded(self, key: tuple[str, str, str | bytes], tokenizer: Tokenizing, text: str) -> bytes:
        ids = _encode(tokenizer, text)
        return self._ids.setdefault(key, ids, size=len(ids) + len(key[0]) + len(key[2]))

    def ids_within(self, team: str, tokenizer: Tokenizing, text: str, pieces: Sequence[str]) -> bytes:
        """The ids of ``text``, which holds ``pieces`` (the part texts of a block, in order): each
        piece's ids come from the memo, only the text around them is tokenized. Exactly
        ``tokenizer.encode(text)``: a piece whose edge is no exact cut (:data:`_CUT`) gives up the
        few characters up to its nearest one, and a piece without one is tokenized with the rest.

        The block's ids are kept under its own key (the next turn re-sends it: one lookup) and its
        pieces' ids are dropped (their counts stay): the ids of a text are kept once."""
        key = self._key(team, tokenizer, text)
        found = self._ids.get(key)
        if found is not None:
            return found
        spans = _reusable(text, [piece for piece in pieces if piece != text])
        out: list[bytes | memoryview] = []
        pos = 0
        for at, start, end, piece in spans:
            if start > pos:
                out.append(self.ids(team, tokenizer, text[pos:start]))
            ids = memoryview(self.ids(team, tokenizer, piece))
            head = len(self.ids(team, tokenizer, piece[: start - at]))
            tail = len(self.ids(team, tokenizer, piece[end - at :]))
            out.append(ids[head : len(ids) - tail])
            pos = end
        if pos < len(text):
            out.append(self.ids(team, tokenizer, text[pos:]))
        joined = b"".join(out)
        for _, _, _, piece in spans:
            self._ids.pop(self._key(team, tokenizer, piece))
        self._counts.setdefault(key, len(joined) // 4, size=100)
        return self._ids.setdefault(key, joined, size=len(joined) + len(key[0]) + len(key[2]))


def _cut(text: str, at: int) -> bool:
    """Whether ``at`` is an exact cut of ``text`` (its ends are)."""
    return at <= 0 or at >= len(text) or _CUT.match(text, at) is not None


def _reusable(text: str, pieces: Sequence[str]) -> list[tuple[int, int, int, str]]:
    """``(at, start, end, piece)``: ``piece`` found at ``at`` (after the previous one), and the span
    of it whose ids are a slice of the piece's, each edge an exact cut of ``text`` and of the piece."""
    spans: list[tuple[int, int, int, str]] = []
    cursor = 0
    for piece in pieces:
        if len(piece) < _MIN_REUSE:
            continue
        at = _find(text, piece, cursor)
        if at < 0:
            continue
        head = 0 if _cut(text, at) else _first_cut(piece)
        tail = len(piece) if _cut(text, at + len(piece)) else _last_cut(piece)
        if head is not None and tail is not None and head < tail:
            spans.append((at, at + head, at + tail, piece))
        cursor = at + len(piece)
    return spans


def _find(text: str, piece: str, cursor: int) -> int:
    """``text.find(piece, cursor)``, trying first where a piece usually starts: right there or after
    the block's role line (``str.find`` prepares a long needle at a cost linear in its length)."""
    line = text.find("\n", cursor, cursor + 256)
    for at in (cursor, line + 1 if line >= 0 else -1):
        if at >= 0 and text.startswith(piece, at):
            return at
    return text.find(piece, cursor)


def _first_cut(piece: str) -> int | None:
    found = _CUT.search(piece, 1, min(len(piece), _SEARCH))
    return found.start() if found is not None else None


def _last_cut(piece: str) -> int | None:
    """The last exact cut within ``_SEARCH`` characters of the end: every cut sits at a newline or
    a space, so those are found from the end (a forward regex scan of the window costs 20x more)."""
    low = max(1, len(piece) - _SEARCH)
    k = len(piece)
    while k > low:
        k = max(piece.rfind("\n", low, k), piece.rfind(" ", low, k))
        if k < low:
            return None
        if piece[k] == "\n" and _cut(piece, k + 1) and k + 1 < len(piece):
            return k + 1
        if _cut(piece, k):
            return k
    return None


def _encode(tokenizer: Tokenizing, text: str) -> bytes:
    """``tokenizer.encode(text)`` as uint32 bytes, in pieces for a huge text, so another thread (the
    event loop) gets the GIL between them. A piece ends at the first exact cut (:data:`_CUT`) within
    :data:`_PIECE` characters past its start + :data:`_PIECE`: the same ids as one call. A huge text
    with no cut there (numbered lines with trailing blanks, a base64 blob) is cut at that bound
    anyway: a token or two may differ at such a seam, the same way for the same text every time, and
    no search or single call runs over the whole text while the loop waits."""
    if len(text) <= 2 * _PIECE:
        return np.asarray(tokenizer.encode(text), dtype=np.uint32).tobytes()
    out: list[bytes] = []
    start = 0
    while start < len(text):
        end = len(text)
        if len(text) - start > 2 * _PIECE:
            found = _CUT.search(text, start + _PIECE, start + 2 * _PIECE)
            end = found.start() if found is not None else start + 2 * _PIECE
        out.append(np.asarray(tokenizer.encode(text[start:end]), dtype=np.uint32).tobytes())
        start = end
    return b"".join(out)
