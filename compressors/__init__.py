"""tersegate's compression library: it stands alone and imports nothing from ``proxy``."""

from compressors.base import Ask, Compressed, Compressor, CompressorError, Decision, OptionsError, Target
from compressors.preserve import PreserveSpec
from compressors.registry import create, names
from compressors.tokenizer import Tokenizer, tokenizer_for

__all__ = [
    "Ask",
    "Compressed",
    "Compressor",
    "CompressorError",
    "Decision",
    "OptionsError",
    "PreserveSpec",
    "Target",
    "Tokenizer",
    "create",
    "names",
    "tokenizer_for",
]
