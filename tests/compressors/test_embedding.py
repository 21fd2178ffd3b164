from __future__ import annotations

import gc
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import evaldata
from compressors.embedding import (
    DEFAULT_MODEL_SHA256,
    Embedder,
    ModelIntegrityError,
    default_model_path,
    file_sha256,
)
from compressors.models import unload
from compressors.onnx_encoder import MANIFEST, ONNX_RECIPE, BuildIntegrityError, ensure_built, export_dir
from compressors.openvino_build import calibration_texts
from compressors.openvino_encoder import OPENVINO_RECIPE


@pytest.fixture
def release_models() -> Iterator[None]:
    """For the tests that load models no other test uses (other backends, copies under other
    paths, fresh builds): let them go when the test ends, not at the module's end, or they add
    up to about 2.3 GB. The tests of the default model share its load."""
    yield
    if unload():  # a full collection costs about 0.25 s with torch loaded: only when it frees a model
        gc.collect()


def test_bundled_weights_match_the_pinned_hash() -> None:
    weights = default_model_path() / "model.safetensors"
    digest = file_sha256(weights)
    assert digest == DEFAULT_MODEL_SHA256
    assert digest.startswith("53aa5117") and digest.endswith("d9db")


@pytest.mark.slow
def test_vectors_are_unit_length_ordered_and_repeatable() -> None:
    embedder = Embedder()
    texts = ["The cat sat on the mat.", "Quarterly revenue grew by 4 percent.", "The cat sat on the mat."]
    first = embedder.encode(texts)
    assert first.shape == (3, 384)
    assert np.allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(first[0], first[2])
    again = embedder.encode(list(reversed(texts)))
    assert np.array_equal(again[::-1], first)


def test_related_text_scores_higher_than_unrelated() -> None:
    sims = Embedder().similarities(
        "who wrote the novel moby dick",
        [
            "Moby-Dick is an 1851 novel by American writer Herman Melville.",
            "The Nile flows north into the sea.",
        ],
    )
    assert sims[0] > sims[1] + 0.2


def test_max_over_windows_finds_relevance_past_the_first_256_word_pieces() -> None:
    filler = " ".join(
        f"Section {i} lists routine maintenance of office printers and toner." for i in range(60)
    )
    long_unit = filler + " Penguins breed in large colonies on the Antarctic ice."
    query = "where do penguins breed?"
    head = Embedder(long_units="head").similarities(query, [long_unit])[0]
    best = Embedder(long_units="max").similarities(query, [long_unit])[0]
    assert best > head + 0.2


def _tampered_copy(folder: Path, byte: int) -> Path:
    """The bundled model copied to ``folder`` with one bit of its weights flipped."""
    copy = folder / "model"
    shutil.copytree(default_model_path(), copy)
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[byte] ^= 0x01
    weights.write_bytes(bytes(data))
    return copy


def test_tampered_weights_are_refused_with_a_clear_error(tmp_path: Path) -> None:
    copy = _tampered_copy(tmp_path, 1000)
    with pytest.raises(ModelIntegrityError, match="sha256 mismatch"):
        Embedder(str(copy), sha256=DEFAULT_MODEL_SHA256).encode(["x"])


def test_missing_weights_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelIntegrityError, match=r"no local model\.safetensors"):
        Embedder(str(tmp_path), sha256=DEFAULT_MODEL_SHA256).encode(["x"])


def test_bad_long_units_value_is_rejected() -> None:
    with pytest.raises(ValueError, match="long_units"):
        Embedder(long_units="tail")


def _nq_passages(count: int) -> list[str]:
    rows = evaldata.nq_rows(count)
    return [f"(Title: {row['ctxs'][0]['title']}) {row['ctxs'][0]['text']}" for row in rows]


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A private cache directory, so the first ONNX load in it really exports."""
    root = tmp_path_factory.mktemp("xdg")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(root))
        yield root


@pytest.mark.usefixtures("release_models")
@pytest.mark.slow
@pytest.mark.evaldata(evaldata.NQ)
def test_onnx_vectors_match_torch_on_real_passages(onnx_cache: Path) -> None:
    pytest.importorskip("onnxruntime")
    passages = _nq_passages(40)
    reference = Embedder(backend="torch").encode(passages)
    fp32 = Embedder(backend="onnx").encode(passages)
    int8 = Embedder(backend="onnx-int8").encode(passages)
    assert (reference * fp32).sum(axis=1).min() >= 0.9999
    # int8 weights: measured min 0.985 over 200 NQ passages, mean 0.994.
    assert (reference * int8).sum(axis=1).min() >= 0.98
    assert export_dir(DEFAULT_MODEL_SHA256).is_relative_to(onnx_cache)


@pytest.mark.slow  # alone (-m "not slow"), it makes the ONNX export the test above otherwise leaves
@pytest.mark.usefixtures("release_models")
@pytest.mark.evaldata(evaldata.NQ)
def test_openvino_int8_vectors_match_torch_on_real_passages(onnx_cache: Path) -> None:
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    passages = _nq_passages(40)
    reference = Embedder(backend="torch").encode(passages)
    int8 = Embedder(backend="openvino-int8").encode(passages)
    cosines = (reference * int8).sum(axis=1)
    # Static int8 (weights and activations): measured min 0.992, mean 0.997 over 300 NQ passages.
    assert cosines.min() >= 0.98 and cosines.mean() >= 0.99


def test_calibration_texts_ship_with_the_package() -> None:
    texts = calibration_texts()
    assert len(texts) >= 40
    assert not any(text.startswith("#") for text in texts)


@pytest.fixture(scope="module")
def model_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled model under another path: a model no earlier test loaded in this process."""
    copy = tmp_path_factory.mktemp("model") / "all-MiniLM-L6-v2"
    shutil.copytree(default_model_path(), copy)
    return copy


@pytest.mark.usefixtures("release_models")
@pytest.mark.slow
@pytest.mark.parametrize("backend", ["onnx-int8", "openvino-int8"])
def test_a_build_is_reused_by_a_later_process(onnx_cache: Path, model_copy: Path, backend: str) -> None:
    pytest.importorskip("onnxruntime" if backend == "onnx-int8" else "openvino")
    # Builds into this cache (keyed by the weights' sha256) unless a test here already did.
    Embedder(str(model_copy), sha256=DEFAULT_MODEL_SHA256, backend=backend).encode(["warm"])
    recipe = ONNX_RECIPE if backend == "onnx-int8" else OPENVINO_RECIPE
    files = sorted((export_dir(DEFAULT_MODEL_SHA256) / recipe).rglob("*"))
    assert files
    stamps = {path: path.stat().st_mtime_ns for path in files}
    script = (
        "import logging, sys\n"
        "logging.basicConfig(level=logging.WARNING)\n"
        "from compressors.embedding import Embedder\n"
        f"print(Embedder(backend={backend!r}).encode(['The cat sat on the mat.']).shape)\n"
        # the exported runtimes tokenize and pool without these (6-12 s and ~400 MB to import)
        "print([m for m in ('torch', 'transformers', 'sentence_transformers') if m in sys.modules])\n"
    )
    env = {**os.environ, "XDG_CACHE_HOME": str(onnx_cache), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["(1, 384)", "[]"]
    assert "building" not in done.stderr
    assert {path: path.stat().st_mtime_ns for path in files} == stamps


@pytest.mark.usefixtures("release_models")
@pytest.mark.slow
def test_a_backend_that_cannot_build_falls_back_to_the_next(
    onnx_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    pytest.importorskip("onnxruntime")
    # A path no test loaded yet: loaded models are kept per path and backend.
    model = tmp_path / "model"
    shutil.copytree(default_model_path(), model)
    exported = export_dir(DEFAULT_MODEL_SHA256) / ONNX_RECIPE  # in the module's cache
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    if exported.is_dir():  # this test is about falling back; building is the tests' above (~20 s)
        shutil.copytree(exported, export_dir(DEFAULT_MODEL_SHA256) / ONNX_RECIPE)
    blocked = export_dir(DEFAULT_MODEL_SHA256) / OPENVINO_RECIPE
    blocked.parent.mkdir(parents=True, exist_ok=True)
    blocked.write_text("not a directory")  # the build cannot be moved into place
    texts = ["Moby-Dick is an 1851 novel by Herman Melville.", "The Nile flows north."]
    with caplog.at_level("WARNING"):
        vectors = Embedder(str(model), sha256=DEFAULT_MODEL_SHA256, backend="openvino-int8").encode(texts)
    assert "embedding backend openvino-int8 cannot build or load its model" in caplog.text
    assert "using onnx-int8" in caplog.text
    assert (export_dir(DEFAULT_MODEL_SHA256) / ONNX_RECIPE / "model-int8.onnx").is_file()
    reference = Embedder(backend="torch").encode(texts)
    assert (vectors * reference).sum(axis=1).min() >= 0.98


@pytest.mark.usefixtures("release_models")
@pytest.mark.parametrize("backend", ["onnx-int8", "openvino-int8"])
def test_tampered_weights_are_refused_by_the_exported_backends(
    tmp_path: Path, onnx_cache: Path, backend: str
) -> None:
    copy = _tampered_copy(tmp_path, 4096)
    with pytest.raises(ModelIntegrityError, match="sha256 mismatch"):
        Embedder(str(copy), sha256=DEFAULT_MODEL_SHA256, backend=backend).encode(["x"])


def test_bad_backend_is_rejected() -> None:
    with pytest.raises(ValueError, match="backend"):
        Embedder(backend="tensorrt")


def _write_build(directory: Path) -> None:
    (directory / "model.bin").write_bytes(bytes(range(256)) * 64)
    (directory / "tokenizer").mkdir()
    (directory / "tokenizer" / "vocab.txt").write_text("[PAD]\n[UNK]\n")


def test_a_cached_build_is_rehashed_on_load_and_tampering_is_named(tmp_path: Path) -> None:
    final = tmp_path / "sha" / "recipe"
    calls: list[Path] = []
    assert ensure_built(final, lambda tmp: (calls.append(tmp), _write_build(tmp))[-1]) == final
    assert json.loads((final / MANIFEST).read_text()).keys() == {"model.bin", "tokenizer/vocab.txt"}
    assert ensure_built(final, _write_build) == final and len(calls) == 1  # reused, not rebuilt
    data = bytearray((final / "model.bin").read_bytes())
    data[100] ^= 0x01
    (final / "model.bin").write_bytes(bytes(data))
    with pytest.raises(BuildIntegrityError, match=r"model\.bin changed since the build"):
        ensure_built(final, _write_build)
    (final / "model.bin").unlink()
    with pytest.raises(BuildIntegrityError, match=r"model\.bin"):
        ensure_built(final, _write_build)


def test_a_build_without_manifest_is_replaced(tmp_path: Path) -> None:
    final = tmp_path / "sha" / "recipe"
    final.mkdir(parents=True)
    (final / "model.bin").write_bytes(b"half a model")  # e.g. from an interrupted copy
    ensure_built(final, _write_build)
    assert (final / "model.bin").read_bytes() == bytes(range(256)) * 64
    assert (final / MANIFEST).is_file()
    assert [path.name for path in final.parent.iterdir()] == ["recipe"]  # no temporary folder left


@pytest.mark.usefixtures("release_models")
def test_exported_runtimes_pool_as_the_model_says(
    tiny_classifier: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A CLS-pooled model (not MiniLM's mean) gets the same vectors from ONNX as from sentence-transformers."""
    pytest.importorskip("onnxruntime")
    from sentence_transformers import SentenceTransformer, models

    folder = tmp_path / "cls-model"
    transformer = models.Transformer(str(tiny_classifier))
    pooling = models.Pooling(transformer.get_embedding_dimension(), pooling_mode="cls")
    SentenceTransformer(modules=[transformer, pooling], device="cpu").save(str(folder))
    sha = file_sha256(folder / "model.safetensors")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    texts = _nq_passages(12)
    reference = Embedder(str(folder), sha256=sha, backend="torch").encode(texts)
    exported = Embedder(str(folder), sha256=sha, backend="onnx").encode(texts)
    assert (reference * exported).sum(axis=1).min() >= 0.9999
    # Mean pooling of the same hidden states would differ: the test tells the two apart.
    mean_pooled = np.asarray(
        SentenceTransformer(
            modules=[transformer, models.Pooling(32, pooling_mode="mean")], device="cpu"
        ).encode(texts, normalize_embeddings=True)
    )
    assert (mean_pooled * exported).sum(axis=1).min() < 0.999


_CONCURRENT_BUILD = """
import os, sys, time
from pathlib import Path
from compressors.onnx_encoder import ensure_built

def build(tmp: Path) -> None:
    with open(sys.argv[2], "a") as calls:
        calls.write(f"{os.getpid()}\\n")
    time.sleep(3.0)
    (tmp / "model.bin").write_bytes(b"built once")

print(ensure_built(Path(sys.argv[1]), build))
"""


def test_processes_building_at_once_build_once_and_share_it(tmp_path: Path) -> None:
    final = tmp_path / "sha" / "recipe"
    calls = tmp_path / "calls.txt"
    argv = [sys.executable, "-c", _CONCURRENT_BUILD, str(final), str(calls)]
    procs = [
        subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)
    ]
    outputs = [proc.communicate(timeout=60) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0, 0], outputs
    assert all(out.strip() == str(final) for out, _ in outputs)
    assert len(calls.read_text().split()) == 1  # one build, the others waited and reused it
    assert any("waiting for another process building" in err for _, err in outputs)
    assert (final / "model.bin").read_bytes() == b"built once"
