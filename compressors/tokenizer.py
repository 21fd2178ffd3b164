"""Exact, offline token counts for the target model.

tiktoken downloads its BPE files on first use, which fails behind a firewall.
litellm ships ``cl100k_base``, ``o200k_base`` and ``p50k_base`` inside its
package (``litellm_core_utils/tokenizers``), named as tiktoken's cache names
them (sha1 of the download URL), and *on import* litellm overwrites
``TIKTOKEN_CACHE_DIR`` unless ``CUSTOM_TIKTOKEN_CACHE_DIR`` is set. We do not
depend on that side effect, nor on import order: we resolve the file ourselves
(``TIKTOKEN_CACHE_DIR`` if it holds a verified copy, then litellm's bundled
folder, found without importing litellm), check its sha256, and build the
``tiktoken.Encoding`` from the local file. Nothing is fetched at run time.

Models that are not OpenAI's get a declared fallback: ``o200k_base`` counts
with ``exact = False``. Never a crash.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import tiktoken

from compressors.models import load_once

__all__ = ["EncodingUnavailable", "Tokenizer", "encoding_name_for", "tokenizer_for"]

DEFAULT_ENCODING = "o200k_base"

_ENDOFTEXT = "<|endoftext|>"
_ENDOFPROMPT = "<|endofprompt|>"

# Regexes and special tokens as tiktoken_ext.openai_public defines them.
_R50K_PAT = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
_CL100K_PAT = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|"""
    r"""\s+(?!\S)|\s"""
)
_O200K_PAT = "|".join(
    [
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)


@dataclass(frozen=True, slots=True)
class _EncodingSpec:
    url: str
    sha256: str
    pat_str: str
    special_tokens: dict[str, int]
    explicit_n_vocab: int | None = None


_BLOB = "https://openaipublic.blob.core.windows.net/encodings/"
_SPECS: dict[str, _EncodingSpec] = {
    "o200k_base": _EncodingSpec(
        _BLOB + "o200k_base.tiktoken",
        "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
        _O200K_PAT,
        {_ENDOFTEXT: 199999, _ENDOFPROMPT: 200018},
    ),
    "cl100k_base": _EncodingSpec(
        _BLOB + "cl100k_base.tiktoken",
        "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
        _CL100K_PAT,
        {
            _ENDOFTEXT: 100257,
            "<|fim_prefix|>": 100258,
            "<|fim_middle|>": 100259,
            "<|fim_suffix|>": 100260,
            _ENDOFPROMPT: 100276,
        },
    ),
    "p50k_base": _EncodingSpec(
        _BLOB + "p50k_base.tiktoken",
        "94b5ca7dff4d00767bc256fdd1b27e5b17361d7b8a5f968547f9f23eb70d2069",
        _R50K_PAT,
        {_ENDOFTEXT: 50256},
        50281,
    ),
}

# Model-name prefixes, most specific first. Names may carry a provider prefix
# ("openai/gpt-4o") and dated suffixes ("gpt-4o-2024-08-06").
_PREFIXES: tuple[tuple[str, str], ...] = (
    ("gpt-4o", "o200k_base"),
    ("chatgpt-4o", "o200k_base"),
    ("gpt-4.1", "o200k_base"),
    ("gpt-4.5", "o200k_base"),
    ("gpt-5", "o200k_base"),
    ("gpt-oss", "o200k_base"),
    ("o1", "o200k_base"),
    ("o3", "o200k_base"),
    ("o4", "o200k_base"),
    ("codex-", "o200k_base"),
    ("computer-use", "o200k_base"),
    ("gpt-4", "cl100k_base"),
    ("gpt-3.5", "cl100k_base"),
    ("gpt-35", "cl100k_base"),
    ("text-embedding-3", "cl100k_base"),
    ("text-embedding-ada-002", "cl100k_base"),
    ("davinci-002", "cl100k_base"),
    ("babbage-002", "cl100k_base"),
    ("text-davinci-003", "p50k_base"),
    ("text-davinci-002", "p50k_base"),
    ("code-davinci", "p50k_base"),
)


class EncodingUnavailable(RuntimeError):
    """No verified local copy of a BPE file was found; nothing is downloaded."""


def encoding_name_for(model: str | None) -> tuple[str, bool]:
    """The tiktoken encoding for ``model`` and whether the count is exact for it."""
    if not model:
        return DEFAULT_ENCODING, False
    name = model.lower().rsplit("/", 1)[-1]
    if name.startswith("ft:"):
        name = name[3:]
    for prefix, encoding in _PREFIXES:
        if name.startswith(prefix):
            return encoding, True
    return DEFAULT_ENCODING, False


def _candidate_dirs() -> list[Path]:
    dirs: list[Path] = []
    for var in ("TIKTOKEN_CACHE_DIR", "CUSTOM_TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR"):
        if os.environ.get(var):
            dirs.append(Path(os.environ[var]))
    spec = importlib.util.find_spec("litellm")  # locates the package without importing it
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            dirs.append(Path(location) / "litellm_core_utils" / "tokenizers")
    import tempfile

    dirs.append(Path(tempfile.gettempdir()) / "data-gym-cache")
    return dirs


def _local_bpe_bytes(spec: _EncodingSpec) -> bytes:
    cache_key = hashlib.sha1(spec.url.encode()).hexdigest()
    tried: list[str] = []
    for directory in _candidate_dirs():
        path = directory / cache_key
        tried.append(str(path))
        if path.is_file():
            data = path.read_bytes()
            if hashlib.sha256(data).hexdigest() == spec.sha256:
                return data
    raise EncodingUnavailable(f"no verified local copy of {spec.url}; looked in: {', '.join(tried)}")


def _parse_bpe(data: bytes) -> dict[bytes, int]:
    ranks: dict[bytes, int] = {}
    for line in data.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def _encoding(name: str) -> tiktoken.Encoding:
    # Pinned: the Tokenizers tokenizer_for caches hold it anyway; unloading would load a second copy.
    return load_once(("tiktoken", name), lambda: _load_encoding(name), pinned=True)


def _load_encoding(name: str) -> tiktoken.Encoding:
    spec = _SPECS[name]
    # Parsed here, not with tiktoken's load_tiktoken_bpe: that one copies the file into
    # TIKTOKEN_CACHE_DIR (and raises if that directory is read-only).
    ranks = _parse_bpe(_local_bpe_bytes(spec))
    return tiktoken.Encoding(
        name=name,
        pat_str=spec.pat_str,
        mergeable_ranks=ranks,
        special_tokens=spec.special_tokens,
        explicit_n_vocab=spec.explicit_n_vocab,
    )


class Tokenizer:
    """Counts, encodes and decodes tokens of one encoding.

    ``exact`` is False when the model is not a known OpenAI model and the
    count is the declared ``o200k_base`` fallback.
    """

    __slots__ = ("_enc", "encoding", "exact", "model")

    def __init__(self, encoding: str, *, exact: bool, model: str | None) -> None:
        self.encoding = encoding
        self.exact = exact
        self.model = model
        self._enc = _encoding(encoding)

    def encode(self, text: str) -> list[int]:
        # Special-token strings in user text are counted as ordinary text, as the API does.
        return self._enc.encode_ordinary(text)

    def count(self, text: str) -> int:
        if not text:
            return 0
        return len(self._enc.encode_ordinary(text))

    def count_many(self, texts: list[str]) -> list[int]:
        """Counts of many texts in one call (tiktoken batches across threads)."""
        return [len(ids) for ids in self._enc.encode_ordinary_batch(texts, num_threads=2)]

    def decode(self, ids: list[int]) -> str:
        return self._enc.decode(ids)

    def __repr__(self) -> str:
        return f"Tokenizer({self.encoding!r}, exact={self.exact}, model={self.model!r})"


@lru_cache(maxsize=256)
def tokenizer_for(model: str | None) -> Tokenizer:
    """The tokenizer for ``model`` (cached per model name)."""
    encoding, exact = encoding_name_for(model)
    return Tokenizer(encoding, exact=exact, model=model)
