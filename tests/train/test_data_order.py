"""The data order is a pure function of (seed, position): resuming at any step boundary replays
exactly the remaining batches and augmentations."""

from __future__ import annotations

import itertools
import random

import numpy as np
import torch
from torch.utils.data import Dataset

from panoptic_train.train.data_order import PositionSeededDataset, StreamBatchSampler


def _take(sampler: StreamBatchSampler, count: int) -> list[list[tuple[int, int]]]:
    return list(itertools.islice(iter(sampler), count))


def test_each_epoch_is_a_permutation_and_positions_are_consecutive() -> None:
    sampler = StreamBatchSampler(10, 2, rank=0, world_size=1, seed=5)
    batches = _take(sampler, 10)  # two epochs
    positions = [p for batch in batches for p, _ in batch]
    indices = [i for batch in batches for _, i in batch]
    assert positions == list(range(20))
    assert sorted(indices[:10]) == list(range(10)) and sorted(indices[10:]) == list(range(10))
    assert indices[:10] != indices[10:]  # a new order each epoch


def test_resuming_at_a_step_replays_the_rest() -> None:
    full = _take(StreamBatchSampler(7, 3, rank=0, world_size=1, seed=1), 12)
    resumed = _take(StreamBatchSampler(7, 3, rank=0, world_size=1, seed=1, start_position=15), 7)
    assert resumed == full[5:]


def test_ranks_split_each_global_batch() -> None:
    ranks = [
        _take(StreamBatchSampler(9, 2, rank=rank, world_size=3, seed=0), 4) for rank in range(3)
    ]
    single = _take(StreamBatchSampler(9, 6, rank=0, world_size=1, seed=0), 4)
    for step in range(4):
        assert [pair for rank in ranks for pair in rank[step]] == single[step]


class _RandomDataset(Dataset):
    """Returns draws from every RNG an augmentation might use."""

    def __getitem__(self, index: int) -> tuple[float, float, float]:
        return float(torch.rand(())), random.random(), float(np.random.rand())


def test_augmentation_depends_on_position_only_and_leaves_global_rngs_alone() -> None:
    dataset = PositionSeededDataset(_RandomDataset(), seed=7)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    first = dataset[(42, 3)]
    assert torch.equal(torch.get_rng_state(), before)
    torch.manual_seed(999)
    random.seed(999)
    assert dataset[(42, 3)] == first
    assert dataset[(43, 3)] != first
    assert PositionSeededDataset(_RandomDataset(), seed=8)[(42, 3)] != first
