"""Dict arguments are validated: unknown keys and bad values are errors that name them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from panoptic_train._validate import parse_config
from panoptic_train.data.coco import ClassMapping
from panoptic_train.errors import ConfigError
from panoptic_train.models.registry import create_model
from panoptic_train.runtime.model_file import ExportedModel
from panoptic_train.train.api import model_defaults
from panoptic_train.train.config import LoggerArgs, ModelArgs, SaveCheckpointArgs


def test_defaults_when_none() -> None:
    args = parse_config(SaveCheckpointArgs, None, "save_checkpoint_args")
    assert (args.save_every_num_steps, args.save_last, args.save_best) == (1000, True, True)
    logger = parse_config(LoggerArgs, None, "logger_args")
    assert logger.tensorboard is not None and logger.mlflow is None and logger.wandb is None


def test_unknown_key_is_named_with_the_valid_keys() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(ModelArgs, {"learning_rate": 1e-3}, "model_args")
    message = str(info.value)
    assert "model_args['learning_rate']" in message and "'lr'" in message


def test_unknown_nested_key_names_the_nested_keys() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(LoggerArgs, {"wandb": {"projct": "x"}}, "logger_args")
    message = str(info.value)
    assert "logger_args['wandb']['projct']" in message and "'project'" in message


def test_bad_value_is_named() -> None:
    with pytest.raises(ConfigError, match=r"save_checkpoint_args\['save_every_num_steps'\]=0"):
        parse_config(SaveCheckpointArgs, {"save_every_num_steps": 0}, "save_checkpoint_args")
    with pytest.raises(ConfigError, match="one per joint block"):
        parse_config(
            ModelArgs,
            {"attn_mask_annealing_steps_start": [0], "attn_mask_annealing_steps_end": [1, 2]},
            "model_args",
        )


def test_turning_a_logger_off() -> None:
    assert parse_config(LoggerArgs, {"tensorboard": None}, "logger_args").tensorboard is None


def test_not_a_dict() -> None:
    with pytest.raises(ConfigError, match=r"model_args='lr=1': should be a dict \(valid keys: \["):
        parse_config(ModelArgs, "lr=1", "model_args")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("model", "steps", "size"),
    [
        ("dinov3/vitt16-eomt", 360_000, (640, 640)),
        ("dinov3/vitt16plus-eomt-panoptic-coco", 360_000, (640, 640)),
        ("dinov3/vits16-eomt", 180_000, (640, 640)),
        ("dinov3/vitb16-eomt-panoptic-coco", 180_000, (640, 640)),
        ("dinov3/vitl16-eomt", 90_000, (640, 640)),
        ("dinov3/vitl16-eomt-panoptic-coco-1280", 90_000, (1280, 1280)),
        ("dinov3/vit7b16-eomt", 90_000, (640, 640)),
    ],
)
def test_auto_steps_and_size_follow_the_published_protocol(
    model: str, steps: int, size: tuple[int, int]
) -> None:
    """48 / 24 / 12 COCO epochs at batch 16 for T / S, B / L and larger; the 1280 model trains
    at 1280 unless transform_args says otherwise."""
    defaults = model_defaults(model)
    assert (defaults.steps, defaults.image_size) == (steps, size)


def test_a_model_file_gives_the_size_it_was_trained_at(tmp_path: Path) -> None:
    """Fine-tuning a file: its stored image_size, the steps of the name it was trained from; a
    file edited to a size the network cannot take is refused naming the value."""
    network = create_model(
        "dinov3/vitt16-eomt", num_classes=2, backbone_weights=None, image_size=(32, 48)
    )
    classes = ClassMapping.from_list(
        [{"id": 1, "name": "a", "isthing": 1}, {"id": 2, "name": "b", "isthing": 0}]
    )
    exported = ExportedModel.from_network(
        network, model_name="dinov3/vitt16-eomt", classes=classes, mean=(0, 0, 0), std=(1, 1, 1)
    )
    path = tmp_path / "exported.pt"
    exported.save(path)
    defaults = model_defaults(str(path))
    assert (defaults.steps, defaults.image_size) == (360_000, (32, 48))

    edited = tmp_path / "edited.pt"
    torch.save({**exported.to_dict(), "image_size": [32, 48, 3]}, edited)
    with pytest.raises(ConfigError, match=r"image_size is \[32, 48, 3\]"):
        model_defaults(str(edited))
