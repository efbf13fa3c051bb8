"""Memory of `evaluate_panoptic` against the number of image pairs: it should stay flat.

Writes N tiny synthetic ground-truth / prediction pairs (64x64 PNGs, a few rectangles each; the
predictions shift one segment and drop another), then scores the first n of them for every n in
--images, each in a fresh process, and reports the process's peak resident memory, how much it
grew while scoring (peak minus the resident memory just before), and the time. Both backends.

    python benchmarks/evaluation_memory.py [--images 500 1000 2000 5000] [--data DIR]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

SIZE = 64
CATEGORIES = [
    {"id": index + 1, "name": f"c{index}", "isthing": int(index < 4)} for index in range(8)
]


def _resident_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**20


def _png(ids: np.ndarray, path: Path) -> None:
    rgb = np.stack([ids & 255, (ids >> 8) & 255, (ids >> 16) & 255], axis=-1).astype(np.uint8)
    Image.fromarray(rgb).save(path)


def _segments(ids: np.ndarray, category_of: dict[int, int]) -> list[dict[str, Any]]:
    present, areas = np.unique(ids, return_counts=True)
    return [
        {"id": int(i), "category_id": category_of[int(i)], "iscrowd": 0, "area": int(a)}
        for i, a in zip(present.tolist(), areas.tolist(), strict=True)
        if i != 0
    ]


def write_pairs(root: Path, count: int) -> None:
    """`count` pairs as root/{gt,pred}/NNNNNN.png, their JSON entries in root/records.json."""
    rng = np.random.default_rng(0)
    for side in ("gt", "pred"):
        (root / side).mkdir(parents=True, exist_ok=True)
    records: dict[str, list[tuple[dict[str, Any], dict[str, Any]]]] = {"gt": [], "pred": []}
    for index in range(count):
        gt = np.zeros((SIZE, SIZE), dtype=np.int64)
        category_of = {}
        for segment in range(1, int(rng.integers(3, 7)) + 1):
            y, x = rng.integers(0, SIZE - 8, size=2)
            h, w = rng.integers(8, SIZE // 2, size=2)
            gt[y : y + h, x : x + w] = segment * 97
            category_of[segment * 97] = int(rng.integers(1, len(CATEGORIES) + 1))
        pred = np.roll(gt, 2, axis=1)
        pred[pred == pred.max()] = 0
        name = f"{index:06d}.png"
        for side, ids in (("gt", gt), ("pred", pred)):
            _png(ids, root / side / name)
            image = {"id": index, "file_name": name, "height": SIZE, "width": SIZE}
            segments = _segments(ids, category_of)
            annotation = {"image_id": index, "file_name": name, "segments_info": segments}
            records[side].append((image, annotation))
    (root / "records.json").write_text(json.dumps(records))


def _write_prefix_jsons(root: Path, count: int) -> None:
    """root/{gt,pred}_COUNT.json: COCO panoptic JSONs of the first `count` pairs."""
    records = json.loads((root / "records.json").read_text())
    for side in ("gt", "pred"):
        chosen = records[side][:count]
        content = {
            "images": [image for image, _ in chosen],
            "annotations": [annotation for _, annotation in chosen],
            "categories": CATEGORIES,
        }
        (root / f"{side}_{count}.json").write_text(json.dumps(content))


def _child(root: Path, count: int, backend: str) -> None:
    from panoptic_train import evaluate_panoptic

    before = _resident_mib()
    started = time.perf_counter()
    metrics = evaluate_panoptic(
        root / f"gt_{count}.json",
        root / "gt",
        root / f"pred_{count}.json",
        root / "pred",
        backend=backend,
    )
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps({"before": before, "peak": peak, "seconds": seconds, "pq": metrics["All"]["pq"]})
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, nargs="+", default=[500, 1000, 2000, 5000])
    parser.add_argument("--data", type=Path, help="folder to write the pairs to (default: temp)")
    parser.add_argument(
        "--child", nargs=3, metavar=("ROOT", "COUNT", "BACKEND"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.child:
        _child(Path(args.child[0]), int(args.child[1]), args.child[2])
        return
    with tempfile.TemporaryDirectory() as temporary:
        root = args.data or Path(temporary)
        started = time.perf_counter()
        write_pairs(root, max(args.images))
        seconds = time.perf_counter() - started
        print(f"wrote {max(args.images)} pairs of {SIZE}x{SIZE} in {seconds:.0f} s")
        print("| backend | pairs | peak RSS (MiB) | growth while scoring (MiB) | time (s) | PQ |")
        print("|---|---|---|---|---|---|")
        for backend in ("builtin", "hotcoco"):
            for count in args.images:
                _write_prefix_jsons(root, count)
                output = subprocess.run(
                    [sys.executable, __file__, "--child", str(root), str(count), backend],
                    check=True,
                    capture_output=True,
                    text=True,
                ).stdout
                result = json.loads(output.splitlines()[-1])
                print(
                    f"| {backend} | {count} | {result['peak']:.0f} | "
                    f"{result['peak'] - result['before']:.0f} | {result['seconds']:.2f} | "
                    f"{100 * result['pq']:.1f} |"
                )


if __name__ == "__main__":
    main()
