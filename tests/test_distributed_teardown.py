"""A job's process group is gone when `_distributed.process_group` ends, gloo's threads with it:
left to the interpreter's exit, their teardown aborted about 1 job in 30 (exit 134 instead of
the job's own code). Real processes, started by the package's own launcher."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from panoptic_train._distributed import run_processes

# Run by each process of the job: its exit code says what it found after the block.
_WORKER = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    from panoptic_train._distributed import Ranks, launched, process_group

    def refuse():
        raise ValueError("refused on rank 0")

    try:
        with process_group(launched()):
            # What `predict` imports once its group is up (torchvision imports torch._dynamo).
            import torch._dynamo  # noqa: F401

            if sys.argv[1] == "refuse":  # through a handle of its own, as PredictionFolder
                Ranks.current().on_rank_zero(refuse)
    except ValueError:
        pass
    threads = [path.read_text().strip() for path in Path("/proc/self/task").glob("*/comm")]
    sys.exit(3 if any("gloo" in name for name in threads) else 0)
    """
)


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="threads are read from /proc")
@pytest.mark.parametrize("outcome", ["finish", "refuse"])
def test_no_gloo_thread_outlives_the_process_group(
    outcome: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert run_processes(2, ["-c", _WORKER, outcome]) == 0
