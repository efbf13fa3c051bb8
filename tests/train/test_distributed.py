"""Training on two processes (gloo on 127.0.0.1) equals training on one.

Launched both ways a user would: `devices=2` from the Python API (Fabric starts the second
process; DDP) and `torchrun --nproc-per-node 2 -m panoptic_train train ...` (FSDP, SIGKILLed
as a whole mid-run and resumed). With the same global batch and seed every random draw is a
function of (seed, sample position) or (seed, step, micro-batch) (`train.data_order`), the loss
is normalised by the global batch and the gradients are averaged over the ranks, so the runs
differ only by fp32 rounding: a batch of 4 against two of 2, summed in another order, with Adam
dividing each gradient by its own magnitude. After 8 steps at lr 2e-3 the weights differ by
about 6e-6; TOLERANCE is 2.5 % of one step's largest move, while anything per rank (the RoPE
rescale factor, the loss points, the class loss's normaliser) moved weights by about 1e-3. The
masked-attention annealing windows lie after the run: inside them, which queries keep their
mask is drawn per image slot of a rank (see the README).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

import panoptic_train
from panoptic_train import train_panoptic_segmentation
from panoptic_train.data.config import load_data_args
from panoptic_train.data.dataset import build_datasets, collate_val
from panoptic_train.data.synthetic import write_dataset
from panoptic_train.data.transforms import load_transform_args
from panoptic_train.errors import ConfigError
from panoptic_train.train.validate import evaluate_network

from .conftest import fast_run

SCRIPT = Path(__file__).with_name("train_subprocess.py")
TORCHRUN = Path(sys.executable).with_name("torchrun")
STEPS = 8
LR = 2e-3
TOLERANCE = 5e-5
THRESHOLD = 0.3  # a few steps of training already give segments above it: PQ > 0
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
TIMEOUT = 300


def _arguments(data: dict[str, Any], out: Path, **overrides: Any) -> dict[str, Any]:
    return fast_run(
        data,
        out,
        steps=STEPS,
        batch_size=4,
        seed=3,
        model_args={
            "lr": LR,
            "llrd": 1.0,
            "threshold": THRESHOLD,
            "attn_mask_annealing_steps_start": [2 * STEPS] * 3,
            "attn_mask_annealing_steps_end": [3 * STEPS] * 3,
        },
        logger_args={"val_every_num_steps": STEPS, "log_every_num_steps": 2},
        save_checkpoint_args={"save_every_num_steps": 2},
        **overrides,
    )


def _command_line(arguments: dict[str, Any]) -> list[str]:
    """`panoptic-train train` options for API arguments."""
    options = []
    for name, value in arguments.items():
        option = f"--{name.replace('_', '-')}"
        if isinstance(value, bool):
            options += [option] if value else []
        elif isinstance(value, dict):
            options += [option, json.dumps(value)]
        elif value is not None:
            options += [option, str(value)]
    return options


def _torchrun(arguments: dict[str, Any]) -> list[str]:
    return [
        str(TORCHRUN),
        "--nproc-per-node",
        "2",
        "--standalone",
        "-m",
        "panoptic_train",
        "train",
        *_command_line(arguments),
    ]


def _checkpoint(out: Path) -> dict[str, Any]:
    return torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)


def _checkpoint_step(out: Path) -> int:
    try:
        return int(_checkpoint(out)["step"])
    except (FileNotFoundError, RuntimeError, EOFError):  # absent, or being replaced right now
        return -1


def _files(out: Path) -> list[str]:
    return sorted(
        str(path.relative_to(out).parent / ("*" if "tfevents" in path.name else path.name))
        for path in out.rglob("*")
        if path.is_file()
    )


def _assert_same_weights(run: Path, reference: Path, atol: float) -> None:
    weights = _checkpoint(run)["model"]["state_dict"]
    expected = _checkpoint(reference)["model"]["state_dict"]
    assert weights.keys() == expected.keys()
    for name, value in expected.items():
        torch.testing.assert_close(weights[name], value, atol=atol, rtol=0, msg=name)


def _pq_of_one_process(exported: Path, data: dict[str, Any]) -> float:
    """The validation PQ of an exported model, computed by a single process."""
    model = panoptic_train.load_model(exported, device="cpu")
    transforms = load_transform_args({"image_size": model.image_size})
    datasets = build_datasets(load_data_args(data), transforms)
    loader = torch.utils.data.DataLoader(datasets.val, batch_size=4, collate_fn=collate_val)
    results = evaluate_network(
        model.network,
        loader,
        datasets.classes,
        model.image_size,
        model.postprocess,
        torch.device("cpu"),
    )
    return results["All"]["pq"]


def _kill_job(pid: int) -> None:
    """SIGKILL a process and all of its descendants at once, as a scheduler ends a job: torchrun
    starts each worker in a session of its own, so killing its process group is not enough."""
    processes = [pid]
    for parent in processes:
        for children in Path(f"/proc/{parent}/task").glob("*/children"):
            with contextlib.suppress(OSError):  # a thread that just ended
                processes += [int(child) for child in children.read_text().split()]
    for process in processes:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process, signal.SIGKILL)


@pytest.fixture(scope="module")
def data(synthetic_data: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Five val images: over two ranks with micro-batches of two, rank 0 validates two batches
    and rank 1 one, so rank 1 must run a blank forward pass to keep in step."""
    root = tmp_path_factory.mktemp("val5")
    return {
        **synthetic_data,
        "val": write_dataset(root, 5, image_size=(96, 128), seed=1, split="val"),
    }


@pytest.fixture(scope="module")
def runs(data: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One process (this one); two with DDP, launched by Fabric (devices=2 from the Python API);
    two with FSDP launched by torchrun, SIGKILLed as a whole mid-run and resumed."""
    root = tmp_path_factory.mktemp("distributed")
    env = {**ENV, "TMPDIR": str(root)}  # torchrun's log folders go with the test's files
    train_panoptic_segmentation(**_arguments(data, root / "one"))
    fabric = _arguments(data, root / "ddp", devices=2)
    subprocess.run(
        [sys.executable, str(SCRIPT), json.dumps(fabric)], check=True, env=env, timeout=TIMEOUT
    )
    interrupted = _arguments(data, root / "fsdp", strategy="fsdp")
    job = subprocess.Popen(_torchrun(interrupted), env=env)
    deadline = time.monotonic() + TIMEOUT
    while _checkpoint_step(root / "fsdp") < 2 and job.poll() is None:
        assert time.monotonic() < deadline, "the torchrun job made no progress"
        time.sleep(0.05)
    _kill_job(job.pid)
    job.wait()
    (root / "killed_at").write_text(str(_checkpoint_step(root / "fsdp")))
    subprocess.run(
        _torchrun({**interrupted, "resume_interrupted": True}), check=True, env=env, timeout=TIMEOUT
    )
    return root


@pytest.mark.slow
def test_two_processes_train_the_weights_of_one(runs: Path) -> None:
    for run in ("ddp", "fsdp"):
        checkpoint = _checkpoint(runs / run)
        assert checkpoint["step"] == STEPS and checkpoint["arguments"]["world_size"] == 2
        _assert_same_weights(runs / run, runs / "one", atol=TOLERANCE)


@pytest.mark.slow
def test_resume_after_killing_the_job_continues_with_two_processes(runs: Path) -> None:
    killed_at = int((runs / "killed_at").read_text())
    assert 2 <= killed_at < STEPS  # the kill really interrupted training
    log = (runs / "fsdp" / "train.log").read_text()
    assert f"Resuming at step {killed_at}" in log
    assert log.count("global batch 4 = 2 device(s) x 2 x 1") == 2


@pytest.mark.slow
def test_validation_over_both_ranks_scores_the_pq_of_one_process(
    runs: Path, data: dict[str, Any]
) -> None:
    # Each rank validates its share of the images and the counts are summed: the PQ is the one
    # process's, up to the order of float64 additions of the IoU sums.
    expected = _checkpoint(runs / "one")["best_metric"]
    assert expected > 0
    for run in ("ddp", "fsdp"):
        pq = _checkpoint(runs / run)["best_metric"]
        assert pq == pytest.approx(expected, abs=1e-12)
        exported = runs / run / "exported_models" / "exported_last.pt"
        assert _pq_of_one_process(exported, data) == pytest.approx(pq, abs=1e-12)


@pytest.mark.slow
def test_only_rank_zero_writes_files(runs: Path) -> None:
    expected = _files(runs / "one")
    assert "logs/tensorboard/*" in expected
    assert _files(runs / "ddp") == expected  # one TensorBoard event file, one of each
    # The killed job and its resumption: one TensorBoard event file each.
    resumed = _files(runs / "fsdp")
    resumed.remove("logs/tensorboard/*")
    assert resumed == expected
    log = (runs / "ddp" / "train.log").read_text()
    assert log.count("Training finished at step") == 1


@pytest.mark.slow
def test_fsdp_checkpoint_and_exported_models_load_in_one_process(
    runs: Path, data: dict[str, Any]
) -> None:
    image = Path(data["val"]["images"]) / "000001.png"
    for name in ("exported_models/exported_last.pt", "checkpoints/last.ckpt"):
        result = panoptic_train.load_model(runs / "fsdp" / name, device="cpu").predict(image)
        assert result["masks"].shape == (96, 128, 2)
    resolved = json.loads((runs / "fsdp" / "config.json").read_text())
    assert resolved["arguments"]["strategy"] == "fsdp"


def test_a_launch_that_devices_and_num_nodes_do_not_cover_is_refused(
    synthetic_data: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As torchrun --nproc-per-node 2 sets it for rank 0; with devices=1, each process would
    # otherwise train a copy of its own into the same folder.
    for name, value in {
        "TORCHELASTIC_RUN_ID": "test",
        "WORLD_SIZE": "2",
        "LOCAL_WORLD_SIZE": "2",
        "RANK": "0",
        "LOCAL_RANK": "0",
        "GROUP_RANK": "0",
    }.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=r"started 2 processes .* Pass devices=2 \(or 'auto'\)"):
        train_panoptic_segmentation(**fast_run(synthetic_data, tmp_path / "run", devices=1))
    with pytest.raises(ConfigError, match="num_nodes=1"):
        train_panoptic_segmentation(
            **fast_run(synthetic_data, tmp_path / "run", num_nodes=2, overwrite=True)
        )


def test_fsdp_refuses_fp16_mixed_precision_by_name(
    synthetic_data: dict[str, Any], tmp_path: Path
) -> None:
    with pytest.raises(
        ConfigError, match=r"strategy='fsdp' .* not '16-mixed'.*precision='32-true'"
    ):
        train_panoptic_segmentation(
            **fast_run(synthetic_data, tmp_path / "run", strategy="fsdp", precision="16-mixed")
        )
