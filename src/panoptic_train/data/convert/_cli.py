"""`panoptic-train convert FORMAT ...`: the converters of `data.convert`, one subcommand each."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

HELP = (
    "Convert Cityscapes, semantic + instance PNGs or COCO instances (+ stuff) into a COCO "
    "panoptic dataset with its data.yaml, or a COCO panoptic split into semantic PNGs."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    formats = parser.add_subparsers(dest="format", required=True, metavar="FORMAT")

    cityscapes = _add_format(
        formats,
        "cityscapes",
        "Cityscapes gtFine (leftImg8bit + gtFine *_instanceIds.png) with the official label "
        "table: 19 evaluated classes keep their label ids, the others become void.",
        _cityscapes,
    )
    cityscapes.add_argument(
        "--root", required=True, help="the folder holding leftImg8bit/ and gtFine/"
    )
    cityscapes.add_argument("--split", required=True, choices=["train", "val"])
    _add_output_arguments(cityscapes)

    semantic = _add_format(
        formats,
        "semantic-instance",
        "Semantic PNGs (class id per pixel) and instance PNGs (instance id per pixel, 0 = none) "
        "named like their images, with a classes file (YAML/JSON: classes with id, name, "
        "isthing; optional ignore values).",
        _semantic_instance,
    )
    semantic.add_argument("--images", required=True, help="folder of the images")
    semantic.add_argument("--semantic", required=True, help="folder of the semantic PNGs")
    semantic.add_argument(
        "--instances", help="folder of the instance PNGs (without it, no thing has an instance)"
    )
    semantic.add_argument("--classes", required=True, help="the classes file (YAML or JSON)")
    semantic.add_argument("--split", required=True, help="split name, e.g. train or val")
    semantic.add_argument(
        "--things-without-instance",
        choices=["crowd", "void"],
        default="crowd",
        help="thing pixels with instance id 0: one crowd segment per class (default) or void",
    )
    _add_output_arguments(semantic)

    coco = _add_format(
        formats,
        "coco-instances",
        "A COCO instances JSON (polygons, RLE, crowd kept as crowd), optionally with stuff "
        "from per-image PNGs or a COCO stuff JSON.",
        _coco_instances,
    )
    coco.add_argument("--images", required=True, help="folder of the images")
    coco.add_argument("--annotations", required=True, help="the COCO instances JSON")
    coco.add_argument("--split", required=True, help="split name, e.g. train or val")
    coco.add_argument(
        "--stuff-masks", help="folder of stuff PNGs (category id per pixel, <image stem>.png)"
    )
    coco.add_argument("--stuff-classes", help="classes file naming the stuff PNG values")
    coco.add_argument("--stuff-annotations", help="a COCO stuff JSON, instead of stuff PNGs")
    coco.add_argument(
        "--stuff-ignore",
        type=int,
        nargs="*",
        default=[],
        metavar="ID",
        help="stuff category ids made void (e.g. 183, COCO-stuff's 'other')",
    )
    coco.add_argument(
        "--overlap",
        choices=["smaller", "last", "void"],
        default="smaller",
        help="who gets pixels where annotations of one kind overlap: the smaller annotation "
        "(default), the later one in the JSON, or nobody (void)",
    )
    _add_output_arguments(coco)

    semantic_out = _add_format(
        formats,
        "to-semantic",
        "The reverse: one semantic PNG per image (category id per pixel) of a COCO panoptic "
        "split, and a classes.yaml that semantic-instance reads back.",
        _to_semantic,
    )
    semantic_out.add_argument("--images", required=True, help="folder of the split's images")
    semantic_out.add_argument("--masks", required=True, help="folder of the split's mask PNGs")
    semantic_out.add_argument("--annotations", required=True, help="the COCO panoptic JSON")
    semantic_out.add_argument("--out", required=True, help="folder for the semantic PNGs")
    semantic_out.add_argument("--void", type=int, default=255, help="value of void pixels")
    semantic_out.add_argument(
        "--contiguous",
        action="store_true",
        help="write class indices 0..C-1 (as training numbers them) instead of category ids",
    )
    semantic_out.add_argument(
        "--ignore-classes", type=int, nargs="*", default=[], metavar="ID", help="made void"
    )
    semantic_out.add_argument(
        "--allow-unlabeled",
        action="store_true",
        help="images without annotation become all-void PNGs",
    )
    _add_common_arguments(semantic_out)


def run(args: argparse.Namespace) -> int:
    print(args.convert(args))
    return 0


def _add_format(
    formats: Any, name: str, description: str, convert: Callable[[argparse.Namespace], object]
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = formats.add_parser(
        name, help=description, description=description
    )
    parser.set_defaults(convert=convert)
    return parser


def _add_output_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", required=True, help="dataset folder: images/, annotations/, data.yaml"
    )
    parser.add_argument(
        "--link",
        choices=["hard", "symlink"],
        help="hard-link or symlink the images instead of copying them",
    )
    _add_common_arguments(parser)


def _add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--overwrite", action="store_true", help="replace what an earlier conversion wrote"
    )
    parser.add_argument(
        "--num-workers",
        type=int,
        default=0,
        help="processes converting images in parallel (default 0: this process)",
    )


def _cityscapes(args: argparse.Namespace) -> object:
    from panoptic_train.data.convert.cityscapes import convert_cityscapes

    return convert_cityscapes(args.root, args.split, args.out, **_output_options(args))


def _semantic_instance(args: argparse.Namespace) -> object:
    from panoptic_train.data.convert.semantic_instance import convert_semantic_instance

    return convert_semantic_instance(
        args.images,
        args.semantic,
        args.instances,
        args.classes,
        args.out,
        split=args.split,
        things_without_instance=args.things_without_instance,
        **_output_options(args),
    )


def _coco_instances(args: argparse.Namespace) -> object:
    from panoptic_train.data.convert.coco_instances import convert_coco_instances

    return convert_coco_instances(
        args.images,
        args.annotations,
        args.out,
        split=args.split,
        stuff_masks=args.stuff_masks,
        stuff_classes=args.stuff_classes,
        stuff_annotations=args.stuff_annotations,
        stuff_ignore=args.stuff_ignore,
        overlap=args.overlap,
        **_output_options(args),
    )


def _to_semantic(args: argparse.Namespace) -> object:
    from panoptic_train.data.convert.to_semantic import convert_to_semantic

    return convert_to_semantic(
        args.images,
        args.masks,
        args.annotations,
        args.out,
        void=args.void,
        contiguous=args.contiguous,
        ignore_classes=tuple(args.ignore_classes),
        allow_unlabeled=args.allow_unlabeled,
        overwrite=args.overwrite,
        num_workers=args.num_workers,
    )


def _output_options(args: argparse.Namespace) -> dict[str, Any]:
    return {"link": args.link, "overwrite": args.overwrite, "num_workers": args.num_workers}
