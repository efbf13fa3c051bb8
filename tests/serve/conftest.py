"""A tiny random EoMT saved as an exported model, synthetic images, and a real
`panoptic-train serve` process on 127.0.0.1 serving it, shared by the serve tests.

The model and the load generator are those of `benchmarks/serve_load.py`, so the tests exercise
exactly what the benchmark measures."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import httpx
import pytest

from panoptic_train.data.synthetic import write_dataset
from panoptic_train.inference.model import load_model
from panoptic_train.serve.launch import ServerProcess, serve_in_subprocess


def _load_benchmark() -> ModuleType:
    path = Path(__file__).parents[2] / "benchmarks" / "serve_load.py"
    spec = importlib.util.spec_from_file_location("benchmarks_serve_load", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


# The benchmark's tiny model and load generator: the tests serve and load what it measures.
serve_load = _load_benchmark()
LOOSE = serve_load.TINY_THRESHOLDS
# The main server's options: batches of up to 4, gathered for long enough that concurrent test
# clients reliably share them, and a pixel limit small enough to test cheaply.
MAX_BATCH = 4
MAX_IMAGE_PIXELS = 100_000
SERVER_OPTIONS = (
    "--device",
    "cpu",
    "--max-batch",
    str(MAX_BATCH),
    "--max-wait-ms",
    "50",
    "--max-image-pixels",
    str(MAX_IMAGE_PIXELS),
)

# The ONNX server doubles as the back-pressure server: one queue place, batches of one and a
# short timeout. Its tiny graph answers small images in milliseconds, far inside those limits,
# while a 3000x3000 image takes over a second (the merge runs at full resolution); sharing one
# server saves a start.
TIGHT_TIMEOUT_S = 0.5
ONNX_OPTIONS = ("--device", "cpu", "--max-batch", "1", "--max-queue", "1", "--max-wait-ms", "0")
ONNX_OPTIONS += ("--timeout", str(TIGHT_TIMEOUT_S))


@pytest.fixture(scope="session")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return serve_load.write_tiny_model(tmp_path_factory.mktemp("model") / "exported_best.pt")


@pytest.fixture(scope="session")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Six synthetic PNGs of two sizes (landscape and portrait), so batches mix sizes."""
    root = tmp_path_factory.mktemp("images")
    images = []
    for seed, (split, size) in enumerate((("landscape", (96, 128)), ("portrait", (120, 90)))):
        folder = Path(write_dataset(root, 3, image_size=size, seed=seed, split=split)["images"])
        for path in sorted(folder.iterdir()):  # unique stems: predict writes <stem>.png
            images.append(path.rename(root / f"{split}-{path.name}"))
    return images


@pytest.fixture(scope="session")
def server(model_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("server") / "server.log"
    with serve_in_subprocess(model_file, SERVER_OPTIONS, log=log) as process:
        yield process


@pytest.fixture
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60, trust_env=False) as http:
        yield http


@pytest.fixture(scope="session")
def onnx_file(model_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model's ONNX export (unverified and unsimplified: the export tests cover those)."""
    pytest.importorskip("onnxruntime")
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    model = load_model(model_file, device="cpu")
    return model.export_onnx(path, batch_size=2, simplify=False, verify=False)


@pytest.fixture(scope="session")
def onnx_server(
    onnx_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("onnx_server") / "server.log"
    with serve_in_subprocess(onnx_file, ONNX_OPTIONS, log=log) as process:
        yield process
