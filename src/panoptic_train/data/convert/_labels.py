"""The input side shared by the label-map formats: single-channel label PNGs, the table of
classes their values name, and the rule that turns (class, instance) per pixel into segments.

Cityscapes' `instanceIds` and the semantic + instance folders differ only in how a pixel's class
and instance id are stored; both then go through `labels_to_panoptic`, so stuff, thing, crowd and
void follow one rule: a stuff class is one segment per image, each (thing class, instance id) one
segment, a thing class without instance id (0) one crowd segment per image (or void), and the
table's void values void.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image, UnidentifiedImageError
from pydantic import Field

from panoptic_train._validate import StrictConfig, parse_config, read_config_file
from panoptic_train.data.convert._writer import PanopticMap, SegmentLabel
from panoptic_train.data.io import IMAGE_EXTENSIONS
from panoptic_train.errors import ConfigError, DataError

ThingsWithoutInstance = Literal["crowd", "void"]

# PIL modes that hold one integer per pixel: bilevel, 8-bit, palette (the index is the value),
# 16-bit and 32-bit grayscale.
_LABEL_MODES = frozenset({"1", "L", "P", "I;16", "I;16L", "I;16B", "I;16N", "I"})
# Values listed in a message before "...".
_MAX_VALUES_SHOWN = 10


@dataclass(frozen=True)
class LabelClass:
    id: int
    name: str
    isthing: bool
    color: tuple[int, int, int] | None = None
    supercategory: str | None = None

    def category(self) -> dict[str, Any]:
        """The COCO `categories` entry."""
        entry: dict[str, Any] = {"id": self.id, "name": self.name, "isthing": int(self.isthing)}
        if self.supercategory is not None:
            entry["supercategory"] = self.supercategory
        if self.color is not None:
            entry["color"] = list(self.color)
        return entry


@dataclass(frozen=True)
class LabelTable:
    """The classes that label values name, and the values that mean void (value -> why).

    `source` names the table in messages and `fix` says how to repair a label file that does
    not fit it.
    """

    classes: tuple[LabelClass, ...]
    void: Mapping[int, str]
    source: str
    fix: str

    def categories(self) -> list[dict[str, Any]]:
        return [label_class.category() for label_class in self.classes]


class _ClassEntry(StrictConfig):
    id: int = Field(ge=0)
    name: str = Field(min_length=1)
    isthing: bool
    color: tuple[int, int, int] | None = None
    supercategory: str | None = None


class _ClassesFile(StrictConfig):
    classes: tuple[_ClassEntry, ...]
    ignore: tuple[int, ...] = ()


def load_classes_file(path: Path) -> LabelTable:
    """Read a classes file (YAML or JSON): `classes` (list of `id`, `name`, `isthing`, optional
    `color`, `supercategory`) and optional `ignore` (a value or a list of values made void).
    A bare list is taken as `classes`."""
    raw = read_config_file(
        path,
        "classes file",
        "Write a YAML or JSON file with 'classes' (a list of {id, name, isthing}) and, "
        "optionally, 'ignore'.",
    )
    if isinstance(raw, list):
        raw = {"classes": raw}
    if isinstance(raw, dict) and isinstance(raw.get("ignore"), int):
        raw = {**raw, "ignore": [raw["ignore"]]}
    parsed = parse_config(_ClassesFile, raw, "", f"classes file '{path}'")
    if not parsed.classes:
        raise ConfigError(f"The classes file '{path}' lists no classes. Add them under 'classes'.")
    counts = Counter(entry.id for entry in parsed.classes)
    duplicates = sorted(value for value, count in counts.items() if count > 1)
    both = sorted(set(counts) & set(parsed.ignore))
    if duplicates or both:
        problems = [f"class id(s) {duplicates} appear more than once"] if duplicates else []
        problems += [f"id(s) {both} are both a class and an 'ignore' value"] if both else []
        raise ConfigError(f"Classes file '{path}': {'; '.join(problems)}. Give each id one role.")
    return LabelTable(
        classes=tuple(
            LabelClass(e.id, e.name, e.isthing, e.color, e.supercategory) for e in parsed.classes
        ),
        void={value: f"ignore value {value}" for value in parsed.ignore},
        source=f"the classes file '{path}'",
        fix=(
            f"Add missing class ids to 'classes' in '{path}' or list them under 'ignore' (void); "
            "a class whose pixels carry instance ids needs isthing: true."
        ),
    )


def load_label_map(path: Path, role: str) -> np.ndarray:
    """Decode a single-channel label PNG (one non-negative integer per pixel) as (H, W) int64.

    `role` says what the file is ("semantic PNG", ...) in messages.
    """
    try:
        with Image.open(path) as label_image:
            mode = label_image.mode
            values = np.asarray(label_image).astype(np.int64) if mode in _LABEL_MODES else None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise DataError(f"Cannot read {role} '{path}': {error}. Replace the file.") from error
    if values is None:
        raise DataError(
            f"{role.capitalize()} '{path}' has PIL mode {mode!r}, but label maps hold one integer "
            "per pixel: save it as an 8-bit, 16-bit or palette PNG (colour-coded labels must be "
            "mapped to ids first)."
        )
    if values.size and values.min() < 0:
        raise DataError(f"{role.capitalize()} '{path}' has negative values; ids must be >= 0.")
    return values


def require_same_size(
    image: Path, size: Sequence[int], label_maps: Iterable[tuple[Path, Sequence[int]]]
) -> None:
    """DataError naming the first label map (path, shape) whose shape is not the image's size."""
    for path, (height, width) in label_maps:
        if (height, width) != tuple(size):
            raise DataError(
                f"'{path}' is {height}x{width} (HxW) but its image '{image}' is "
                f"{size[0]}x{size[1]}. Label maps must have their image's size (as displayed, "
                "after EXIF orientation): regenerate the label file or pair it with its image."
            )


def labels_to_panoptic(
    classes: np.ndarray,
    instances: np.ndarray,
    table: LabelTable,
    things_without_instance: ThingsWithoutInstance,
    where: str,
) -> PanopticMap:
    """Segments of a (class, instance id) pair per pixel, instance id 0 meaning none.

    Segment ids count from 1 in (class, instance) order. Raises DataError, `where` naming the
    label file(s), for class values the table does not know and for instance ids on stuff.
    """
    by_id = {label_class.id: label_class for label_class in table.classes}
    keys, inverse, counts = np.unique(
        (classes << 32) | instances, return_inverse=True, return_counts=True
    )
    segment_of_key = np.zeros(len(keys), dtype=np.int32)
    reason_of_key = np.zeros(len(keys), dtype=np.int64)
    reasons: dict[str, int] = {}
    labels: dict[int, SegmentLabel] = {}
    unknown: Counter[int] = Counter()
    stuff_instances: defaultdict[int, list[int]] = defaultdict(list)
    for k, key in enumerate(keys.tolist()):
        class_id, instance = key >> 32, key & 0xFFFFFFFF
        label_class = by_id.get(class_id)
        if class_id in table.void:
            reason_of_key[k] = reasons.setdefault(table.void[class_id], len(reasons))
        elif label_class is None:
            unknown[class_id] += int(counts[k])
        elif instance and not label_class.isthing:
            stuff_instances[class_id].append(instance)
        elif not instance and label_class.isthing and things_without_instance == "void":
            reason = f"'{label_class.name}' pixels without instance id"
            reason_of_key[k] = reasons.setdefault(reason, len(reasons))
        else:
            segment_id = len(labels) + 1
            segment_of_key[k] = segment_id
            labels[segment_id] = SegmentLabel(class_id, label_class.isthing and not instance)
    problems = []
    if unknown:
        shown = ", ".join(f"{value} ({pixels} px)" for value, pixels in sorted(unknown.items()))
        problems.append(f"class id(s) {shown} are not in {table.source}")
    for class_id, found in sorted(stuff_instances.items()):
        listed = _values(found)
        problems.append(
            f"instance id(s) {listed} sit on pixels of the stuff class '{by_id[class_id].name}' "
            f"({class_id}) of {table.source}, but stuff has no instances"
        )
    if problems:
        raise DataError(f"{where}: {'; '.join(problems)}. {table.fix}")
    shape = classes.shape
    return PanopticMap(
        ids=segment_of_key[inverse].reshape(shape),
        labels=labels,
        void_reason=reason_of_key[inverse].reshape(shape),
        void_reasons=tuple(reasons),
    )


def _values(values: Sequence[int]) -> str:
    shown = ", ".join(str(value) for value in values[:_MAX_VALUES_SHOWN])
    return f"{shown}, ..." if len(values) > _MAX_VALUES_SHOWN else shown


def images_by_stem(folder: Path, problems: list[str]) -> dict[str, Path]:
    """The images at the top of `folder` by file stem; two images with one stem are a problem."""
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        if path.stem in found:
            problems.append(
                f"'{found[path.stem]}' and '{path}' have the same stem, so their label files "
                "cannot be told apart. Rename or remove one of them."
            )
            continue
        found[path.stem] = path
    return found


def pair_by_key(
    images: Mapping[str, Path],
    partners: Mapping[str, Mapping[str, Path]],
    expected: Callable[[str, str], str],
    problems: list[str],
) -> list[str]:
    """The keys that have an image and a file of every partner role; the others are problems.

    `partners` maps a role ("semantic PNG") to that role's files by key; `expected(role, key)`
    is the path a missing file of the role ("image" included) should have, for the message.
    """
    paired = []
    for key, path in images.items():
        missing = [role for role, files in partners.items() if key not in files]
        for role in missing:
            problems.append(
                f"The {role} '{expected(role, key)}' of the image '{path}' does not exist. Add "
                "it, or remove the image."
            )
        if not missing:
            paired.append(key)
    for role, files in partners.items():
        for key in sorted(set(files) - set(images)):
            problems.append(
                f"The {role} '{files[key]}' has no image '{expected('image', key)}'. Add the "
                f"image, or remove the {role}."
            )
    return paired
