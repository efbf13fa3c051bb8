"""Fine-tuning starts from a previous model's weights; other classes re-initialise the head."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from panoptic_train.data.coco import ClassMapping
from panoptic_train.data.synthetic import CATEGORIES
from panoptic_train.models.registry import create_model
from panoptic_train.runtime.model_file import ExportedModel
from panoptic_train.train.config import ModelArgs
from panoptic_train.train.model_init import build_initial_model

CLASSES = ClassMapping.from_list(CATEGORIES)


@pytest.fixture(scope="module")
def exported_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    torch.manual_seed(0)
    network = create_model(
        "dinov3/vitt16-eomt",
        CLASSES.num_classes,
        backbone_weights=None,
        num_queries=6,
        image_size=(64, 64),
    )
    path = tmp_path_factory.mktemp("finetune") / "exported_best.pt"
    ExportedModel.from_network(
        network, model_name="dinov3/vitt16-eomt", classes=CLASSES, mean=(0.5,) * 3, std=(0.2,) * 3
    ).save(path)
    return path, network.state_dict()


def test_same_classes_keep_every_weight(exported_file: tuple[Path, dict]) -> None:
    path, state = exported_file
    initial = build_initial_model(str(path), CLASSES, ModelArgs(), (96, 96))
    assert initial.model_name == "dinov3/vitt16-eomt"
    assert initial.network.config.image_size == (96, 96)  # the new run's size
    for name, value in initial.network.state_dict().items():
        torch.testing.assert_close(value, state[name], msg=name)


def test_reordered_classes_reorder_the_head(exported_file: tuple[Path, dict]) -> None:
    path, state = exported_file
    reordered = ClassMapping.from_list(list(reversed(CATEGORIES)))
    network = build_initial_model(str(path), reordered, ModelArgs(), (64, 64)).network
    rows = [5, 4, 3, 2, 1, 0, 6]  # reversed classes, "no object" stays last
    torch.testing.assert_close(network.class_head.weight, state["class_head.weight"][rows])


def test_other_classes_reinitialise_the_head_with_a_warning(
    exported_file: tuple[Path, dict],
) -> None:
    path, state = exported_file
    fewer = ClassMapping.from_list([c for c in CATEGORIES if c["id"] != 12])
    with pytest.warns(UserWarning, match=r"no longer present: 12:sand.*re-initialised"):
        network = build_initial_model(str(path), fewer, ModelArgs(), (64, 64)).network
    assert network.class_head.weight.shape[0] == fewer.num_classes + 1
    torch.testing.assert_close(network.queries.weight, state["queries.weight"])
    torch.testing.assert_close(
        network.backbone.blocks[3].mlp.fc1.weight, state["backbone.blocks.3.mlp.fc1.weight"]
    )


def test_a_training_checkpoint_is_a_model_source(
    exported_file: tuple[Path, dict], tmp_path: Path
) -> None:
    path, state = exported_file
    checkpoint = tmp_path / "last.ckpt"
    torch.save({"model": torch.load(path, weights_only=True), "step": 7}, checkpoint)
    network = build_initial_model(str(checkpoint), CLASSES, ModelArgs(), (64, 64)).network
    for name, value in network.state_dict().items():
        torch.testing.assert_close(value, state[name], msg=name)
