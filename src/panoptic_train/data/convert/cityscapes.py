"""Cityscapes (fine annotations) to COCO panoptic, with the official label table.

Input, as extracted from `leftImg8bit_trainvaltest.zip` and `gtFine_trainvaltest.zip`:
`ROOT/leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png` and, beside each,
`ROOT/gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_instanceIds.png` (16-bit). An
instanceIds pixel is `labelId * 1000 + k` for the k-th instance (k from 0) of a class with
instances, and the bare label id otherwise; a thing class's bare label id marks a group (e.g.
"cargroup"), which becomes a crowd segment. The 19 evaluated classes keep their label ids as
category ids; the 15 classes Cityscapes does not evaluate become void, each counted as a reason.
The `_labelIds.png` files hold nothing instanceIds does not, so they are not read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from panoptic_train._types import PathLike
from panoptic_train.data.convert._labels import (
    LabelClass,
    LabelTable,
    labels_to_panoptic,
    load_label_map,
    pair_by_key,
    require_same_size,
)
from panoptic_train.data.convert._writer import (
    LinkMode,
    PanopticImage,
    convert_split,
    raise_problems,
)
from panoptic_train.data.convert.summary import ConversionSummary
from panoptic_train.data.io import read_image_size
from panoptic_train.errors import ConfigError, DataError

IMAGE_SUFFIX = "_leftImg8bit.png"
INSTANCE_IDS_SUFFIX = "_gtFine_instanceIds.png"
MASK_SUFFIX = "_gtFine_panoptic.png"  # the name cityscapesScripts' own panoptic export uses
# Values of labelId * 1000 + k: the label id is value // 1000 (Cityscapes' own convention).
INSTANCE_ID_BASE = 1000

# The evaluated classes of the official label table (cityscapesScripts, helpers/labels.py):
# label id, name, category (the COCO supercategory), has instances, colour.
EVALUATED_CLASSES: tuple[LabelClass, ...] = (
    LabelClass(7, "road", False, (128, 64, 128), "flat"),
    LabelClass(8, "sidewalk", False, (244, 35, 232), "flat"),
    LabelClass(11, "building", False, (70, 70, 70), "construction"),
    LabelClass(12, "wall", False, (102, 102, 156), "construction"),
    LabelClass(13, "fence", False, (190, 153, 153), "construction"),
    LabelClass(17, "pole", False, (153, 153, 153), "object"),
    LabelClass(19, "traffic light", False, (250, 170, 30), "object"),
    LabelClass(20, "traffic sign", False, (220, 220, 0), "object"),
    LabelClass(21, "vegetation", False, (107, 142, 35), "nature"),
    LabelClass(22, "terrain", False, (152, 251, 152), "nature"),
    LabelClass(23, "sky", False, (70, 130, 180), "sky"),
    LabelClass(24, "person", True, (220, 20, 60), "human"),
    LabelClass(25, "rider", True, (255, 0, 0), "human"),
    LabelClass(26, "car", True, (0, 0, 142), "vehicle"),
    LabelClass(27, "truck", True, (0, 0, 70), "vehicle"),
    LabelClass(28, "bus", True, (0, 60, 100), "vehicle"),
    LabelClass(31, "train", True, (0, 80, 100), "vehicle"),
    LabelClass(32, "motorcycle", True, (0, 0, 230), "vehicle"),
    LabelClass(33, "bicycle", True, (119, 11, 32), "vehicle"),
)
# The label ids Cityscapes ignores in evaluation ('license plate', id -1, is never in a PNG).
NOT_EVALUATED: dict[int, str] = {
    0: "unlabeled",
    1: "ego vehicle",
    2: "rectification border",
    3: "out of roi",
    4: "static",
    5: "dynamic",
    6: "ground",
    9: "parking",
    10: "rail track",
    14: "guard rail",
    15: "bridge",
    16: "tunnel",
    18: "polegroup",
    29: "caravan",
    30: "trailer",
}
LABEL_TABLE = LabelTable(
    classes=EVALUATED_CLASSES,
    void={
        label_id: f"'{name}' (label id {label_id}, not evaluated)"
        for label_id, name in NOT_EVALUATED.items()
    },
    source="the Cityscapes label table (label ids 0..33)",
    fix=(
        "Official gtFine instanceIds PNGs hold label ids 0..33, with instances of thing classes "
        "as labelId * 1000 + k; replace the file with the one from gtFine_trainvaltest.zip."
    ),
)


@dataclass(frozen=True)
class _Task:
    image: Path
    instance_ids: Path
    image_id: int


def convert_cityscapes(
    root: PathLike,
    split: Literal["train", "val"],
    out: PathLike,
    *,
    link: LinkMode | None = None,
    overwrite: bool = False,
    num_workers: int = 0,
) -> ConversionSummary:
    """Convert one Cityscapes split (`train` or `val`; `test` has no public labels) into `out`.

    Images are copied, or hard-linked / symlinked with `link`; image ids count from 1 in file
    name order. Raises DataError listing every missing partner file and every bad label file.
    """
    if split not in ("train", "val"):
        raise ConfigError(
            f"Cityscapes split must be 'train' or 'val', not {split!r} (the test split's "
            "labels are not public)."
        )
    root_path = Path(root)
    images_dir = root_path / "leftImg8bit" / split
    labels_dir = root_path / "gtFine" / split
    for folder, archive in ((images_dir, "leftImg8bit"), (labels_dir, "gtFine")):
        if not folder.is_dir():
            raise DataError(
                f"'{folder}' does not exist. --root must be the Cityscapes folder that holds "
                f"{archive}/ as extracted from {archive}_trainvaltest.zip."
            )
    images = _by_frame(images_dir, IMAGE_SUFFIX)
    instance_ids = _by_frame(labels_dir, INSTANCE_IDS_SUFFIX)

    def expected(role: str, key: str) -> str:
        if role == "image":
            return str(images_dir / f"{key}{IMAGE_SUFFIX}")
        return str(labels_dir / f"{key}{INSTANCE_IDS_SUFFIX}")

    problems: list[str] = []
    keys = pair_by_key(images, {"instanceIds PNG": instance_ids}, expected, problems)
    raise_problems(root_path, problems)
    tasks = [
        _Task(images[key], instance_ids[key], image_id)
        for image_id, key in enumerate(keys, start=1)
    ]
    return convert_split(
        format_name="cityscapes",
        out=out,
        split=split,
        tasks=tasks,
        convert=_convert_image,
        categories=LABEL_TABLE.categories(),
        source=root_path,
        inputs=[images_dir, labels_dir],
        link=link,
        overwrite=overwrite,
        num_workers=num_workers,
    )


def _by_frame(folder: Path, suffix: str) -> dict[str, Path]:
    """Files `<city>/<frame><suffix>` by their key `<city>/<frame>`, in name order."""
    return {
        f"{path.parent.name}/{path.name[: -len(suffix)]}": path
        for path in sorted(folder.glob(f"*/*{suffix}"))
    }


def _convert_image(task: _Task) -> PanopticImage:
    values = load_label_map(task.instance_ids, "Cityscapes instanceIds PNG")
    require_same_size(task.image, read_image_size(task.image), [(task.instance_ids, values.shape)])
    has_instance = values >= INSTANCE_ID_BASE
    # The instance id is the pixel value itself: k counts from 0, and 0 means "no instance".
    panoptic = labels_to_panoptic(
        classes=np.where(has_instance, values // INSTANCE_ID_BASE, values),
        instances=np.where(has_instance, values, 0),
        table=LABEL_TABLE,
        things_without_instance="crowd",
        where=f"'{task.instance_ids}'",
    )
    frame = task.image.name[: -len(IMAGE_SUFFIX)]
    return PanopticImage(
        image_path=task.image,
        image_id=task.image_id,
        image_name=task.image.name,
        mask_name=f"{frame}{MASK_SUFFIX}",
        panoptic=panoptic,
    )
