"""Run `train_panoptic_segmentation(**json.loads(argv[1]))` in its own process (resume tests)."""

from __future__ import annotations

import json
import sys

from panoptic_train import train_panoptic_segmentation

if __name__ == "__main__":
    train_panoptic_segmentation(**json.loads(sys.argv[1]))
