"""`panoptic-train list-models`: the model names, their architecture and where weights come from."""

from __future__ import annotations

import argparse

HELP = "List the model names accepted by train/predict, with backbone, input size and weights."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--names-only", action="store_true", help="print only the names, one per line"
    )


def run(args: argparse.Namespace) -> int:
    from panoptic_train.models import hub, registry

    names = registry.list_models()
    if args.names_only:
        print("\n".join(names))
        return 0
    rows = [("model", "backbone", "input", "L2", "default weights")]
    for name in names:
        info = registry.get_model_info(name)
        cached = hub.cache_dir() / info.weights.filename
        if cached.is_file():
            where = f"cached: {cached}"
        else:
            where = info.weights.url or "no public file (pass backbone_weights=<file>)"
        height, width = info.image_size
        rows.append(
            (name, info.backbone.name, f"{height}x{width}", str(info.num_joint_blocks), where)
        )
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        cells = [row[i].ljust(widths[i]) for i in range(4)]
        print("  ".join([*cells, row[4]]))
    return 0
