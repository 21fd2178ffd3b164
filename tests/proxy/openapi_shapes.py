"""Validation of bodies against OpenAI's published OpenAPI spec (from ../shared/evaldata)."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

EVALDATA = Path(__file__).resolve().parents[2].parent / "shared" / "evaldata"
SPEC = EVALDATA / "openai-openapi" / "openapi.json"


@functools.cache
def _spec() -> dict[str, Any]:
    spec: dict[str, Any] = json.loads(SPEC.read_text(encoding="utf-8"))
    return spec


def schema_errors(instance: Any, schema_name: str) -> list[str]:
    """Messages of every violation of ``#/components/schemas/<schema_name>``; skips without the spec."""
    if not SPEC.is_file():
        pytest.skip("OpenAI OpenAPI spec not present in ../shared/evaldata")
    validator = jsonschema.Draft202012Validator({**_spec(), "$ref": f"#/components/schemas/{schema_name}"})
    return [error.message for error in validator.iter_errors(instance)]
