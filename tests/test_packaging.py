"""The library/server split and the public API, as a user of the package sees them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import compressors

ROOT = Path(__file__).resolve().parents[1]
SERVER_MODULES = ("starlette", "httpx", "aiohttp", "uvicorn", "proxy")


def test_compressors_import_without_any_server_module() -> None:
    code = (
        "import sys, compressors, compressors.registry as r\n"
        "for name in r.names(): r.compressor_class(name)\n"
        f"bad = [m for m in {SERVER_MODULES!r} if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "", f"compressors pulled in server modules: {out.stdout}"


def test_compressors_public_names() -> None:
    public = "Ask Compressed Compressor CompressorError Decision OptionsError PreserveSpec Target Tokenizer"
    assert set(compressors.__all__) == {*public.split(), "create", "names", "tokenizer_for"}
    assert set(compressors.names()) == {"normalize", "truncate", "relevance", "tokens", "tooloutput"}
    for name in compressors.__all__:
        assert hasattr(compressors, name)


@pytest.mark.slow
def test_ruff_and_mypy_are_clean() -> None:
    ruff = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "proxy", "compressors", "tests", "bench", "evaldata"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert ruff.returncode == 0, ruff.stdout + ruff.stderr
    mypy = subprocess.run([sys.executable, "-m", "mypy"], capture_output=True, text=True, cwd=ROOT)
    assert mypy.returncode == 0, mypy.stdout + mypy.stderr
