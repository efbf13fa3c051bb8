"""COCO instances (things), optionally with stuff, to COCO panoptic.

Things come from a COCO instances JSON: polygons and RLE (compressed or not) are decoded with
pycocotools, crowd annotations (`iscrowd: 1`) stay crowd segments, image ids are kept. Stuff,
optionally, comes from per-image PNGs with a category id per pixel (`<image stem>.png`, e.g.
COCO-stuff's `stuff_*2017_pixelmaps`, with a classes file naming the values) or from a stuff
JSON in COCO format (e.g. COCO-stuff's `stuff_*2017.json`); each stuff category is one segment
per image. `stuff_ignore` makes stuff categories void (COCO-stuff's 183 "other" marks thing
pixels).

Overlaps, since a panoptic pixel has one segment: things are painted over stuff and non-crowd
instances over crowd regions; within each of those three groups `overlap` decides where two
annotations overlap: "smaller" (default) gives the pixels to the annotation with fewer pixels
(ties: the later one in the JSON), "last" to the later one in the JSON, "void" makes them void.
Annotations left without visible pixels are dropped and counted in the summary.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np

from panoptic_train._types import PathLike, is_int, is_number
from panoptic_train.data.coco import Problems, is_flag, load_coco_json, parse_images
from panoptic_train.data.convert._labels import (
    LabelClass,
    LabelTable,
    labels_to_panoptic,
    load_classes_file,
    load_label_map,
    require_same_size,
)
from panoptic_train.data.convert._writer import (
    LinkMode,
    PanopticImage,
    PanopticMap,
    SegmentLabel,
    convert_split,
    raise_problems,
)
from panoptic_train.data.convert.summary import ConversionSummary
from panoptic_train.data.io import find_image_file, read_image_size
from panoptic_train.errors import ConfigError, DataError, require

Overlap = Literal["smaller", "last", "void"]
UNCOVERED = "not covered by any annotation"
CONTESTED = "overlapping annotations (overlap='void')"


@dataclass(frozen=True)
class _Region:
    """One annotation to paint; `label` None paints void for `void_reason` (ignored stuff)."""

    segmentation: Any  # as in the JSON: a list of polygons or an RLE dict
    label: SegmentLabel | None
    void_reason: str
    where: str  # the annotation, for messages


@dataclass(frozen=True)
class _Task:
    image: Path
    image_id: int
    image_name: str  # relative to the images folder, as the output keeps it
    mask_name: str
    json_size: tuple[int, int] | None  # (height, width) from the JSON, when it gives them
    stuff_png: Path | None
    stuff: tuple[_Region, ...] = ()
    crowd: tuple[_Region, ...] = ()
    things: tuple[_Region, ...] = ()


def convert_coco_instances(
    images: PathLike,
    annotations: PathLike,
    out: PathLike,
    *,
    split: str,
    stuff_masks: PathLike | None = None,
    stuff_classes: PathLike | None = None,
    stuff_annotations: PathLike | None = None,
    stuff_ignore: Sequence[int] = (),
    overlap: Overlap = "smaller",
    link: LinkMode | None = None,
    overwrite: bool = False,
    num_workers: int = 0,
) -> ConversionSummary:
    """Convert a COCO instances dataset, plus optional stuff, into `out` (module docstring).

    Stuff comes from `stuff_masks` (a folder of PNGs) with `stuff_classes` (a classes file of
    stuff classes, as for semantic-instance), or from `stuff_annotations` (a COCO JSON). Raises
    MissingDependencyError without pycocotools (extra `convert`), ConfigError for conflicting
    options, and DataError listing every bad annotation and missing or mismatched file.
    """
    require("pycocotools.mask", "convert", "Converting COCO instances")
    if overlap not in ("smaller", "last", "void"):
        raise ConfigError(f"overlap must be 'smaller', 'last' or 'void', not {overlap!r}.")
    if stuff_masks is not None and stuff_annotations is not None:
        raise ConfigError("Give stuff either as PNGs (stuff_masks) or as a JSON, not both.")
    if (stuff_masks is None) != (stuff_classes is None):
        raise ConfigError(
            "stuff_masks (--stuff-masks) and stuff_classes (--stuff-classes) go together: the "
            "classes file names the category ids in the stuff PNGs."
        )
    if stuff_ignore and stuff_masks is None and stuff_annotations is None:
        raise ConfigError("stuff_ignore needs stuff: pass stuff_masks or stuff_annotations.")

    images_dir, annotations_path = Path(images), Path(annotations)
    if not images_dir.is_dir():
        raise DataError(f"The images folder '{images_dir}' does not exist. Fix the path.")
    content = load_coco_json(annotations_path, "COCO instances")
    problems = Problems()
    image_entries = parse_images(content["images"], problems)
    things = _parse_categories(content["categories"], annotations_path, True, problems)
    sources = _Sources(
        images_dir=images_dir,
        annotations=annotations_path,
        things=_parse_regions(content, annotations_path, image_entries, things, problems),
    )
    categories = [c.category() for c in things.values()]
    inputs = [images_dir, annotations_path]

    stuff_table: LabelTable | None = None
    if stuff_masks is not None and stuff_classes is not None:
        stuff_table = _stuff_table(Path(stuff_classes), stuff_ignore)
        categories += stuff_table.categories()
        sources = replace(sources, stuff_masks=Path(stuff_masks))
        inputs.append(Path(stuff_masks))
    elif stuff_annotations is not None:
        stuff_path = Path(stuff_annotations)
        stuff_content = load_coco_json(stuff_path, "COCO stuff")
        stuff = _parse_categories(stuff_content["categories"], stuff_path, False, problems)
        _check_ignored(stuff_ignore, stuff, stuff_path)
        categories += [c.category() for c in stuff.values() if c.id not in stuff_ignore]
        found = _parse_regions(stuff_content, stuff_path, image_entries, stuff, problems)
        stuff_regions = {
            image_id: [_ignored(region, stuff_ignore) for region in image_regions]
            for image_id, image_regions in found.items()
        }
        sources = replace(sources, stuff=stuff_regions)
        inputs.append(stuff_path)
    _check_ids_unique(categories, annotations_path, problems)
    tasks = _tasks(sources, image_entries, problems)
    raise_problems(annotations_path, problems.messages)
    return convert_split(
        format_name="coco-instances",
        out=out,
        split=split,
        tasks=tasks,
        convert=partial(_convert_image, stuff_table, overlap),
        categories=categories,
        source=annotations_path,
        inputs=inputs,
        link=link,
        overwrite=overwrite,
        num_workers=num_workers,
    )


@dataclass(frozen=True)
class _Sources:
    """Where the parts of each image come from: regions by image id, stuff PNG folder."""

    images_dir: Path
    annotations: Path
    things: Mapping[Any, list[_Region]]
    stuff: Mapping[Any, list[_Region]] = field(default_factory=dict)
    stuff_masks: Path | None = None


def _parse_categories(
    raw: list[Any], path: Path, isthing: bool, problems: Problems
) -> dict[int, LabelClass]:
    categories: dict[int, LabelClass] = {}
    for position, entry in enumerate(raw):
        fields: dict[str, Any] = entry if isinstance(entry, dict) else {}
        category_id: Any = fields.get("id")  # a JSON value of any type until checked
        name = fields.get("name")
        if not is_int(category_id) or not isinstance(name, str) or category_id in categories:
            problems.add(
                f"categories[{position}] of '{path}' is {entry!r}: a category needs an integer "
                "'id' of its own and a 'name'. Fix that entry."
            )
            continue
        supercategory = fields.get("supercategory")
        categories[category_id] = LabelClass(
            category_id,
            name,
            isthing,
            supercategory=supercategory if isinstance(supercategory, str) else None,
        )
    return categories


def _parse_regions(
    content: Mapping[str, Any],
    path: Path,
    image_entries: Mapping[Any, Mapping[str, Any]],
    categories: Mapping[int, LabelClass],
    problems: Problems,
) -> dict[Any, list[_Region]]:
    """The annotations of `content` as regions by image id, in JSON order."""
    regions: defaultdict[Any, list[_Region]] = defaultdict(list)
    for position, entry in enumerate(content["annotations"]):
        where = f"annotations[{position}] of '{path}'"
        if not isinstance(entry, dict):
            problems.add(f"{where} is {entry!r}, not an annotation object. Fix that entry.")
            continue
        where = f"annotations[{position}] (id {entry.get('id')!r}) of '{path}'"
        image_id = entry.get("image_id")
        category_id: Any = entry.get("category_id")  # a JSON value of any type until checked
        iscrowd, segmentation = entry.get("iscrowd", 0), entry.get("segmentation")
        bad = []
        if image_id not in image_entries:
            bad.append(f"'image_id' {image_id!r} is not an id of the instances JSON's 'images'")
        if category_id not in categories:
            bad.append(
                f"'category_id' {category_id!r} is not in 'categories' (ids {sorted(categories)})"
            )
        if not is_flag(iscrowd):
            bad.append(f"'iscrowd' {iscrowd!r} is not 0/1")
        if not isinstance(segmentation, list | dict):
            bad.append("'segmentation' is neither polygons (a list) nor RLE (an object)")
        if bad:
            problems.add(f"{where}: {'; '.join(bad)}. Fix or remove the annotation.")
            continue
        # Crowd is a thing notion: a stuff class is one segment per image anyway.
        label = SegmentLabel(category_id, bool(iscrowd) and categories[category_id].isthing)
        regions[image_id].append(_Region(segmentation, label, "", where))
    return dict(regions)


def _ignored(region: _Region, stuff_ignore: Sequence[int]) -> _Region:
    """The stuff region as void if its category is ignored."""
    if region.label is None or region.label.category_id not in stuff_ignore:
        return region
    reason = f"stuff category {region.label.category_id} (stuff_ignore)"
    return replace(region, label=None, void_reason=reason)


def _stuff_table(classes: Path, stuff_ignore: Sequence[int]) -> LabelTable:
    table = load_classes_file(classes)
    things = [c.name for c in table.classes if c.isthing]
    if things:
        raise ConfigError(
            f"The stuff classes file '{classes}' lists thing classes {things}; things come from "
            "the instances JSON. Set isthing: false or remove them."
        )
    known = {c.id: c for c in table.classes}
    _check_ignored(stuff_ignore, known, classes)
    return replace(
        table,
        classes=tuple(c for c in table.classes if c.id not in stuff_ignore),
        void={**table.void, **{i: f"stuff category {i} (stuff_ignore)" for i in stuff_ignore}},
    )


def _check_ignored(stuff_ignore: Sequence[int], known: Mapping[int, Any], path: Path) -> None:
    unknown = sorted(set(stuff_ignore) - set(known))
    if unknown:
        raise ConfigError(
            f"stuff_ignore {unknown} are not stuff category ids of '{path}' (ids "
            f"{sorted(known)}). Remove them or fix the ids."
        )


def _check_ids_unique(
    categories: Sequence[Mapping[str, Any]], path: Path, problems: Problems
) -> None:
    seen: dict[int, str] = {}
    for category in categories:
        if category["id"] in seen:
            problems.add(
                f"Category id {category['id']} is both the thing '{seen[category['id']]}' of "
                f"'{path}' and the stuff class '{category['name']}'. Give stuff classes ids "
                "that no thing category uses."
            )
        seen[category["id"]] = category["name"]


def _tasks(
    sources: _Sources, image_entries: Mapping[Any, Mapping[str, Any]], problems: Problems
) -> list[_Task]:
    tasks = []
    masks: dict[str, Path] = {}
    for image_id, entry in image_entries.items():
        image = find_image_file(sources.images_dir, entry["file_name"])
        if image is None:
            problems.add(
                f"Image '{sources.images_dir / entry['file_name']}' (image id {image_id!r}) does "
                f"not exist. Add it or remove its entry from 'images' of '{sources.annotations}'."
            )
            continue
        name = image.relative_to(sources.images_dir).as_posix()
        mask = Path(name).with_suffix(".png").as_posix()
        if mask in masks:
            problems.add(
                f"Images '{masks[mask]}' and '{image}' would both get the mask '{mask}'. Rename "
                "one of them."
            )
        masks[mask] = image
        stuff_png = sources.stuff_masks / mask if sources.stuff_masks else None
        if stuff_png is not None and not stuff_png.is_file():
            problems.add(
                f"The stuff PNG '{stuff_png}' of the image '{image}' does not exist. Add it, or "
                "remove the image from the JSON."
            )
        height, width = entry.get("height"), entry.get("width")
        things = sources.things.get(image_id, [])
        tasks.append(
            _Task(
                image=image,
                image_id=image_id,
                image_name=name,
                mask_name=mask,
                json_size=(height, width) if height and width else None,
                stuff_png=stuff_png,
                stuff=tuple(sources.stuff.get(image_id, ())),
                crowd=tuple(r for r in things if r.label is not None and r.label.iscrowd),
                things=tuple(r for r in things if r.label is not None and not r.label.iscrowd),
            )
        )
    return tasks


def _convert_image(stuff_table: LabelTable | None, overlap: Overlap, task: _Task) -> PanopticImage:
    size = read_image_size(task.image)
    if task.json_size is not None and task.json_size != size:
        raise DataError(
            f"The JSON gives image id {task.image_id!r} the size {task.json_size[0]}x"
            f"{task.json_size[1]} (HxW), but '{task.image}' is {size[0]}x{size[1]}. Fix "
            "'height'/'width' of its 'images' entry."
        )
    if task.stuff_png is not None and stuff_table is not None:
        values = load_label_map(task.stuff_png, "stuff PNG")
        require_same_size(task.image, size, [(task.stuff_png, values.shape)])
        base = labels_to_panoptic(
            values, np.zeros_like(values), stuff_table, "void", f"'{task.stuff_png}'"
        )
    else:
        base = PanopticMap(
            ids=np.zeros(size, dtype=np.int32),
            labels={},
            void_reason=np.zeros(size, dtype=np.int64),
            void_reasons=(UNCOVERED,),
        )
    canvas = _Canvas(base)
    stuff = _merge_by_category([(_decode(region, size), region) for region in task.stuff])
    canvas.paint_group(stuff, overlap)
    for group in (task.crowd, task.things):
        canvas.paint_group([(_decode(region, size), region) for region in group], overlap)
    return PanopticImage(
        image_path=task.image,
        image_id=task.image_id,
        image_name=task.image_name,
        mask_name=task.mask_name,
        panoptic=canvas.result(),
    )


def _decode(region: _Region, size: tuple[int, int]) -> np.ndarray:
    """The (H, W) bool mask of a region's polygons or RLE at the image's size."""
    mask_api: Any = require("pycocotools.mask", "convert", "Converting COCO instances")
    height, width = size
    segmentation = region.segmentation
    if isinstance(segmentation, list):
        if not all(_is_polygon(polygon) for polygon in segmentation):
            raise DataError(
                f"{region.where}: 'segmentation' is a list but not of polygons [x1, y1, x2, y2, "
                "...] with an even number of coordinates. Fix the annotation."
            )
        # Fewer than 3 points enclose no area; pycocotools would read 2 points as a box.
        polygons = [polygon for polygon in segmentation if len(polygon) >= 6]
        if not polygons:
            return np.zeros(size, dtype=bool)
        rle = mask_api.merge(mask_api.frPyObjects(polygons, height, width))
    else:
        rle_size, counts = segmentation.get("size"), segmentation.get("counts")
        if rle_size != [height, width] or not isinstance(counts, list | str):
            raise DataError(
                f"{region.where}: the RLE has 'size' {rle_size!r} and 'counts' of type "
                f"{type(counts).__name__}, but the image is {height}x{width}: an RLE needs "
                "'size' [height, width] of its image and 'counts' (a list or a string). Fix "
                "the annotation."
            )
        # Uncompressed RLE (counts a list) is encoded first; compressed RLE decodes as it is.
        rle = (
            mask_api.frPyObjects(segmentation, height, width)
            if isinstance(counts, list)
            else segmentation
        )
    try:
        return mask_api.decode(rle).astype(bool)
    except (ValueError, TypeError) as error:
        raise DataError(
            f"{region.where}: pycocotools cannot decode the segmentation ({error}). Fix the "
            "annotation."
        ) from error


def _is_polygon(polygon: Any) -> bool:
    return (
        isinstance(polygon, list) and len(polygon) % 2 == 0 and all(is_number(v) for v in polygon)
    )


def _merge_by_category(
    decoded: Sequence[tuple[np.ndarray, _Region]],
) -> list[tuple[np.ndarray, _Region]]:
    """One region per stuff category (or void reason): stuff is one segment per image."""
    merged: dict[Any, tuple[np.ndarray, _Region]] = {}
    for mask, region in decoded:
        key = region.void_reason if region.label is None else region.label.category_id
        if key in merged:
            merged[key] = (merged[key][0] | mask, merged[key][1])
        else:
            merged[key] = (mask, region)
    return list(merged.values())


class _Canvas:
    """A panoptic map being painted: each paint covers what was painted before."""

    def __init__(self, base: PanopticMap) -> None:
        self.ids = base.ids.astype(np.int32)
        self.labels = dict(base.labels)
        self.void_reason = base.void_reason.copy()
        self.reasons = {reason: index for index, reason in enumerate(base.void_reasons)}

    def paint_group(self, group: Sequence[tuple[np.ndarray, _Region]], overlap: Overlap) -> None:
        """Paint regions of one kind, resolving their overlaps by `overlap` (module docstring)."""
        order = list(group)
        if overlap == "smaller":
            # Largest first, so smaller ones end on top; the sort is stable, so of two equal
            # areas the later annotation is painted last and wins.
            order.sort(key=lambda item: -int(item[0].sum()))
        for mask, region in order:
            if region.label is None:
                self.make_void(mask, region.void_reason)
            else:
                segment_id = max(self.labels, default=0) + 1
                self.labels[segment_id] = region.label
                self.ids[mask] = segment_id
        if overlap == "void" and len(group) > 1:
            coverage = np.sum([mask for mask, _ in group], axis=0, dtype=np.int32)
            self.make_void(coverage > 1, CONTESTED)

    def make_void(self, mask: np.ndarray, reason: str) -> None:
        self.ids[mask] = 0
        self.void_reason[mask] = self.reasons.setdefault(reason, len(self.reasons))

    def result(self) -> PanopticMap:
        return PanopticMap(self.ids, self.labels, self.void_reason, tuple(self.reasons))
