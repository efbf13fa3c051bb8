"""Jobs of several processes, as launched by torchrun (`torch.distributed.run`, also behind
`panoptic-train predict --devices N`) or SLURM's `srun`: no launcher of our own.

`launched` reads the launcher's environment as Fabric does for training (srun's through
Lightning's SLURM environment). `Ranks` is what prediction needs of the job once its
process group is up: a gloo group for small Python objects (whatever backend the job's tensors
use), a barrier, and work split between the ranks.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import torch.distributed as dist

from panoptic_train.errors import ConfigError

T = TypeVar("T")


@dataclass(frozen=True)
class Launch:
    """A job of several processes and this process's place in it."""

    world_size: int
    processes_per_node: int
    rank: int
    local_rank: int

    @property
    def num_nodes(self) -> int:
        return self.world_size // self.processes_per_node


def launched() -> Launch | None:
    """This process's place in a job of several processes that torchrun or srun started; None
    for a single process (started directly, by Fabric's own launcher, or as a one-task SLURM
    job). torchrun is checked first, as Fabric does: it may run inside a SLURM allocation."""
    if dist.is_available() and dist.is_torchelastic_launched():
        variables = ("WORLD_SIZE", "LOCAL_WORLD_SIZE", "RANK", "LOCAL_RANK")
        world_size, per_node, rank, local_rank = (int(os.environ[name]) for name in variables)
    elif "SLURM_NTASKS" in os.environ:
        # Lightning's reading of srun's variables (imported only here: it takes seconds).
        from lightning_fabric.plugins.environments import SLURMEnvironment

        if not SLURMEnvironment.detect():
            return None
        try:
            environment = SLURMEnvironment()
        except RuntimeError as error:  # srun's variables contradict each other
            raise ConfigError(str(error)) from error
        world_size, rank = environment.world_size(), environment.global_rank()
        per_node = int(os.environ.get("SLURM_NTASKS_PER_NODE", "1"))
        local_rank = environment.local_rank()
        # For torch.distributed's env:// rendezvous: the job's first node, a port from the job id.
        os.environ.setdefault("MASTER_ADDR", environment.main_address)
        os.environ.setdefault("MASTER_PORT", str(environment.main_port))
    else:
        return None
    if world_size < 2:
        return None
    return Launch(world_size, per_node, rank, local_rank)


def run_processes(count: int, arguments: Sequence[str]) -> int:
    """Run `python ARGUMENTS...` as a job of `count` processes on this machine through
    torch.distributed's elastic launcher (torchrun's engine, on a free local port) and return its
    exit code: 0, or the failure of the lowest failed rank. The processes split the CPU threads
    unless OMP_NUM_THREADS says otherwise; each prints its own errors."""
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (cpus or 1) // count)))
    # The agent's own log lines would repeat what the processes already printed.
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    # Its folder for the processes' error files goes with the job (by default a new
    # torchelastic_* folder in the temp directory is left behind by every run).
    with tempfile.TemporaryDirectory(prefix="panoptic_train_job_") as logs:
        config = LaunchConfig(
            min_nodes=1,
            max_nodes=1,
            nproc_per_node=count,
            logs_specs=DefaultLogsSpecs(log_dir=logs),
            run_id=uuid.uuid4().hex,
            rdzv_backend="c10d",
            rdzv_endpoint="localhost:0",
            max_restarts=0,
        )
        try:
            elastic_launch(config, sys.executable)(*arguments)
        except ChildFailedError as error:
            return job_exit_code(error.failures.values())
        except SignalException as error:
            raise KeyboardInterrupt from error
    return 0


class _Failure(Protocol):
    exitcode: int
    timestamp: int


def job_exit_code(failures: Iterable[_Failure]) -> int:
    """The exit code of a failed job: the first process that exited with an error code of its
    own (the CLI's 2 for bad arguments, say), else the first that died of a signal. Once one
    fails, the launcher stops the others (SIGTERM), and a signal death recorded a moment
    before a peer's error exit says less of what went wrong than that exit. A signal's exit
    code is negative; shells report 128 + signal."""
    failure = min(failures, key=lambda f: (f.exitcode <= 0, f.timestamp))
    return failure.exitcode if failure.exitcode > 0 else 128 - failure.exitcode


@contextmanager
def process_group(launch: Launch) -> Iterator[Ranks]:
    """Join the job's process group (gloo, env:// rendezvous) for the block, and be rid of it
    when the block ends. Left to the interpreter's exit, the teardown of gloo's threads aborted
    about 1 refusing job in 30 ("terminate called without an active exception": exit 134
    instead of the job's 2)."""
    # `torch.distributed.nn.functional` binds `group.WORLD` as default arguments when it is first
    # imported, as torch._dynamo does (torchvision imports it): imported while the group is up,
    # it would keep the group for good.
    import torch.distributed.nn.functional  # noqa: F401

    dist.init_process_group("gloo", rank=launch.rank, world_size=launch.world_size)
    ranks = Ranks.current()
    assert ranks is not None
    try:
        yield ranks
        ranks.barrier()  # tear down together, none while another still exchanges data
    except BaseException:
        if ranks.failed_together:  # every rank raises it at the same point: leave together too
            ranks.barrier()
        raise
    finally:
        dist.destroy_process_group()
        # An error's traceback may keep `ranks` alive: dropped here, the group goes (and gloo's
        # threads with it) now, not when the error has been reported or at interpreter exit.
        ranks.release()


class Ranks:
    """The processes of an initialised torch.distributed job, for coordinating work on files."""

    def __init__(self, group: Any) -> None:
        self._group = group
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.failed_together = False  # an `on_rank_zero` error is being raised on every rank

    @classmethod
    def current(cls) -> Ranks | None:
        """The job this process belongs to; None unless torch.distributed is initialised with
        more than one process. A job whose backend is not gloo (NCCL) gets a gloo group of the
        same processes: Python objects travel through the CPU."""
        if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() < 2:
            return None
        if dist.get_backend() == "gloo":
            return cls(dist.group.WORLD)
        return cls(dist.new_group(backend="gloo"))

    def barrier(self) -> None:
        dist.barrier(group=self._group)

    def release(self) -> None:
        """Drop the group once torch.distributed is torn down (see `process_group`)."""
        self._group = None

    def on_rank_zero(self, action: Callable[[], T]) -> T:
        """Run `action` on rank 0 alone and return its result on every rank; its exception is
        raised on every rank, so that no rank waits for one that stopped."""
        outcome: list[Any] = [None]
        if self.rank == 0:
            try:
                outcome[0] = (True, action())
            except Exception as error:
                outcome[0] = (False, error)
        dist.broadcast_object_list(outcome, src=0, group=self._group)
        succeeded, value = outcome.pop()
        if not succeeded:
            self.failed_together = True
            try:
                raise value
            finally:
                del value  # the error's traceback holds this frame: no cycle through it
        return value

    def gather(self, value: T) -> list[T]:
        """Every rank's `value`, in rank order, on every rank."""
        values: list[Any] = [None] * self.world_size
        dist.all_gather_object(values, value, group=self._group)
        return values

    def share(self, items: Sequence[T], chunk: int) -> list[T]:
        """This rank's part of `items` (see `share`)."""
        return share(items, chunk, self.rank, self.world_size)


def share(items: Sequence[T], chunk: int, rank: int, world_size: int) -> list[T]:
    """Rank `rank`'s part of `items`: runs of `chunk` consecutive items dealt round-robin, so
    that every rank batches exactly as a single process batching by `chunk` would."""
    return [
        item
        for start in range(rank * chunk, len(items), world_size * chunk)
        for item in items[start : start + chunk]
    ]
