"""Validation of bodies against OpenAI's published OpenAPI spec (evaluation data: tests using it carry
``@pytest.mark.evaldata(OPENAPI)``)."""

from __future__ import annotations

import functools
import json
from typing import Any

import jsonschema

import evaldata

OPENAPI = evaldata.OPENAPI


@functools.cache
def _spec() -> dict[str, Any]:
    spec: dict[str, Any] = json.loads(evaldata.text(OPENAPI))
    return spec


def schema_errors(instance: Any, schema_name: str) -> list[str]:
    """Messages of every violation of ``#/components/schemas/<schema_name>``."""
    validator = jsonschema.Draft202012Validator({**_spec(), "$ref": f"#/components/schemas/{schema_name}"})
    return [error.message for error in validator.iter_errors(instance)]
