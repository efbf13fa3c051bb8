"""COCO panoptic to semantic label PNGs: the class of every pixel, for semantic segmentation
tools, or to edit labels and convert them back with `semantic-instance`.

Writes `OUT/<image stem>.png` (8-bit grayscale when every value fits in 0..255, else 16-bit) and
`OUT/classes.yaml`, a classes file in the format `semantic-instance` reads, whose `ignore` is the
void value. Values are category ids or, with `contiguous=True`, the class indices 0..C-1 that
training uses (the JSON's category order minus `ignore_classes`). Void pixels, ignored classes
and unlabelled images (`allow_unlabeled`) get `void`; crowd pixels keep their class.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from panoptic_train._io import atomic_open, atomic_write, ensure_output_dir
from panoptic_train._types import PathLike
from panoptic_train.data._parallel import map_in_processes
from panoptic_train.data.coco import ClassMapping, PanopticSample, read_panoptic_index
from panoptic_train.data.convert._writer import prepare_output, raise_problems, remove_output
from panoptic_train.data.convert.summary import SemanticSummary
from panoptic_train.data.io import load_segment_ids
from panoptic_train.errors import ConfigError, DataError

CLASSES_FILE = "classes.yaml"
_MAX_VALUE = 2**16 - 1  # 16-bit PNG


@dataclass(frozen=True)
class _Values:
    """The PNG value of each category id, the void value and the PNG's integer type."""

    of_category: Mapping[int, int]
    void: int
    dtype: type[np.unsignedinteger]


def convert_to_semantic(
    images: PathLike,
    masks: PathLike,
    annotations: PathLike,
    out: PathLike,
    *,
    void: int = 255,
    contiguous: bool = False,
    ignore_classes: tuple[int, ...] = (),
    allow_unlabeled: bool = False,
    overwrite: bool = False,
    num_workers: int = 0,
) -> SemanticSummary:
    """Write one semantic PNG per image of a COCO panoptic split, and the classes file.

    Raises DataError for a dataset that `check-data` would reject at the JSON level or whose
    masks hold unlisted segment ids, ConfigError for a `void` value that is also a class value
    or that no PNG can hold.
    """
    index = read_panoptic_index(
        images,
        masks,
        annotations,
        ignore_classes=ignore_classes,
        allow_unlabeled=allow_unlabeled,
    )
    classes = ClassMapping.from_categories(index.categories, ignore_classes)
    values = _values(classes, void, contiguous)
    out_dir = Path(out)
    problems: list[str] = []
    targets: dict[str, PanopticSample] = {}
    for sample in index.samples:
        name = f"{sample.image_path.stem}.png"
        if name in targets:
            problems.append(
                f"Images '{targets[name].image_path}' and '{sample.image_path}' have the same "
                f"stem, so both would be written as '{out_dir / name}'. Rename one of them."
            )
        targets[name] = sample
    raise_problems(index.annotations_path, problems)
    prepare_output([out_dir], [Path(images), Path(masks), Path(annotations)], overwrite, "--out")
    ensure_output_dir(out_dir)
    try:
        pixels: Counter[int] = Counter()
        write = partial(_write_png, values, out_dir)
        for outcome in map_in_processes(write, list(targets.items()), num_workers):
            if isinstance(outcome, str):
                problems.append(outcome)
            else:
                pixels.update(outcome)
        raise_problems(index.annotations_path, problems)
        names = dict(zip(classes.class_ids, classes.names, strict=True))
        entries = [
            {"id": values.of_category[category_id], "name": names[category_id], "isthing": thing}
            for category_id, thing in zip(classes.class_ids, classes.is_thing, strict=True)
        ]
        with atomic_open(out_dir / CLASSES_FILE, "w") as handle:
            yaml.safe_dump({"classes": entries, "ignore": [void]}, handle, sort_keys=False)
    except BaseException:
        remove_output(out_dir)
        raise
    return SemanticSummary(
        images=len(targets),
        out=out_dir,
        classes_file=out_dir / CLASSES_FILE,
        values={
            values.of_category[category_id]: name
            for category_id, name in zip(classes.class_ids, classes.names, strict=True)
        },
        void=void,
        pixels=dict(pixels),
    )


def _values(classes: ClassMapping, void: int, contiguous: bool) -> _Values:
    of_category = {
        category_id: index if contiguous else category_id
        for index, category_id in enumerate(classes.class_ids)
    }
    clashing = [c for c, value in of_category.items() if value == void]
    if clashing:
        raise ConfigError(
            f"The void value {void} is also the value of category {clashing[0]}. Choose another "
            "void value (--void)" + ("." if contiguous else ", or write contiguous indices.")
        )
    largest = max([void, *of_category.values()])
    if void < 0 or largest > _MAX_VALUE:
        raise ConfigError(
            f"Values must fit a 16-bit PNG (0..{_MAX_VALUE}), but void is {void} and the "
            f"largest class value {largest}. Choose another void value or write contiguous "
            "indices (contiguous=True, --contiguous)."
        )
    return _Values(of_category, void, np.uint8 if largest <= 255 else np.uint16)


def _write_png(
    values: _Values, out_dir: Path, target: tuple[str, PanopticSample]
) -> Counter[int] | str:
    """Write one semantic PNG; its pixel count per value, or the problem that stopped it."""
    name, sample = target
    if sample.mask_path is None:
        semantic = np.full((sample.height, sample.width), values.void, dtype=values.dtype)
    else:
        try:
            ids = load_segment_ids(sample.mask_path)
        except DataError as error:
            return str(error)
        segments = sorted(sample.segments, key=lambda segment: segment.id)
        table_ids = np.array([0, *(s.id for s in segments)])
        table_values = np.array(
            [values.void, *(values.of_category.get(s.category_id, values.void) for s in segments)],
            dtype=values.dtype,
        )
        position = np.searchsorted(table_ids, ids).clip(max=len(table_ids) - 1)
        unknown = np.unique(ids[table_ids[position] != ids])
        if unknown.size:
            return (
                f"Mask '{sample.mask_path}' has segment id(s) {unknown[:10].tolist()} that are not "
                f"in the 'segments_info' of image id {sample.image_id!r}. Add them to the JSON or "
                "paint those pixels 0 (void); check-data lists every such problem."
            )
        semantic = table_values[position]
    image = Image.fromarray(semantic)
    atomic_write(out_dir / name, lambda handle: image.save(handle, format="PNG"))
    found, counts = np.unique(semantic, return_counts=True)
    return Counter(dict(zip(found.tolist(), counts.tolist(), strict=True)))
