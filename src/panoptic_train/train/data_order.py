"""The training data order, defined so that a resumed run sees exactly the samples and the
augmentations the interrupted run would have seen.

Training consumes one endless stream of sample *positions* 0, 1, 2, ...; position p is sample
`perm_e[p % N]` of epoch e = p // N, where `perm_e` is a permutation seeded by (seed, e). Each
optimiser step takes the next `global_batch_size` positions, split into micro-batches across
ranks and accumulation steps. A sample's augmentation randomness is seeded by (seed, position)
inside `__getitem__`, so it does not depend on which DataLoader worker loads it. The whole data
state is therefore one integer, the number of positions consumed, and no DataLoader or sampler is
pickled into checkpoints.

The rest of a step's randomness follows the same rule, so that W devices with micro-batches of
M images compute what one device computes with micro-batches of W x M: a sample's loss points
come from a generator seeded by (seed, position), and the global generators are seeded by
(seed, step, micro-batch) before each micro-batch, the same on every rank (the forward pass's
RoPE rescale factor is one draw per micro-batch of the whole job). Only the masked-attention
draws during the annealing windows, one per image slot and query of a rank, are not shared
with a one-device run.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from panoptic_train.data.dataset import collate_train

# Last entropy word of each derived seed, so that the streams never coincide.
_AUGMENTATION, _LOSS_POINTS, _MICRO_BATCH = 1, 2, 3


def derived_seed(*entropy: int) -> int:
    """A well-mixed 63-bit seed from several integers (numpy's SeedSequence hashing)."""
    state = np.random.SeedSequence([int(value) for value in entropy]).generate_state(2, np.uint64)
    return int(state[0] >> np.uint64(1))


def seed_micro_batch(seed: int, step: int, micro_batch: int) -> None:
    """Seed torch's global generators (CPU and every GPU) for one micro-batch of a step."""
    torch.manual_seed(derived_seed(seed, step, micro_batch, _MICRO_BATCH))


def loss_generators(
    seed: int, positions: Sequence[int], device: torch.device
) -> list[torch.Generator]:
    """One generator per sample of a micro-batch, seeded by (seed, position), for its loss
    points."""
    return [
        torch.Generator(device).manual_seed(derived_seed(seed, position, _LOSS_POINTS))
        for position in positions
    ]


class StreamBatchSampler(Sampler[list[tuple[int, int]]]):
    """Endless micro-batches of (position, dataset index) pairs for one rank.

    Micro-batch k of the whole job covers positions [k * M * W, (k + 1) * M * W) for micro-batch
    size M and world size W; rank r takes the r-th slice of M positions. Iteration starts at
    `start_position`, which must be a multiple of M * W (a step boundary).
    """

    def __init__(
        self,
        num_samples: int,
        micro_batch_size: int,
        *,
        rank: int,
        world_size: int,
        seed: int,
        start_position: int = 0,
    ) -> None:
        if num_samples < 1:
            raise ValueError("The training set is empty.")
        if start_position % (micro_batch_size * world_size):
            raise ValueError(
                f"start_position {start_position} is not a multiple of the "
                f"{micro_batch_size * world_size} samples of one micro-batch over all ranks."
            )
        self.num_samples = num_samples
        self.micro_batch_size = micro_batch_size
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.start_position = start_position

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        stride = self.micro_batch_size * self.world_size
        position = self.start_position + self.rank * self.micro_batch_size
        epoch, permutation = -1, torch.empty(0, dtype=torch.long)
        while True:
            batch = []
            for current in range(position, position + self.micro_batch_size):
                current_epoch, offset = divmod(current, self.num_samples)
                if current_epoch != epoch:
                    epoch, permutation = current_epoch, self.permutation(current_epoch)
                batch.append((current, int(permutation[offset])))
            yield batch
            position += stride

    def permutation(self, epoch: int) -> torch.Tensor:
        """The sample order of one epoch."""
        generator = torch.Generator().manual_seed(derived_seed(self.seed, epoch))
        return torch.randperm(self.num_samples, generator=generator)


@contextmanager
def _seeded_rngs(seed: int) -> Iterator[None]:
    """Seed torch (CPU), `random` and numpy for a block, restoring their previous states after,
    so loading a sample in the main process (num_workers=0) leaves the training RNG untouched."""
    python_state = random.getstate()
    numpy_state = np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


class PositionSeededDataset(Dataset[Any]):
    """Wraps a dataset so that sample (position, index) is augmented with RNGs seeded by
    (seed, position): the same augmentation whatever worker, process or resume loads it.
    Items are (position, sample); `collate_positioned` batches them."""

    def __init__(self, dataset: Dataset[Any], seed: int) -> None:
        self.dataset = dataset
        self.seed = seed

    def __getitem__(self, key: tuple[int, int]) -> tuple[int, Any]:
        position, index = key
        with _seeded_rngs(derived_seed(self.seed, position, _AUGMENTATION)):
            return position, self.dataset[index]


def collate_positioned(items: list[tuple[int, Any]]) -> dict[str, Any]:
    """The train batch (`data.dataset.collate_train`) of `PositionSeededDataset` items, plus
    the samples' `positions`."""
    return {**collate_train([sample for _, sample in items]), "positions": [p for p, _ in items]}
