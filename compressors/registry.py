"""Compressors looked up by name. Names are the contract policies use."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from compressors.base import Compressor, OptionsError

__all__ = ["compressor_class", "create", "names"]

# Imported on first lookup so that `normalize` never pulls in torch.
_CLASSES: dict[str, str] = {
    "normalize": "compressors.normalize:Normalize",
    "truncate": "compressors.truncate:Truncate",
    "relevance": "compressors.relevance:Relevance",
    "tokens": "compressors.tokens:Tokens",
    "tooloutput": "compressors.tooloutput:ToolOutput",
}


def names() -> tuple[str, ...]:
    return tuple(_CLASSES)


def compressor_class(name: str) -> type[Compressor]:
    try:
        module_name, attr = _CLASSES[name].split(":")
    except KeyError:
        raise OptionsError(f"unknown compressor {name!r} (known: {', '.join(_CLASSES)})") from None
    cls: type[Compressor] = getattr(importlib.import_module(module_name), attr)
    return cls


def create(name: str, options: Mapping[str, Any] | None = None) -> Compressor:
    """A compressor by name, its options parsed and validated now."""
    return compressor_class(name)(options)
