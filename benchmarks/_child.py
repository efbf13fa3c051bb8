"""One measurement in a fresh process, run by either system's Python.

The side-by-side benchmarks start each measurement as `<python> <script> --child <spec JSON>`;
the child prints its result as one `RESULT <json>` line. Standard library only: LightlyTrain's
virtual environment imports this module too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

PREFIX = "RESULT "


def report(result: dict[str, Any]) -> None:
    """The child's last word: its result for the parent."""
    print(PREFIX + json.dumps(result), flush=True)


def run_child(
    python: str, script: str | Path, spec: dict[str, Any], threads: int, label: str
) -> dict[str, Any]:
    """Run `script --child spec` with `python` on `threads` OMP threads; exit naming `label`."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "LIGHTLY_TRAIN_EVENTS_DISABLED": "1"}
    completed = subprocess.run(
        [python, str(script), "--child", json.dumps(spec)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    lines = [line for line in completed.stdout.splitlines() if line.startswith(PREFIX)]
    if completed.returncode != 0 or not lines:
        sys.exit(f"{label} failed:\n{completed.stdout[-3000:]}{completed.stderr[-6000:]}")
    return json.loads(lines[-1][len(PREFIX) :])
