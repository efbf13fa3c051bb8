"""Run `panoptic-train serve` in a child process and wait until it answers: for integration
tests, benchmarks and scripts that need a real server on this machine.

The server picks a free port itself (`--port 0`) and prints its address, so two servers never
race for a port. Its output goes to a log file, never to a pipe nobody reads (a full pipe would
stall the server).
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from panoptic_train._types import PathLike

_ADDRESS = re.compile(r"^Serving .* at (http://\S+/) ", re.MULTILINE)
# The server is on this machine: never send its traffic through a proxy from the environment.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(frozen=True)
class ServerProcess:
    """A running server: its base URL (ending in "/"), process and log file."""

    url: str
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid


@contextmanager
def serve_in_subprocess(
    model: PathLike,
    options: Sequence[str] = (),
    *,
    log: PathLike,
    startup_timeout: float = 120.0,
) -> Iterator[ServerProcess]:
    """`panoptic-train serve MODEL --port 0 OPTIONS...` on 127.0.0.1 until the block ends.

    Yields once GET /health answers; raises RuntimeError with the log if the server exits or
    does not answer within `startup_timeout` seconds. The server is stopped (SIGTERM, then
    SIGKILL) on leaving the block, whatever happens in it.
    """
    log = Path(log)
    command = [sys.executable, "-m", "panoptic_train", "serve", str(model), "--host", "127.0.0.1"]
    with log.open("wb") as output:
        process = subprocess.Popen(
            [*command, "--port", "0", *options], stdout=output, stderr=subprocess.STDOUT
        )
    try:
        url = _wait_until_ready(process, log, startup_timeout)
        yield ServerProcess(url, process, log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_until_ready(process: subprocess.Popen[bytes], log: Path, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"The server exited with status {process.returncode}:\n{log.read_text()}"
            )
        found = _ADDRESS.search(log.read_text(errors="replace"))
        if found and _answers(found.group(1) + "health"):
            return found.group(1)
        time.sleep(0.1)
    raise RuntimeError(f"The server did not answer within {timeout:g} s:\n{log.read_text()}")


def _answers(url: str) -> bool:
    try:
        with _DIRECT.open(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False
