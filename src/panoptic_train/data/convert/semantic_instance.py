"""Semantic + instance label PNGs to COCO panoptic.

Input: a folder of images; a folder of semantic PNGs (class id per pixel) and, optionally, one
of instance PNGs (instance id per pixel, 0 = none), both named `<image stem>.png`; a classes
file (YAML/JSON) with `classes` (`id`, `name`, `isthing`, optional `color`, `supercategory`) and
optional `ignore` values (void). Instance ids may be unique per image or per class: each
(thing class, instance id) is one segment. Thing pixels without instance id are one crowd
segment per class and image, or void (`things_without_instance="void"`). Without an instance
folder every thing pixel has no instance id.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from panoptic_train._types import PathLike
from panoptic_train.data.convert._labels import (
    LabelTable,
    ThingsWithoutInstance,
    images_by_stem,
    labels_to_panoptic,
    load_classes_file,
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

SEMANTIC_ROLE = "semantic PNG"
INSTANCE_ROLE = "instance PNG"


@dataclass(frozen=True)
class _Task:
    image: Path
    semantic: Path
    instances: Path | None
    image_id: int


def convert_semantic_instance(
    images: PathLike,
    semantic: PathLike,
    instances: PathLike | None,
    classes: PathLike,
    out: PathLike,
    *,
    split: str,
    things_without_instance: ThingsWithoutInstance = "crowd",
    link: LinkMode | None = None,
    overwrite: bool = False,
    num_workers: int = 0,
) -> ConversionSummary:
    """Convert one split of semantic (+ instance) PNGs into `out` (see the module docstring).

    Image ids count from 1 in file name order. Raises ConfigError for a bad classes file and
    DataError listing every missing partner file and every label file that does not fit the
    classes (unknown class id, instance id on a stuff class, size unlike its image's).
    """
    if things_without_instance not in ("crowd", "void"):
        raise ConfigError(
            f"things_without_instance must be 'crowd' or 'void', not {things_without_instance!r}."
        )
    images_dir = Path(images)
    label_dirs = {SEMANTIC_ROLE: Path(semantic)}
    if instances is not None:
        label_dirs[INSTANCE_ROLE] = Path(instances)
    for role, folder in {"image": images_dir, **label_dirs}.items():
        if not folder.is_dir():
            raise DataError(f"The {role} folder '{folder}' does not exist. Fix the path.")
    table = load_classes_file(Path(classes))
    problems: list[str] = []
    image_files = images_by_stem(images_dir, problems)
    partners = {role: _pngs_by_stem(folder) for role, folder in label_dirs.items()}

    def expected(role: str, stem: str) -> str:
        if role == "image":
            return str(images_dir / f"{stem}.<image extension>")
        return str(label_dirs[role] / f"{stem}.png")

    stems = pair_by_key(image_files, partners, expected, problems)
    raise_problems(images_dir, problems)
    tasks = [
        _Task(
            image=image_files[stem],
            semantic=partners[SEMANTIC_ROLE][stem],
            instances=partners[INSTANCE_ROLE][stem] if INSTANCE_ROLE in partners else None,
            image_id=image_id,
        )
        for image_id, stem in enumerate(stems, start=1)
    ]
    return convert_split(
        format_name="semantic-instance",
        out=out,
        split=split,
        tasks=tasks,
        convert=partial(_convert_image, table, things_without_instance),
        categories=table.categories(),
        source=images_dir,
        inputs=[images_dir, *label_dirs.values()],
        link=link,
        overwrite=overwrite,
        num_workers=num_workers,
    )


def _pngs_by_stem(folder: Path) -> dict[str, Path]:
    return {path.stem: path for path in sorted(folder.glob("*.png")) if path.is_file()}


def _convert_image(
    table: LabelTable, things_without_instance: ThingsWithoutInstance, task: _Task
) -> PanopticImage:
    classes = load_label_map(task.semantic, SEMANTIC_ROLE)
    label_maps = [(task.semantic, classes.shape)]
    if task.instances is None:
        instances = np.zeros_like(classes)
    else:
        instances = load_label_map(task.instances, INSTANCE_ROLE)
        label_maps.append((task.instances, instances.shape))
    require_same_size(task.image, read_image_size(task.image), label_maps)
    where = f"'{task.semantic}'" + (f" with '{task.instances}'" if task.instances else "")
    return PanopticImage(
        image_path=task.image,
        image_id=task.image_id,
        image_name=task.image.name,
        mask_name=f"{task.image.stem}.png",
        panoptic=labels_to_panoptic(classes, instances, table, things_without_instance, where),
    )
