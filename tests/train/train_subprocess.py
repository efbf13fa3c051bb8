"""Run `train_panoptic_segmentation(**json.loads(argv[1]))` in its own process (resume and
multi-process tests); it fails if a thread of the run's process group outlives the run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from panoptic_train import train_panoptic_segmentation

if __name__ == "__main__":
    train_panoptic_segmentation(**json.loads(sys.argv[1]))
    threads = [path.read_text().strip() for path in Path("/proc/self/task").glob("*/comm")]
    if any("gloo" in name for name in threads):
        sys.exit(f"the run's gloo threads outlived it: {threads}")
