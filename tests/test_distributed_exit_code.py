"""The exit code of a failed multi-process job (`_distributed.job_exit_code`), on torch's own
failure records: the process that failed, not the one stopped or broken by that failure."""

from __future__ import annotations

from torch.distributed.elastic.multiprocessing.errors import ProcessFailure

from panoptic_train._distributed import job_exit_code


def _failure(rank: int, exitcode: int, timestamp: int) -> ProcessFailure:
    failure = ProcessFailure(local_rank=rank, pid=1000 + rank, exitcode=exitcode, error_file="")
    failure.timestamp = timestamp  # seconds, as torch records them
    return failure


def test_an_error_of_its_own_beats_a_peer_that_aborted_first() -> None:
    # rank 0 refuses its arguments (exit 2); rank 1, waiting in a collective, aborts (SIGABRT)
    # and is recorded first
    assert job_exit_code([_failure(0, 2, timestamp=11), _failure(1, -6, timestamp=10)]) == 2


def test_the_first_error_wins_over_peers_the_launcher_stopped() -> None:
    failures = [_failure(0, -15, timestamp=12), _failure(1, 1, timestamp=10)]
    assert job_exit_code(failures) == 1
    assert job_exit_code([_failure(0, 3, timestamp=12), _failure(1, 1, timestamp=10)]) == 1


def test_a_job_killed_by_signals_reports_the_first_as_a_shell_does() -> None:
    failures = [_failure(0, -15, timestamp=12), _failure(1, -9, timestamp=10)]
    assert job_exit_code(failures) == 128 + 9
