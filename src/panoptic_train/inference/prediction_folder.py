"""The output folder of `predict_files` (`panoptic-train predict`), kept consistent across runs.

    OUT/panoptic/<stem>.png         COCO panoptic PNG of each image
    OUT/overlays/<stem>.png         its overlay, when asked for
    OUT/predictions.json            COCO panoptic JSON of every image in the folder
    OUT/predictions.partial.jsonl   while a run is under way (or after it was killed): the run's
                                    settings, then one JSON line per image whose files are done
    OUT/predictions.partial.<r>.jsonl  the same lines of rank r >= 1 of a job of several
                                    processes (no settings line: rank 0's file has it)

Every file is written atomically, so a PNG is complete or absent, and an image's line is
appended only once its files are in place: an image is done when its line (or its entry in
`predictions.json`) names it and its files exist. A folder that holds anything is refused
unless the run overwrites it (this tool's files are removed first) or resumes it (done images
are skipped, with the same model and thresholds only), so one folder never mixes two runs.

In a torch.distributed job of several processes (torchrun, srun), one folder is shared by all:
rank 0 alone checks and prepares it, each rank predicts its share of the images (`share`) and
appends to its own progress file (one writer per file, also on network file systems), and at
the end rank 0 collects every rank's lines into predictions.json.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from panoptic_train._distributed import Ranks
from panoptic_train._io import (
    atomic_open,
    atomic_write_json,
    ensure_output_dir,
    output_error,
    remove_stale_temp_files,
)
from panoptic_train._types import PathLike
from panoptic_train.errors import ConfigError

PREDICTIONS_JSON = "predictions.json"
PROGRESS_FILE = "predictions.partial.jsonl"
_RANK_PROGRESS_FILES = "predictions.partial.*.jsonl"
MASKS_DIR = "panoptic"
OVERLAYS_DIR = "overlays"
_OWNED_FILES = (PREDICTIONS_JSON, PROGRESS_FILE)
_OWNED_DIRS = (MASKS_DIR, OVERLAYS_DIR)
# Key of the run's settings in predictions.json's COCO "info" object.
_SETTINGS_KEY = "panoptic_train_predict"
_MAX_LISTED_ENTRIES = 5

# One image's entries: COCO `images` ({"id", "file_name", "height", "width"}) and `annotations`
# ({"image_id", "file_name" of the PNG, "segments_info"}).
Record = tuple[dict[str, Any], dict[str, Any]]


class PredictionFolder:
    """An output folder checked and prepared for one run; create it with `open`."""

    def __init__(
        self, root: Path, done: dict[str, Record], settings: Any, ranks: Ranks | None = None
    ) -> None:
        self.root = root
        self._done = done  # PNG file name -> record
        self._previous_settings = settings  # of the resumed run; None for a new run
        self._ranks = ranks
        self._settings: dict[str, Any] | None = None
        self._progress: IO[str] | None = None

    @classmethod
    def open(
        cls, out: PathLike, *, overwrite: bool = False, resume: bool = False
    ) -> PredictionFolder:
        """Check that `out` can be written and decide what happens to what it holds: refused
        if it holds anything, unless `overwrite` (this tool's files there are removed; others
        are left alone) or `resume` (what a previous run completed there is kept).

        In a torch.distributed job of several processes every rank calls it: rank 0 does the
        checks, and its errors are raised on every rank."""
        if overwrite and resume:
            raise ConfigError(
                "overwrite and resume contradict each other: resuming keeps the predictions in "
                "the output folder, overwriting removes them. Pass only one of them."
            )
        ranks = Ranks.current()

        def prepare() -> Path:
            root = ensure_output_dir(out)
            if overwrite:
                for name in _OWNED_DIRS:
                    shutil.rmtree(root / name, ignore_errors=True)
                for path in _owned_files(root):
                    path.unlink(missing_ok=True)
            elif not resume and any(root.iterdir()):
                raise ConfigError(_not_empty(root))
            remove_stale_temp_files(root, frozenset(_OWNED_FILES))
            for name in _OWNED_DIRS:
                remove_stale_temp_files(root / name)
            return root

        root = prepare() if ranks is None else ranks.on_rank_zero(prepare)
        if not resume:
            return cls(root, {}, None, ranks)
        settings, done = _read_previous_run(root)
        return cls(root, done, settings, ranks)

    def mask_path(self, image: Path) -> Path:
        return self.root / MASKS_DIR / f"{image.stem}.png"

    def overlay_path(self, image: Path) -> Path:
        return self.root / OVERLAYS_DIR / f"{image.stem}.png"

    def share(self, images: Sequence[Path], batch_size: int) -> list[Path]:
        """The images this process predicts: all of them, or in a job of several processes
        this rank's runs of `batch_size` images (so its batches are a single process's)."""
        return list(images) if self._ranks is None else self._ranks.share(images, batch_size)

    def start(self, settings: Mapping[str, Any]) -> None:
        """Begin writing: a resumed run must have the previous run's `settings`, else mixing
        two models' or thresholds' results in one folder is refused."""
        stored: dict[str, Any] = json.loads(json.dumps(settings))  # as read back from the file
        if self._previous_settings is not None and self._previous_settings != stored:
            changed = sorted(
                key
                for key in set(stored) | set(self._previous_settings)
                if stored.get(key) != self._previous_settings.get(key)
            )
            raise ConfigError(
                f"Cannot resume the predictions in '{self.root}': the run there used other "
                f"settings ({', '.join(changed)} differ: another model or other thresholds). "
                "Resume with the same model and thresholds, pass --overwrite to replace those "
                "predictions, or choose another --out."
            )
        rank = 0 if self._ranks is None else self._ranks.rank
        path = self.root / (PROGRESS_FILE if rank == 0 else f"predictions.partial.{rank}.jsonl")
        if self._ranks is not None:
            self._ranks.barrier()  # every rank has read what the previous run left
        if rank == 0:
            # One file with everything done so far; then the other ranks' files can go.
            with atomic_open(path, "w") as handle:
                for line in ({"settings": stored}, *map(_progress_line, self._done.values())):
                    handle.write(json.dumps(line) + "\n")
            for stale in self.root.glob(_RANK_PROGRESS_FILES):
                stale.unlink(missing_ok=True)
        if self._ranks is not None:
            self._ranks.barrier()
        try:
            self._progress = path.open("a" if rank == 0 else "w", encoding="utf-8")
        except OSError as error:
            raise output_error(path, error) from error
        self._settings = stored

    def is_done(self, image: Path, image_id: Any, overlay: bool) -> bool:
        """Whether a previous run already wrote `image` completely, under the same id."""
        record = self._done.get(self.mask_path(image).name)
        return (
            record is not None
            and record[0]["file_name"] == image.name
            and record[0]["id"] == image_id
            and self.mask_path(image).is_file()
            and (not overlay or self.overlay_path(image).is_file())
        )

    def add(self, record: Record) -> None:
        """Note an image whose files are written (the progress line makes it resumable)."""
        assert self._progress is not None, "start() first"
        self._done[record[1]["file_name"]] = record
        try:
            self._progress.write(json.dumps(_progress_line(record)) + "\n")
            self._progress.flush()
        except OSError as error:
            raise output_error(self.root / PROGRESS_FILE, error) from error

    def finish(self, categories: list[dict[str, Any]], images: Sequence[Path]) -> Path:
        """Write predictions.json with every image of the folder (this run's `images` first, in
        their order: in a job, all ranks' images) and drop the progress files; returns the
        JSON's path. In a job every rank calls it; rank 0 writes once all ranks are done."""
        self.close()
        if self._ranks is None:
            return self._write_predictions(categories, images)
        self._ranks.barrier()  # every rank's lines are in its progress file

        def collect_and_write() -> Path:
            _, self._done = _read_previous_run(self.root)
            return self._write_predictions(categories, images)

        return self._ranks.on_rank_zero(collect_and_write)

    def _write_predictions(self, categories: list[dict[str, Any]], images: Sequence[Path]) -> Path:
        first = [self.mask_path(image).name for image in images]
        order = [name for name in first if name in self._done]
        order += sorted(set(self._done) - set(order))
        records = [self._done[name] for name in order]
        path = self.root / PREDICTIONS_JSON
        atomic_write_json(
            {
                "info": {"description": "panoptic_train predict", _SETTINGS_KEY: self._settings},
                "images": [image for image, _ in records],
                "annotations": [annotation for _, annotation in records],
                "categories": categories,
            },
            path,
        )
        for progress in _progress_files(self.root):
            progress.unlink(missing_ok=True)
        return path

    def close(self) -> None:
        """Close this process's progress file (an interrupted run leaves it for `resume`)."""
        if self._progress is not None:
            self._progress.close()
            self._progress = None


def _progress_files(root: Path) -> list[Path]:
    """Rank 0's (or the single process's) progress file first, then the other ranks'."""
    return [root / PROGRESS_FILE, *sorted(root.glob(_RANK_PROGRESS_FILES))]


def _owned_files(root: Path) -> list[Path]:
    return [root / PREDICTIONS_JSON, *_progress_files(root)]


def _progress_line(record: Record) -> dict[str, Any]:
    return {"image": record[0], "annotation": record[1]}


def _not_empty(root: Path) -> str:
    entries = sorted(entry.name for entry in root.iterdir())
    listing = ", ".join(entries[:_MAX_LISTED_ENTRIES]) + (
        ", ..." if len(entries) > _MAX_LISTED_ENTRIES else ""
    )
    return (
        f"The output folder '{root}' is not empty ({listing}). Pass --overwrite (overwrite=True) "
        "to replace the predictions there, --resume (resume=True) to complete them, or choose "
        "another --out."
    )


def _read_previous_run(root: Path) -> tuple[Any, dict[str, Record]]:
    """The settings and the done images of the run(s) that wrote `root`: predictions.json of a
    finished run, then the progress files of an interrupted one (whose last lines may be cut
    short by the kill: unreadable lines are skipped)."""
    settings: Any = None
    done: dict[str, Record] = {}
    found_any = False
    predictions = root / PREDICTIONS_JSON
    if predictions.is_file():
        found_any = True
        content = _read_json(predictions)
        info = content.get("info") if isinstance(content, dict) else None
        settings = info.get(_SETTINGS_KEY) if isinstance(info, dict) else None
        images = content.get("images", []) if isinstance(content, dict) else []
        annotations = content.get("annotations", []) if isinstance(content, dict) else []
        by_id = {image.get("id"): image for image in images if isinstance(image, dict)}
        for annotation in annotations:
            image = by_id.get(annotation.get("image_id")) if isinstance(annotation, dict) else None
            if image is not None and isinstance(annotation.get("file_name"), str):
                done[annotation["file_name"]] = (image, annotation)
    for progress in _progress_files(root):
        if not progress.is_file():
            continue
        found_any = True
        for text in progress.read_text(encoding="utf-8").splitlines():
            try:
                line = json.loads(text)
            except json.JSONDecodeError:
                continue
            if not isinstance(line, dict):
                continue
            if "settings" in line:
                settings = line["settings"]
            elif isinstance(line.get("image"), dict) and isinstance(line.get("annotation"), dict):
                done[line["annotation"]["file_name"]] = (line["image"], line["annotation"])
    if found_any and settings is None:
        raise ConfigError(
            f"Cannot resume the predictions in '{root}': they were not written by panoptic_train "
            "predict (no settings recorded), so what they hold cannot be checked. Pass "
            "--overwrite to replace them, or choose another --out."
        )
    return settings, done


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConfigError(
            f"Cannot resume the predictions in '{path.parent}': '{path}' is unreadable "
            f"({error}). Pass --overwrite to replace them, or choose another --out."
        ) from error
