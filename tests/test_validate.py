"""One error style for every config (data, transforms, training, serving): a header naming the
argument or file, then one line per problem, `<where>=<value>: <what is wrong or valid>`."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from panoptic_train._validate import one_of, parse_config
from panoptic_train.data.config import SplitArgs, load_data_args
from panoptic_train.data.transforms import TransformArgs
from panoptic_train.errors import ConfigError
from panoptic_train.serve.config import ServeConfig
from panoptic_train.train.config import LoggerArgs, ModelArgs, TrainConfig


def _message(call, *args, **kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        call(*args, **kwargs)
    return str(info.value)


def test_every_problem_of_a_dict_argument_is_one_line() -> None:
    value = {"tensorboard": 5, "wandb": {"projct": "x"}, "log_every_num_steps": "often"}
    assert _message(parse_config, LoggerArgs, value, "logger_args") == (
        "Invalid logger_args:\n"
        "  logger_args['tensorboard']=5: should be a dict (valid keys: ['flush_secs'])\n"
        "  logger_args['wandb']['projct']: unknown key (valid keys: ['entity', 'log_model', "
        "'name', 'offline', 'project', 'tags']); did you mean 'project'?\n"
        "  logger_args['log_every_num_steps']='often': should be a valid integer, unable to "
        "parse string as an integer; or 'auto'"
    )


def test_keyword_arguments_stand_bare_and_choices_are_listed() -> None:
    message = _message(
        parse_config, TrainConfig, {"data": None, "model": "m", "steps": 0, "precision": "fp8"}, ""
    )
    assert message.split("\n") == [
        "Invalid arguments:",
        "  out: required key missing",
        "  data=None: should be a dict (valid keys: ['allow_unlabeled', 'ignore_classes', "
        "'train', 'val'])",
        "  steps=0: should be greater than or equal to 1",
        "  precision='fp8': should be '32-true', 'bf16-mixed', '16-mixed', 'bf16-true' or "
        "'16-true'",
    ]


def test_a_check_of_the_whole_dict_names_the_argument() -> None:
    value = {"attn_mask_annealing_steps_start": [0], "attn_mask_annealing_steps_end": [1, 2]}
    assert _message(parse_config, ModelArgs, value, "model_args") == (
        "Invalid model_args:\n"
        "  model_args: attn_mask_annealing_steps_start has 1 entries but "
        "attn_mask_annealing_steps_end has 2; give one per joint block"
    )


def test_long_values_are_cut() -> None:
    assert _message(parse_config, ModelArgs, {"weight_decay": "x" * 200}, "model_args") == (
        "Invalid model_args:\n"
        f"  model_args['weight_decay']='{'x' * 76}...: should be a valid number, unable to "
        "parse string as a number"
    )


def test_a_config_file_is_named_as_the_source(tmp_path: Path) -> None:
    path = tmp_path / "data.yaml"
    path.write_text(yaml.safe_dump({"trian": {}, "val": {"images": "i", "masks": "m"}}))
    assert _message(load_data_args, path) == (
        f"Invalid data file '{path}':\n"
        "  data['train']: required key missing\n"
        "  data['val']['annotations']: required key missing\n"
        "  data['trian']: unknown key (valid keys: ['allow_unlabeled', 'ignore_classes', "
        "'train', 'val']); did you mean 'train'?"
    )


def test_a_direct_call_fails_in_the_same_style() -> None:
    assert _message(SplitArgs, images="i") == (
        "Invalid SplitArgs(...):\n"
        "  masks: required key missing\n"
        "  annotations: required key missing"
    )
    # Nested configs are validated by pydantic itself: their locations stay whole.
    assert _message(TransformArgs, scale_jitter={"min_scale": 3.0}, val={"flip": True}) == (
        "Invalid TransformArgs(...):\n"
        "  scale_jitter: min_scale (3.0) must not exceed max_scale (2.0)\n"
        "  val['flip']: unknown key (valid keys: ['image_size', 'normalize'])"
    )
    assert _message(ServeConfig, max_batch=0, max_wait_ms=-1) == (
        "Invalid ServeConfig(...):\n"
        "  max_batch=0: should be greater than or equal to 1\n"
        "  max_wait_ms=-1: should be greater than or equal to 0"
    )


def test_none_means_the_defaults_and_a_config_passes_through() -> None:
    defaults = parse_config(ModelArgs, None, "model_args")
    assert defaults == ModelArgs() and defaults.lr == "auto"
    assert parse_config(ModelArgs, defaults, "model_args") is defaults


def test_configs_are_immutable() -> None:
    config = ServeConfig()
    with pytest.raises(ValueError, match="frozen"):
        config.max_batch = 2  # type: ignore[misc]


def test_a_value_outside_a_vocabulary_names_the_valid_ones() -> None:
    assert one_of("fp16", "precision", ("fp32", "fp16")) == "fp16"
    assert _message(one_of, "fp8", "precision", ("auto", "fp32", "fp16", "bf16")) == (
        "precision='fp8' is not supported; use 'auto', 'fp32', 'fp16' or 'bf16'."
    )
