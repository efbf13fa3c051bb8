"""Run planning, rule by rule, against numbers worked out by hand (no training, no Fabric)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from panoptic_train._distributed import Launch
from panoptic_train.data.coco import ClassMapping
from panoptic_train.data.transforms import load_transform_args
from panoptic_train.errors import ConfigError
from panoptic_train.train.config import TrainConfig
from panoptic_train.train.plan import (
    Interval,
    Machine,
    ModelDefaults,
    apply_model_defaults,
    argument_differences,
    check_resume_arguments,
    check_resume_classes,
    fabric_arguments,
    matmul_precision,
    plan_run,
    resolve_num_workers,
    resolve_precision,
    training_arguments,
)

CPU = Machine(accelerator="cpu", bf16_supported=False, cpus=16, launch=None)
SPLIT = {"images": "/data/images", "masks": "/data/masks", "annotations": "/data/a.json"}


def _config(**overrides: Any) -> TrainConfig:
    values = {
        "out": "/runs/a",
        "data": {"train": SPLIT, "val": SPLIT},
        "model": "dinov3/vitt16-eomt",
        "steps": 90_000,
        "batch_size": 16,
        **overrides,
    }
    return TrainConfig.model_validate(values)


def test_the_global_batch_splits_over_devices_and_accumulation() -> None:
    plan = plan_run(_config(gradient_accumulation_steps=4), 2, 3, CPU)
    assert (plan.world_size, plan.micro_batch_size, plan.gradient_accumulation_steps) == (2, 2, 4)
    plan = plan_run(_config(), 2, 3, CPU)  # "auto" accumulation is 1
    assert (plan.micro_batch_size, plan.gradient_accumulation_steps) == (8, 1)


def test_a_batch_that_does_not_split_is_refused_with_the_multiple_to_use() -> None:
    with pytest.raises(
        ConfigError,
        match=r"batch_size=6 .* 4 device\(s\) x gradient_accumulation_steps=1\. .* multiple of 4",
    ):
        plan_run(_config(batch_size=6), 4, 3, CPU)


@pytest.mark.parametrize(
    ("precision", "accelerator", "bf16", "expected"),
    [
        ("bf16-mixed", "cpu", False, "32-true"),
        ("bf16-mixed", "cuda", False, "16-mixed"),
        ("bf16-mixed", "cuda", True, "bf16-mixed"),
        ("bf16-mixed", "mps", False, "bf16-mixed"),
        ("16-mixed", "cpu", False, "16-mixed"),
    ],
)
def test_precision_falls_back_where_bf16_is_missing_or_slow(
    precision: str, accelerator: str, bf16: bool, expected: str
) -> None:
    machine = Machine(accelerator=accelerator, bf16_supported=bf16, cpus=4, launch=None)
    assert resolve_precision(precision, machine) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("num_workers", "world_size", "num_nodes", "cpus", "expected"),
    [
        ("auto", 2, 1, 16, 7),  # 16 CPUs for 2 devices, one CPU each for the training process
        ("auto", 1, 1, 64, 8),  # at most 8
        ("auto", 1, 1, 1, 0),  # never below 0
        ("auto", 8, 2, 16, 3),  # 4 devices per node
        (5, 2, 1, 16, 5),
    ],
)
def test_workers(
    num_workers: Any, world_size: int, num_nodes: int, cpus: int, expected: int
) -> None:
    config = _config(num_workers=num_workers, num_nodes=num_nodes)
    assert resolve_num_workers(config, world_size, cpus) == expected


def test_lr_is_scaled_by_the_square_root_of_the_batch() -> None:
    assert plan_run(_config(batch_size=64), 1, 3, CPU).lr == pytest.approx(4e-4)
    assert plan_run(_config(model_args={"lr": 1e-3}), 1, 3, CPU).lr == pytest.approx(1e-3)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({}, 2e-4),  # the registry's pretrained backbone: EoMT's rate
        ({"model_args": {"backbone_weights": None}}, 8e-4),  # random backbone: 4x
        ({"model_args": {"backbone_weights": None}, "batch_size": 4}, 4e-4),  # 8e-4 x sqrt(1/4)
        ({"model_args": {"backbone_weights": None, "lr": 1e-3}}, 1e-3),  # given: kept
        # Trained weights from a checkpoint or a model file, whatever backbone_weights says.
        ({"model_args": {"backbone_weights": None}, "checkpoint": "/runs/a/last.ckpt"}, 2e-4),
        ({"model_args": {"backbone_weights": None}, "model": "/runs/a/best.pt"}, 2e-4),
    ],
)
def test_auto_lr_is_higher_for_a_random_backbone(
    overrides: dict[str, Any], expected: float
) -> None:
    assert plan_run(_config(**overrides), 1, 3, CPU).lr == pytest.approx(expected)


def test_short_runs_get_short_warmups_and_annealing_windows() -> None:
    # (2000, 3000) x 2400 / 90 000 = (53.3, 80); windows: block 0 over the backbone warmup,
    # blocks 1 and 2 over 10/24-14/24 and 16/24-20/24 of 2400 steps.
    plan = plan_run(_config(steps=2400), 1, 3, CPU)
    assert plan.warmup_steps == (53, 80)
    assert plan.annealing_windows == ((0, 80), (1000, 1400), (1600, 2000))
    # Four joint blocks: six phases of 100 steps, block k >= 1 in phase k + 1.
    plan = plan_run(_config(steps=600, model_args={"lr_warmup_steps": (10, 60)}), 1, 4, CPU)
    assert plan.warmup_steps == (10, 60)
    assert plan.annealing_windows == ((0, 60), (200, 300), (300, 400), (400, 500))
    assert plan_run(_config(steps=10), 1, 3, CPU).warmup_steps == (1, 1)  # at least one step


def test_given_annealing_windows_must_match_the_joint_blocks() -> None:
    args = {"attn_mask_annealing_steps_start": [10, 20], "attn_mask_annealing_steps_end": [20, 30]}
    plan = plan_run(_config(model_args=args), 1, 2, CPU)
    assert plan.annealing_windows == ((10, 20), (20, 30))
    with pytest.raises(ConfigError, match="have 2 entries but the model has 3 joint blocks"):
        plan_run(_config(model_args=args), 1, 3, CPU)


def test_intervals_default_to_20_and_1000_steps_or_the_whole_run() -> None:
    plan = plan_run(_config(steps=5000), 1, 3, CPU)
    assert (plan.log_every, plan.val_every) == (Interval(20, 5000), Interval(1000, 5000))
    assert plan.save_every == Interval(1000, 5000)  # save_every_num_steps has no "auto"
    plan = plan_run(_config(steps=10), 1, 3, CPU)
    assert (plan.log_every.every, plan.val_every.every) == (10, 10)
    given = {"log_every_num_steps": 7, "val_every_num_steps": 3}
    plan = plan_run(_config(steps=10, logger_args=given), 1, 3, CPU)
    assert (plan.log_every.every, plan.val_every.every) == (7, 3)


def test_an_interval_is_due_at_its_multiples_and_at_the_last_step() -> None:
    interval = Interval(every=20, last_step=50)
    assert [step for step in range(1, 51) if interval.due(step)] == [20, 40, 50]


def test_resolved_values_are_what_config_json_records() -> None:
    plan = plan_run(_config(steps=2400, batch_size=4), 2, 3, CPU)
    assert json.loads(json.dumps(plan.resolved())) == {
        "world_size": 2,
        "micro_batch_size": 2,
        "gradient_accumulation_steps": 1,
        "num_workers": 7,
        "precision": "32-true",
        "lr": pytest.approx(1e-4),
        "warmup_steps": [53, 80],
        "annealing_windows": [[0, 80], [1000, 1400], [1600, 2000]],
        "log_every_num_steps": 20,
        "val_every_num_steps": 1000,
    }


def test_fabric_takes_the_processes_a_launcher_started() -> None:
    launch = Launch(world_size=4, processes_per_node=2, rank=0, local_rank=0)
    machine = Machine(accelerator="cpu", bf16_supported=False, cpus=4, launch=launch)
    arguments = fabric_arguments(_config(num_nodes=2), machine)
    assert (arguments.devices, arguments.num_nodes, arguments.precision) == (2, 2, "32-true")
    for overrides in ({"num_nodes": 1}, {"num_nodes": 2, "devices": 4}):
        with pytest.raises(ConfigError, match=r"started 4 processes \(2 per node on 2 node"):
            fabric_arguments(_config(**overrides), machine)
    assert fabric_arguments(_config(devices=3), CPU).devices == 3  # no launcher: as given


def test_fsdp_refuses_fp16_mixed_precision() -> None:
    assert fabric_arguments(_config(strategy="fsdp"), CPU).precision == "32-true"
    with pytest.raises(ConfigError, match=r"strategy='fsdp' trains in precision .* '16-mixed'"):
        fabric_arguments(_config(strategy="fsdp", precision="16-mixed"), CPU)


def test_matmul_precision() -> None:
    assert matmul_precision("auto", "cuda") == "high"
    assert matmul_precision("auto", "cpu") is None
    assert matmul_precision("medium", "cpu") == "medium"


def test_model_defaults_fill_only_what_was_not_given() -> None:
    defaults = ModelDefaults(steps=180_000, image_size=(1280, 1280))
    steps, transforms = apply_model_defaults("auto", load_transform_args({}), defaults)
    assert (steps, transforms.image_size) == (180_000, (1280, 1280))
    # 640 given explicitly is kept although it is also TransformArgs' own default.
    given = load_transform_args({"image_size": (640, 640)})
    steps, transforms = apply_model_defaults(500, given, defaults)
    assert (steps, transforms.image_size) == (500, (640, 640))


def test_training_arguments_leave_out_what_a_resume_may_change() -> None:
    plan = plan_run(_config(), 1, 3, CPU)
    arguments = training_arguments(_config(), plan)
    assert arguments["model_args"]["lr"] == "auto" and arguments["world_size"] == 1
    assert json.loads(json.dumps(arguments)) == arguments  # plain JSON values
    changed = _config(
        num_workers=3,
        logger_args={"log_every_num_steps": 5, "tensorboard": None},
        save_checkpoint_args={"save_every_num_steps": 7},
        loader_args={"pin_memory": False},
    )
    assert training_arguments(changed, plan_run(changed, 1, 3, CPU)) == arguments


def test_resume_differences_are_listed_by_path() -> None:
    saved = {"model_args": {"lr": 2e-4}, "steps": 10, "seed": 0}
    current = {"model_args": {"lr": 1e-3}, "steps": 10, "batch_size": 4}
    assert argument_differences(saved, current) == [
        "batch_size: None (interrupted run) -> 4 (now)",
        "model_args.lr: 0.0002 (interrupted run) -> 0.001 (now)",
        "seed: 0 (interrupted run) -> None (now)",
    ]
    check_resume_arguments(saved, saved, Path("/runs/a"))
    with pytest.raises(ConfigError, match=r"model='/runs/a/checkpoints/last\.ckpt'"):
        check_resume_arguments(saved, current, Path("/runs/a"))


def test_resume_refuses_other_classes() -> None:
    saved = ClassMapping.from_list([{"id": 1, "name": "a", "isthing": 1}])
    check_resume_classes(saved, saved, Path("/runs/a"))
    other = ClassMapping.from_list([{"id": 2, "name": "b", "isthing": 0}])
    with pytest.raises(ConfigError, match=r"\['b'\]\) are not those of the interrupted run"):
        check_resume_classes(saved, other, Path("/runs/a"))


def test_machine_detect_reads_this_process() -> None:
    machine = Machine.detect("cpu")
    assert machine.accelerator == "cpu" and not machine.bf16_supported
    assert machine.cpus >= 1 and machine.launch is None
    assert math.isfinite(plan_run(_config(), 1, 3, machine).lr)
