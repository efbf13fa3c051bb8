"""`load_model` and `predict`: input kinds, output layout, sizes, thresholds, files and errors."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from panoptic_train.errors import ConfigError, WeightsError
from panoptic_train.inference.model import PanopticSegmentationModel, load_model
from panoptic_train.runtime.model_file import FORMAT, ExportedModel
from panoptic_train.runtime.postprocess import PostprocessConfig

from .conftest import CLASSES, MEAN, STD, tiny_network

# Random weights rarely reach the 0.8 class score; these keep every query in play.
LOOSE = {"threshold": 0.0, "overlap_threshold": 0.0}
CONTRACT_KEYS = {
    "format",
    "format_version",
    "model_name",
    "eomt_config",
    "state_dict",
    "classes",
    "image_size",
    "normalize",
    "postprocess",
}


def _image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Blocks of colour with noise: enough structure for varied masks from a random network."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (4, 4, 3))
    ys = np.arange(height)[:, None] * 4 // height
    xs = np.arange(width)[None, :] * 4 // width
    noisy = blocks[ys, xs] + rng.integers(-20, 21, (height, width, 3))
    return np.clip(noisy, 0, 255).astype(np.uint8)


def _assert_layout(result: dict[str, torch.Tensor], height: int, width: int) -> None:
    assert result["masks"].shape == (height, width, 2)
    assert result["masks"].dtype == torch.int64
    num_segments = result["segment_ids"].shape[0]
    assert result["segment_ids"].dtype == torch.int64
    assert result["scores"].shape == (num_segments,) and result["scores"].dtype == torch.float32
    assert result["labels"].shape == (num_segments,) and result["labels"].dtype == torch.int64


def test_every_input_kind_gives_the_same_result_in_the_spec_layout(
    tiny_model: PanopticSegmentationModel, tmp_path: Path
) -> None:
    # 32x64 fits the 64x64 input without resizing, so every kind sees identical pixels
    array = _image(32, 64)
    path = tmp_path / "image.png"
    Image.fromarray(array).save(path)
    chw = torch.from_numpy(array).permute(2, 0, 1)
    inputs = {
        "path": path,
        "str": str(path),
        "pil": Image.fromarray(array),
        "numpy": array,
        "uint8 tensor": chw,
        "float tensor": chw.float() / 255,
    }
    reference = tiny_model.predict(array, **LOOSE)
    assert reference["segment_ids"].numel() > 0
    for kind, value in inputs.items():
        result = tiny_model.predict(value, **LOOSE)
        _assert_layout(result, 32, 64)
        assert torch.equal(result["masks"], reference["masks"]), kind
        assert torch.allclose(result["scores"], reference["scores"]), kind


def test_a_list_is_batched_and_gives_one_result_per_image(
    tiny_model: PanopticSegmentationModel,
) -> None:
    images = [_image(32, 64, seed=1), _image(90, 50, seed=2), _image(64, 64, seed=3)]
    batched = tiny_model.predict(images, batch_size=2, **LOOSE)
    assert isinstance(batched, list) and len(batched) == 3
    assert isinstance(tiny_model.predict(tuple(images[:1]), **LOOSE), list)
    for image, result in zip(images, batched, strict=True):
        single = tiny_model.predict(image, **LOOSE)
        _assert_layout(result, *image.shape[:2])
        assert torch.equal(result["masks"], single["masks"])
        assert torch.allclose(result["scores"], single["scores"], atol=1e-5)


@pytest.mark.parametrize("size", [(90, 50), (20, 130), (200, 170)])
def test_the_original_size_is_restored_for_non_square_images(
    tiny_model: PanopticSegmentationModel, size: tuple[int, int]
) -> None:
    result = tiny_model.predict(_image(*size), **LOOSE)
    _assert_layout(result, *size)
    assert (result["masks"][..., 1] >= 0).any()


def test_segments_are_disjoint_and_consistent_with_ids_scores_and_labels(
    tiny_model: PanopticSegmentationModel,
) -> None:
    result = tiny_model.predict(_image(90, 50), **LOOSE)
    categories, segments = result["masks"][..., 0], result["masks"][..., 1]
    # void is -1 in both channels together
    assert torch.equal(categories == -1, segments == -1)
    ids = result["segment_ids"].tolist()
    assert len(set(ids)) == len(ids)
    assert set(segments.unique().tolist()) - {-1} == set(ids)  # every segment has pixels
    for segment_id, label, score in zip(ids, result["labels"], result["scores"], strict=True):
        # one pixel belongs to one segment, and a segment to one dataset category
        assert set(categories[segments == segment_id].tolist()) == {int(label)}
        assert int(label) in CLASSES.class_ids
        assert 0.0 < float(score) <= 1.0


def test_threshold_overrides_and_defaults_from_the_file(
    tiny_model: PanopticSegmentationModel, tmp_path: Path
) -> None:
    image = _image(48, 48)
    nothing = tiny_model.predict(image, threshold=1.0)
    assert (nothing["masks"] == -1).all() and nothing["segment_ids"].numel() == 0
    assert all(float(s) > 0.3 for s in tiny_model.predict(image, threshold=0.3)["scores"])
    # thresholds stored in the file become predict's defaults
    path = tmp_path / "loose.pt"
    ExportedModel.from_network(
        tiny_network(),
        model_name="dinov3/vitt16-eomt",
        classes=CLASSES,
        mean=MEAN,
        std=STD,
        postprocess=PostprocessConfig(**LOOSE),
    ).save(path)
    loose = load_model(path, device="cpu")
    assert loose.postprocess == PostprocessConfig(**LOOSE)
    assert torch.equal(loose.predict(image)["masks"], tiny_model.predict(image, **LOOSE)["masks"])
    with pytest.raises(ConfigError, match="mask_threshold"):
        tiny_model.predict(image, mask_threshold=2.0)


def test_classes_map_category_ids_to_names_and_thing_flags(
    tiny_model: PanopticSegmentationModel,
) -> None:
    assert tiny_model.classes == {
        1: "disk",
        2: "box",
        3: "triangle",
        10: "sky",
        11: "grass",
        12: "sand",
    }
    assert tiny_model.is_thing == {1: True, 2: True, 3: True, 10: False, 11: False, 12: False}


def test_exported_file_round_trip_with_weights_only(tiny_model_file: Path) -> None:
    content = torch.load(tiny_model_file, weights_only=True)
    assert set(content) == CONTRACT_KEYS
    assert content["format"] == FORMAT
    assert content["classes"] == [
        {"id": c["id"], "name": c["name"], "isthing": bool(c["isthing"])}
        for c in (
            {"id": i, "name": n, "isthing": t}
            for i, n, t in zip(CLASSES.class_ids, CLASSES.names, CLASSES.is_thing, strict=True)
        )
    ]
    assert content["normalize"] == {"mean": list(MEAN), "std": list(STD)}
    assert content["image_size"] == [64, 64]

    original = tiny_network().eval()
    loaded = load_model(tiny_model_file, device="cpu")
    for key, value in original.state_dict().items():
        assert torch.equal(loaded.network.state_dict()[key], value), key
    in_memory = PanopticSegmentationModel(
        original, CLASSES, model_name="dinov3/vitt16-eomt", mean=MEAN, std=STD, device="cpu"
    )
    image = _image(40, 60)
    assert torch.equal(
        loaded.predict(image, **LOOSE)["masks"], in_memory.predict(image, **LOOSE)["masks"]
    )


def test_a_training_checkpoint_loads_from_its_model_entry(
    tiny_model_file: Path, tiny_model: PanopticSegmentationModel, tmp_path: Path
) -> None:
    checkpoint = tmp_path / "last.ckpt"
    exported = torch.load(tiny_model_file, weights_only=True)
    torch.save({"model": exported, "step": 12, "optimizer": {"state": {}}}, checkpoint)
    model = load_model(checkpoint, device="cpu")
    image = _image(40, 60)
    assert torch.equal(
        model.predict(image, **LOOSE)["masks"], tiny_model.predict(image, **LOOSE)["masks"]
    )


def _write_foreign_files(tmp_path: Path, exported: dict) -> dict[str, tuple[Path, str]]:
    """name -> (file, a phrase the error must contain)."""
    files: dict[str, tuple[Path, str]] = {}
    text = tmp_path / "notes.pt"
    text.write_text("not a model")
    files["text"] = (text, "is not a PyTorch file")
    bare = tmp_path / "bare.pt"
    torch.save(tiny_network().state_dict(), bare)
    files["bare state dict"] = (bare, "a bare state dict of")
    pickled = tmp_path / "lightning_style.ckpt"  # hyper-parameters pickled as an object
    torch.save({"state_dict": {}, "hyper_parameters": argparse.Namespace(lr=1.0)}, pickled)
    files["arbitrary object"] = (pickled, "contains the Python object argparse.Namespace")
    other = tmp_path / "other.ckpt"
    torch.save({"state_dict": {}, "epoch": 3}, other)
    files["other checkpoint"] = (other, "a dict with keys state_dict, epoch")
    wrong_format = tmp_path / "wrong_format.pt"
    torch.save({**exported, "format": "someone_else"}, wrong_format)
    files["wrong format"] = (wrong_format, "has format 'someone_else'")
    newer = tmp_path / "newer.pt"
    torch.save({**exported, "format_version": 99}, newer)
    files["newer version"] = (newer, "format_version 99")
    incomplete = tmp_path / "incomplete.pt"
    torch.save({k: v for k, v in exported.items() if k != "classes"}, incomplete)
    files["missing entry"] = (incomplete, "missing the entries ['classes']")
    return files


def test_foreign_files_get_an_error_saying_what_was_found(
    tiny_model_file: Path, tmp_path: Path
) -> None:
    exported = torch.load(tiny_model_file, weights_only=True)
    for name, (path, phrase) in _write_foreign_files(tmp_path, exported).items():
        with pytest.raises(WeightsError) as error:
            load_model(path, device="cpu")
        assert phrase in str(error.value), name
        assert str(path) in str(error.value), name


def test_names_without_a_panoptic_head_and_unknown_names_are_explained() -> None:
    with pytest.raises(WeightsError, match="no panoptic head"):
        load_model("dinov3/vitt16-eomt", device="cpu")
    with pytest.raises(WeightsError, match="neither a file nor a model name"):
        load_model("out/missing/exported_best.pt", device="cpu")


@pytest.mark.parametrize(
    ("value", "phrase"),
    [
        (np.zeros((8, 8, 3), dtype=np.float32), "dtype uint8"),
        (np.zeros((3, 8, 8), dtype=np.uint8), "Channels go last"),
        (torch.full((3, 8, 8), 255.0), "values in [0, 1]"),
        (torch.zeros(1, 3, 8, 8), "pass a list of images"),
        (torch.zeros(3, 8, 8, dtype=torch.int32), "uint8 (0..255) or float"),
        ({"image": 1}, "type dict"),
    ],
)
def test_bad_inputs_are_rejected_with_the_expected_layout(
    tiny_model: PanopticSegmentationModel, value: object, phrase: str
) -> None:
    with pytest.raises(ConfigError) as error:
        tiny_model.predict(value)  # type: ignore[arg-type]
    assert phrase in str(error.value)


def test_bad_precision_and_unavailable_devices_are_rejected(tiny_model_file: Path) -> None:
    with pytest.raises(ConfigError, match="precision"):
        load_model(tiny_model_file, device="cpu", precision="fp8")  # type: ignore[arg-type]
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            load_model(tiny_model_file, device="cuda")


def test_a_registry_model_loads_weights_the_user_downloaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_model_file: Path
) -> None:
    # A COCO-fine-tuned name without a published file: the error says how to provide one, and
    # `weights=` then loads it into the named architecture with the COCO classes.
    monkeypatch.setenv("PANOPTIC_TRAIN_CACHE", str(tmp_path / "empty_cache"))
    name = "dinov3/vitt16-eomt-panoptic-coco"
    with pytest.raises(WeightsError, match=r"weights= in load_model"):
        load_model(name, device="cpu")

    from panoptic_train.models.registry import create_model

    torch.manual_seed(3)
    network = create_model(name, num_classes=133, backbone_weights=None)
    weights_file = tmp_path / "coco_vitt16.pt"
    torch.save(network.state_dict(), weights_file)

    model = load_model(name, device="cpu", weights=weights_file)
    assert len(model.classes) == 133 and model.classes[1] == "person"
    loaded = model.network.state_dict()
    for key, value in network.state_dict().items():
        assert torch.equal(loaded[key], value), key

    with pytest.raises(ConfigError, match="carries its own weights"):
        load_model(tiny_model_file, weights=weights_file)
