"""What a conversion wrote, as numbers to check and as the text the command line prints."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from panoptic_train.data.check import class_table
from panoptic_train.data.coco import Category


def _percent(part: int, whole: int) -> str:
    return f"{100 * part / whole:.2f} %" if whole else "0 %"


@dataclass(frozen=True)
class ConversionSummary:
    """One converted split: images, segments per category id (crowd counted apart), void pixels
    by reason, annotations left out for having no visible pixels, and the written paths."""

    format_name: str
    split: str
    images: int
    categories: tuple[Category, ...]
    segments: Mapping[int, int]
    crowd: Mapping[int, int]
    pixels: int
    void_pixels: Mapping[str, int]
    empty_segments: int
    data: Mapping[str, Path]  # the split's "images", "masks", "annotations"
    data_file: Path | None  # data.yaml, when the split is train or val
    data_splits: tuple[str, ...]  # the splits data.yaml lists

    def __str__(self) -> str:
        void = sum(self.void_pixels.values())
        lines = [
            f"Converted {self.format_name} split '{self.split}': {self.images} images, "
            f"{sum(self.segments.values())} segments ({sum(self.crowd.values())} crowd), "
            f"{len(self.categories)} categories.",
            *class_table(self.categories, self.segments, self.crowd),
            f"Void: {void} of {self.pixels} pixels ({_percent(void, self.pixels)})"
            + (":" if void else "."),
            *(
                f"  {count:>12}  {_percent(count, self.pixels):>8}  {reason}"
                for reason, count in self.void_pixels.items()
            ),
        ]
        if self.empty_segments:
            lines.append(
                f"{self.empty_segments} annotation(s) had no visible pixels (empty, or hidden by "
                "overlapping annotations) and were left out."
            )
        lines.append(f"Wrote '{self.data['annotations']}', masks in '{self.data['masks']}'.")
        if self.data_file is None:
            lines.append(
                f"'{self.split}' is not a split of the data file (train, val): pass the paths "
                "above as a split of the 'data' argument."
            )
        elif self.data_splits == ("train", "val"):
            lines.append(f"Train with: data='{self.data_file}'")
        else:
            missing = "val" if self.data_splits == ("train",) else "train"
            lines.append(
                f"'{self.data_file}' lists {self.split} only: convert the {missing} split into "
                "the same folder too, then train with data= that file."
            )
        return "\n".join(lines)


@dataclass(frozen=True)
class SemanticSummary:
    """`convert_to_semantic`'s output: PNGs written, the value of each class, pixels per value."""

    images: int
    out: Path
    classes_file: Path
    values: Mapping[int, str]  # PNG value -> class name
    void: int
    pixels: Mapping[int, int]  # PNG value -> pixel count (void included)

    def __str__(self) -> str:
        total = sum(self.pixels.values())
        lines = [
            f"Wrote {self.images} semantic PNGs to '{self.out}' and the classes file "
            f"'{self.classes_file}'.",
            f"  {'value':>6}  {'class':<24} {'pixels':>12} {'share':>8}",
        ]
        for value, name in (*self.values.items(), (self.void, "(void)")):
            count = self.pixels.get(value, 0)
            lines.append(f"  {value:>6}  {name:<24} {count:>12} {_percent(count, total):>8}")
        return "\n".join(lines)
