"""The COCO panoptic JSON: reading it into typed records, validating it, and the class mapping.

Everything here is checked without decoding pixels, so it runs in seconds even for COCO's 118k
images; the pixel-level checks (sizes, segment ids in the PNGs) live in `data.check`.

`read_panoptic_json` is the one reader of COCO panoptic JSON files, for datasets and for
evaluation's ground truth and predictions alike. It collects every problem, so that one run of
the tool shows a user all they must fix, or, in fail-fast mode (`Problems(fail_fast=True)`, as
evaluation uses it), raises the first of them.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from panoptic_train._types import MAX_SEGMENT_ID, PathLike, is_int, is_number
from panoptic_train.data.io import find_image_file, read_image_size
from panoptic_train.errors import ConfigError, DataError

# A DataError lists at most this many problems; `check-data` prints all of them.
_MAX_PROBLEMS_IN_ERROR = 30


@dataclass(frozen=True)
class Category:
    id: int
    name: str
    isthing: bool
    color: tuple[int, int, int] | None = None


@dataclass(frozen=True)
class Segment:
    id: int
    category_id: int
    iscrowd: bool
    area: float | None  # the JSON's value (panopticapi scores with it), None when absent
    bbox: tuple[float, float, float, float] | None


@dataclass(frozen=True)
class PanopticSample:
    """One image and its mask; `mask_path` is None for an unlabelled image (`allow_unlabeled`),
    whose pixels are all void."""

    image_id: int | str
    image_path: Path
    mask_path: Path | None
    height: int
    width: int
    segments: tuple[Segment, ...]


@dataclass(frozen=True)
class PanopticIndex:
    categories: tuple[Category, ...]
    samples: tuple[PanopticSample, ...]
    annotations_path: Path
    ignore_classes: tuple[int, ...] = ()


@dataclass(frozen=True)
class ClassMapping:
    """Contiguous class index <-> dataset category id, plus names and thing/stuff flags.

    The order is that of the train JSON's `categories` minus `ignore_classes`; exported models
    carry `to_list()` so predictions map back to the user's category ids.
    """

    class_ids: tuple[int, ...]
    names: tuple[str, ...]
    is_thing: tuple[bool, ...]

    def __post_init__(self) -> None:
        if not len(self.class_ids) == len(self.names) == len(self.is_thing):
            raise ConfigError(
                f"ClassMapping needs as many names ({len(self.names)}) and thing flags "
                f"({len(self.is_thing)}) as class ids ({len(self.class_ids)})."
            )
        duplicates = sorted(i for i, n in Counter(self.class_ids).items() if n > 1)
        if duplicates:
            raise ConfigError(f"ClassMapping has duplicate category ids {duplicates}.")

    @property
    def num_classes(self) -> int:
        return len(self.class_ids)

    def index_of(self, category_id: int) -> int:
        """Contiguous index of a category id; KeyError for ignored or unknown ids."""
        try:
            return self._index[category_id]
        except KeyError:
            raise KeyError(
                f"Category id {category_id} is not one of the classes {list(self.class_ids)}."
            ) from None

    @cached_property
    def _index(self) -> dict[int, int]:
        return {category_id: index for index, category_id in enumerate(self.class_ids)}

    def to_list(self) -> list[dict[str, Any]]:
        return [
            {"id": category_id, "name": name, "isthing": thing}
            for category_id, name, thing in zip(
                self.class_ids, self.names, self.is_thing, strict=True
            )
        ]

    @classmethod
    def from_list(cls, classes: Sequence[Mapping[str, Any]]) -> ClassMapping:
        try:
            return cls(
                class_ids=tuple(int(entry["id"]) for entry in classes),
                names=tuple(str(entry["name"]) for entry in classes),
                is_thing=tuple(bool(entry["isthing"]) for entry in classes),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise ConfigError(
                f"A class list must be a list of {{'id', 'name', 'isthing'}} dicts; got an entry "
                f"without a valid {error}."
            ) from error

    @classmethod
    def from_categories(
        cls, categories: Iterable[Category], ignore_classes: Iterable[int] = ()
    ) -> ClassMapping:
        ignored = set(ignore_classes)
        kept = [category for category in categories if category.id not in ignored]
        return cls(
            class_ids=tuple(c.id for c in kept),
            names=tuple(c.name for c in kept),
            is_thing=tuple(c.isthing for c in kept),
        )


_LIST_ALL_HINT = (
    "List all of them with: panoptic-train check-data --images DIR --masks DIR --annotations FILE"
)


def format_problems(
    annotations: Path, messages: Sequence[str], overflow_hint: str = _LIST_ALL_HINT
) -> str:
    """One error text for many problems, capped so a broken COCO-sized dataset stays readable;
    `overflow_hint` tells what to do about the problems left out."""
    shown = messages[:_MAX_PROBLEMS_IN_ERROR]
    lines = [f"{len(messages)} problem(s) in the dataset of '{annotations}':"]
    lines += [f"  - {message}" for message in shown]
    if len(messages) > len(shown):
        lines.append(f"  ... and {len(messages) - len(shown)} more. {overflow_hint}")
    return "\n".join(lines)


class Problems:
    """What a reader finds wrong with its input, in the order it finds it.

    Collected (the default), so that one run shows a user everything to fix; or, with
    `fail_fast`, the first one is raised as a DataError prefixed with `source` (the file it is
    in), for callers that cannot use a partly broken input. Both modes run the same checks, so
    the error raised is the first problem collected.
    """

    def __init__(self, source: str = "", *, fail_fast: bool = False) -> None:
        self.source = source
        self.fail_fast = fail_fast
        self.messages: list[str] = []

    def add(self, message: str) -> None:
        if self.fail_fast:
            raise DataError(f"{self.source}: {message}")
        self.messages.append(message)


def is_flag(value: Any) -> bool:
    """A JSON 0/1 flag such as `iscrowd` or `isthing` (true/false accepted too)."""
    return isinstance(value, bool) or value in (0, 1)


def load_coco_json(
    path: Path,
    kind: str = "COCO panoptic",
    lists: Sequence[str] = ("images", "annotations", "categories"),
) -> dict[str, Any]:
    """A COCO-style JSON object holding the given `lists`; DataError when the file is missing,
    not JSON, or not such an object (nothing else can be checked then).

    `kind` names the file in messages ("COCO panoptic", "COCO instances", "prediction", ...).
    """
    if not path.is_file():
        raise DataError(f"The {kind} JSON '{path}' does not exist. Fix the path.")
    try:
        with path.open(encoding="utf-8") as handle:
            content = json.load(handle)
    except json.JSONDecodeError as error:
        raise DataError(
            f"The {kind} JSON '{path}' is not valid JSON: {error.msg} at line {error.lineno}, "
            f"column {error.colno}. Fix the file or regenerate it."
        ) from error
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"Cannot read the {kind} JSON '{path}': {error}.") from error
    expected = f"a {kind} JSON is an object with the lists {', '.join(map(repr, lists))}"
    if not isinstance(content, dict):
        raise DataError(
            f"The {kind} JSON '{path}' holds a JSON {type(content).__name__}, but {expected}."
        )
    missing = [key for key in lists if key not in content]
    wrong = [key for key in lists if key in content and not isinstance(content[key], list)]
    if missing or wrong:
        details = []
        if missing:
            details.append(f"missing the key(s) {missing}")
        if wrong:
            details.append(f"the key(s) {wrong} are not lists")
        raise DataError(
            f"The {kind} JSON '{path}' is incomplete: {' and '.join(details)}; {expected}."
        )
    return content


@dataclass(frozen=True)
class PanopticAnnotation:
    """One entry of 'annotations': an image's mask PNG and the segments it holds."""

    image_id: int | str
    file_name: str
    segments: tuple[Segment, ...]


@dataclass(frozen=True)
class PanopticJson:
    """The checked content of a COCO panoptic JSON; entries with problems are left out.

    images: the valid 'images' entries by id (empty when read without 'images').
    annotations: the entries whose every segment is valid.
    annotated: the image ids that have an 'annotations' entry, valid or not.
    """

    path: Path
    categories: tuple[Category, ...]
    images: Mapping[int | str, Mapping[str, Any]]
    annotations: tuple[PanopticAnnotation, ...]
    annotated: frozenset[int | str]


def read_panoptic_json(
    path: Path,
    problems: Problems,
    *,
    kind: str = "COCO panoptic",
    with_images: bool = True,
    ground_truth: Sequence[Category] | None = None,
    segment_attributes: bool = True,
) -> PanopticJson:
    """Read and check a COCO panoptic JSON, every problem going to `problems` (collected, or
    raised at the first); only a file that cannot be read at all raises at once.

    with_images: the file has an 'images' list that every annotation must refer to (a dataset);
        without it (a prediction), annotations stand alone.
    ground_truth: for a prediction, the categories of the ground truth it is scored against;
        the file's own 'categories' are then not read.
    segment_attributes: check each segment's `iscrowd`, `area` and `bbox` (nothing reads a
        prediction's).
    """
    lists = ["annotations"]
    lists += ["images"] if with_images else []
    lists += ["categories"] if ground_truth is None else []
    content = load_coco_json(path, kind, lists)
    if ground_truth is None:
        categories = _parse_categories(content["categories"], problems)
        known = {category.id for category in categories}
        listed = {str(i) for i in _entry_ids(content["categories"], "id")}
        category_ids = _CategoryIds(
            known,
            listed - {str(i) for i in known},
            "'categories'",
            "Add the category to 'categories' or fix the segments' 'category_id'.",
        )
    else:
        categories = list(ground_truth)
        category_ids = _CategoryIds(
            {category.id for category in categories},
            set(),
            "the ground truth's 'categories'",
            "Map the predicted classes to those category ids.",
        )
    images = parse_images(content["images"], problems) if with_images else {}
    # Ids of 'images' entries that are broken themselves (and reported): their annotations
    # are not reported again as annotations of no image.
    rejected_images = _entry_ids(content["images"], "id") - set(images) if with_images else set()
    annotations: list[PanopticAnnotation] = []
    annotated: dict[Any, str] = {}  # image id -> its mask's file name
    mask_names: dict[str, Any] = {}
    for position, entry in enumerate(content["annotations"]):
        where = f"annotations[{position}]"
        if not isinstance(entry, dict):
            problems.add(f"{where} is {entry!r}, not an object with 'image_id' and 'file_name'.")
            continue
        # JSON values are typed Any until checked.
        image_id: Any = entry.get("image_id")
        file_name: Any = entry.get("file_name")
        segments_raw: Any = entry.get("segments_info")
        bad = []
        valid_id = is_int(image_id) or isinstance(image_id, str)
        if not valid_id:
            bad.append(f"'image_id' {image_id!r} is not an integer or string")
        elif with_images and image_id not in images and image_id not in rejected_images:
            bad.append(
                f"'image_id' {image_id!r} is not an id in 'images' (add an 'images' entry for "
                "it or remove this annotation)"
            )
        elif image_id in annotated:
            bad.append(
                f"image id {image_id!r} already has an annotation ('{annotated[image_id]}'); "
                "keep one entry per image"
            )
        if not isinstance(file_name, str) or not file_name:
            bad.append(f"'file_name' {file_name!r} is not a mask file name")
        elif file_name in mask_names:
            bad.append(f"mask '{file_name}' is also used by image id {mask_names[file_name]!r}")
        if not isinstance(segments_raw, list):
            bad.append(f"'segments_info' {segments_raw!r} is not a list")
        if bad:
            problems.add(f"{where}: {'; '.join(bad)}. Fix that entry.")
            continue
        annotated[image_id] = file_name
        mask_names[file_name] = image_id
        where = f"{where} (image id {image_id!r}, '{file_name}')"
        segments = [
            _parse_segment(
                segment,
                f"{where}.segments_info[{i}]",
                category_ids,
                segment_attributes,
                problems,
            )
            for i, segment in enumerate(segments_raw)
        ]
        duplicates = sorted(i for i, n in Counter(s.id for s in segments if s).items() if n > 1)
        if duplicates:
            problems.add(
                f"{where}: segment ids {duplicates} appear more than once in 'segments_info'. "
                "Every segment of an image needs its own id."
            )
        elif None not in segments and image_id not in rejected_images:
            annotations.append(
                PanopticAnnotation(image_id, file_name, tuple(s for s in segments if s))
            )
    for message in category_ids.problems():
        problems.add(message)
    if with_images and not content["images"]:
        problems.add(
            f"'{path}' lists no images: the dataset is empty. Point 'annotations' at the JSON of "
            "a dataset with at least one annotated image."
        )
    return PanopticJson(
        path=path,
        categories=tuple(categories),
        images=images,
        annotations=tuple(annotations),
        annotated=frozenset(annotated),
    )


def _entry_ids(entries: list[Any], key: str) -> set[int | str]:
    """The integer or string values of `key` in the objects of a JSON list."""
    return {
        entry[key]
        for entry in entries
        if isinstance(entry, dict) and (is_int(entry.get(key)) or isinstance(entry.get(key), str))
    }


def _parse_categories(raw: list[Any], problems: Problems) -> list[Category]:
    categories: list[Category] = []
    seen: set[int] = set()
    for position, entry in enumerate(raw):
        where = f"categories[{position}]"
        if not isinstance(entry, dict):
            problems.add(f"{where} is {entry!r}, not an object with 'id', 'name' and 'isthing'.")
            continue
        category_id: Any = entry.get("id")
        name: Any = entry.get("name")
        isthing: Any = entry.get("isthing")
        bad = []
        if not is_int(category_id):
            bad.append(f"'id' {category_id!r} is not an integer")
        if not isinstance(name, str):
            bad.append(f"'name' {name!r} is not a string")
        if not is_flag(isthing):
            bad.append(f"'isthing' {isthing!r} is not 0/1")
        if bad:
            problems.add(f"{where}: {'; '.join(bad)}. Fix that category entry.")
            continue
        if category_id in seen:
            problems.add(
                f"{where}: category id {category_id} appears more than once. Give every "
                "category its own id."
            )
            continue
        seen.add(category_id)
        color = entry.get("color")
        color_tuple = (
            (int(color[0]), int(color[1]), int(color[2]))
            if isinstance(color, list) and len(color) == 3 and all(is_int(c) for c in color)
            else None
        )
        categories.append(Category(category_id, name, bool(isthing), color_tuple))
    if not raw:
        problems.add("'categories' is empty. List the dataset's thing and stuff classes there.")
    return categories


@dataclass
class _CategoryIds:
    """The category ids segments may use, and the other ids segments used.

    rejected: str() of the ids of 'categories' entries that are themselves broken (and already
        reported); segments using them are not reported again, so that one bad category does
        not cascade into a line per segment.
    listed_in, fix: where the known ids come from and what to do, for the message.
    unknown: each id in no category -> where segments use it, reported once per id.
    """

    known: set[int]
    rejected: set[str]
    listed_in: str
    fix: str
    unknown: dict[int, list[str]] = field(default_factory=dict)

    def problems(self) -> list[str]:
        lines = []
        for category_id, uses in self.unknown.items():
            shown = ", ".join(uses[:3]) + (", ..." if len(uses) > 3 else "")
            lines.append(
                f"'category_id' {category_id} is not in {self.listed_in} (ids "
                f"{sorted(self.known)}) but {len(uses)} segment(s) use it: {shown}. {self.fix}"
            )
        return lines


def _parse_segment(
    entry: Any,
    where: str,
    category_ids: _CategoryIds,
    attributes: bool,
    problems: Problems,
) -> Segment | None:
    if not isinstance(entry, dict):
        problems.add(f"{where} is {entry!r}, not an object with 'id' and 'category_id'.")
        return None
    segment_id: Any = entry.get("id")
    category_id: Any = entry.get("category_id")
    iscrowd, area, bbox = entry.get("iscrowd", 0), entry.get("area"), entry.get("bbox")
    bad = []
    if not is_int(segment_id) or not 0 < segment_id <= MAX_SEGMENT_ID:
        bad.append(
            f"segment 'id' {segment_id!r} is not an integer in 1..{MAX_SEGMENT_ID} "
            "(0 is void in the PNG)"
        )
    known_category = str(category_id) not in category_ids.rejected
    if known_category and not is_int(category_id):
        bad.append(f"'category_id' {category_id!r} is not an integer")
    elif known_category and category_id not in category_ids.known:
        category_ids.unknown.setdefault(category_id, []).append(where)
        known_category = False
    if attributes:
        if not is_flag(iscrowd):
            bad.append(f"'iscrowd' {iscrowd!r} is not 0/1")
        if area is not None and not (is_number(area) and math.isfinite(area) and area >= 0):
            bad.append(
                f"'area' {area!r} is not a non-negative number (the segment's pixel count, "
                "which PQ is computed with; remove it to use the PNG's)"
            )
        valid_bbox = isinstance(bbox, list) and len(bbox) == 4 and all(map(is_number, bbox))
        if bbox is not None and not valid_bbox:
            bad.append(f"'bbox' {bbox!r} is not [x, y, width, height]")
    if bad:
        problems.add(f"{where}: {'; '.join(bad)}.")
    if bad or not known_category:
        return None
    return Segment(
        id=segment_id,
        category_id=category_id,
        iscrowd=attributes and bool(iscrowd),
        area=area if attributes else None,
        bbox=(bbox[0], bbox[1], bbox[2], bbox[3]) if attributes and bbox is not None else None,
    )


def parse_images(raw: list[Any], problems: Problems) -> dict[Any, dict[str, Any]]:
    """The valid entries of a COCO 'images' list by image id; the others go to `problems`."""
    images: dict[Any, dict[str, Any]] = {}
    file_names: dict[str, Any] = {}
    for position, entry in enumerate(raw):
        where = f"images[{position}]"
        if not isinstance(entry, dict):
            problems.add(f"{where} is {entry!r}, not an object with 'id' and 'file_name'.")
            continue
        image_id: Any = entry.get("id")
        file_name: Any = entry.get("file_name")
        height, width = entry.get("height"), entry.get("width")
        bad = []
        if not (is_int(image_id) or isinstance(image_id, str)):
            bad.append(f"'id' {image_id!r} is not an integer or string")
        if not isinstance(file_name, str) or not file_name:
            bad.append(f"'file_name' {file_name!r} is not a file name")
        for key, value in (("height", height), ("width", width)):
            if value is not None and not (is_int(value) and value > 0):
                bad.append(f"'{key}' {value!r} is not a positive integer")
        if bad:
            problems.add(f"{where}: {'; '.join(bad)}. Fix that entry.")
            continue
        if image_id in images:
            problems.add(
                f"{where}: image id {image_id!r} is used twice (also by "
                f"'{images[image_id]['file_name']}'). Give every image its own id."
            )
            continue
        if file_name in file_names:
            problems.add(
                f"{where}: file name '{file_name}' is listed twice (image ids "
                f"{file_names[file_name]!r} and {image_id!r}). Remove the duplicate entry."
            )
            continue
        file_names[file_name] = image_id
        images[image_id] = entry
    return images


def _locate_sample(
    image_id: int | str,
    image_entry: Mapping[str, Any],
    mask_path: Path | None,
    segments: tuple[Segment, ...],
    images_dir: Path,
    problems: Problems,
) -> PanopticSample | None:
    """The sample of one image if its image and mask files exist (else problems noted).

    `mask_path` None is an unlabelled image: only the image must exist.
    """
    image_path = find_image_file(images_dir, image_entry["file_name"])
    if image_path is None:
        problems.add(
            f"Image '{images_dir / image_entry['file_name']}' (image id {image_id!r}) does "
            "not exist. Add the image or remove its entries from the JSON."
        )
    if mask_path is not None and not mask_path.is_file():
        problems.add(
            f"Mask '{mask_path}' (image id {image_id!r}) does not exist. Add the mask PNG or "
            "remove its entries from the JSON."
        )
        return None
    if image_path is None:
        return None
    height, width = image_entry.get("height"), image_entry.get("width")
    if height is None or width is None:
        try:
            height, width = read_image_size(image_path)
        except DataError as error:
            problems.add(str(error))
            return None
    return PanopticSample(
        image_id=image_id,
        image_path=image_path,
        mask_path=mask_path,
        height=height,
        width=width,
        segments=segments,
    )


def read_panoptic_index(
    images: PathLike,
    masks: PathLike,
    annotations: PathLike,
    *,
    ignore_classes: Iterable[int] = (),
    allow_unlabeled: bool = False,
) -> PanopticIndex:
    """Read and validate a COCO panoptic dataset's JSON and file layout (no pixel decoding).

    Raises DataError listing every problem found: malformed or incomplete JSON, duplicate image
    ids or file names, unknown category ids, images without annotation (unless
    `allow_unlabeled`: then they are all-void samples) or annotations without image, missing
    image or mask files, an empty dataset, unknown `ignore_classes`.
    """
    index, problems = scan_panoptic_index(
        images, masks, annotations, ignore_classes=ignore_classes, allow_unlabeled=allow_unlabeled
    )
    if problems:
        raise DataError(format_problems(index.annotations_path, problems))
    return index


def scan_panoptic_index(
    images: PathLike,
    masks: PathLike,
    annotations: PathLike,
    *,
    ignore_classes: Iterable[int] = (),
    allow_unlabeled: bool = False,
) -> tuple[PanopticIndex, list[str]]:
    """The index of the usable samples and the list of problems found (see read_panoptic_index):
    those of the JSON first, then those of the files it names.

    Only a JSON that cannot be read at all raises (DataError): nothing else can be checked then.
    """
    images_dir, masks_dir, annotations_path = Path(images), Path(masks), Path(annotations)
    problems = Problems()
    content = read_panoptic_json(annotations_path, problems)
    category_ids = sorted(category.id for category in content.categories)
    ignored = tuple(ignore_classes)
    unknown_ignored = [c for c in ignored if c not in category_ids]
    if unknown_ignored and category_ids:
        problems.add(
            f"ignore_classes {unknown_ignored} are not category ids of '{annotations_path}' "
            f"(ids {category_ids}). Remove them or fix the ids."
        )
    for name, directory in (("images", images_dir), ("masks", masks_dir)):
        if not directory.is_dir():
            problems.add(f"The {name} directory '{directory}' does not exist. Fix the path.")
    check_files = images_dir.is_dir() and masks_dir.is_dir()

    samples: list[PanopticSample | None] = []
    for annotation in content.annotations if check_files else ():
        samples.append(
            _locate_sample(
                annotation.image_id,
                content.images[annotation.image_id],
                masks_dir / annotation.file_name,
                annotation.segments,
                images_dir,
                problems,
            )
        )
    for image_id, entry in content.images.items():
        if image_id in content.annotated:
            continue
        if not allow_unlabeled:
            problems.add(
                f"Image '{entry['file_name']}' (image id {image_id!r}) has no entry in "
                f"'annotations' of '{annotations_path}'. Add its segments_info and mask, remove "
                "the image from 'images', or set data.allow_unlabeled to use it as an all-void "
                "negative."
            )
        elif check_files:
            samples.append(_locate_sample(image_id, entry, None, (), images_dir, problems))
    index = PanopticIndex(
        categories=content.categories,
        samples=tuple(sample for sample in samples if sample is not None),
        annotations_path=annotations_path,
        ignore_classes=ignored,
    )
    return index, problems.messages
