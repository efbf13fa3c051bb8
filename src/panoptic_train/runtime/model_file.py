"""The exported-model file (`exported_*.pt`): everything `load_model` needs, as plain values.

The file is a dict of Python values and tensors, so it loads with `torch.load(weights_only=True)`
and loading a model never runs code from the file. Training checkpoints (`.ckpt`) carry the
same dict under `CHECKPOINT_MODEL_KEY`.

    format          "panoptic_train.eomt_panoptic"
    format_version  1
    model_name      registry name the network was built from, e.g. "dinov3/vits16-eomt"
    eomt_config     EoMTConfig.to_dict(): rebuilds the architecture
    state_dict      the network's weights and buffers
    classes         [{"id", "name", "isthing"}, ...] in class-index order (ClassMapping)
    image_size      [height, width] the input is resized and padded to
    normalize       {"mean": [r, g, b], "std": [r, g, b]}
    postprocess     {"threshold", "mask_threshold", "overlap_threshold"}
"""

from __future__ import annotations

import dataclasses
import pickle
import re
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from panoptic_train._io import atomic_torch_save
from panoptic_train._types import PathLike, is_int
from panoptic_train._validate import check_format_version, normalization
from panoptic_train.data.coco import ClassMapping
from panoptic_train.errors import ConfigError, WeightsError
from panoptic_train.models.dinov3 import PATCH_SIZE
from panoptic_train.models.eomt import EoMT, EoMTConfig
from panoptic_train.runtime.postprocess import PostprocessConfig

FORMAT = "panoptic_train.eomt_panoptic"
FORMAT_VERSION = 1
CHECKPOINT_MODEL_KEY = "model"
_KEYS = (
    "format",
    "format_version",
    "model_name",
    "eomt_config",
    "state_dict",
    "classes",
    "image_size",
    "normalize",
    "postprocess",
)


@dataclass(frozen=True)
class ExportedModel:
    """The validated content of an exported-model file."""

    model_name: str
    config: EoMTConfig
    state_dict: dict[str, Tensor]
    classes: ClassMapping
    image_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    postprocess: PostprocessConfig = dataclasses.field(default_factory=PostprocessConfig)

    @classmethod
    def from_network(
        cls,
        network: EoMT,
        *,
        model_name: str,
        classes: ClassMapping,
        mean: Sequence[float],
        std: Sequence[float],
        image_size: tuple[int, int] | None = None,
        postprocess: PostprocessConfig | None = None,
    ) -> ExportedModel:
        """Snapshot a network (the bare EoMT, not a DDP/compile wrapper) with its metadata.

        image_size defaults to the size in the network's config.
        """
        if classes.num_classes != network.config.num_classes:
            raise ConfigError(
                f"The network predicts {network.config.num_classes} classes but "
                f"{classes.num_classes} class names were given; pass the ClassMapping the network "
                "was trained with."
            )
        state = {k: v.detach().to("cpu", copy=True) for k, v in network.state_dict().items()}
        checked_mean, checked_std = normalization(mean, std)
        return cls(
            model_name=model_name,
            config=network.config,
            state_dict=state,
            classes=classes,
            image_size=image_size or network.config.image_size,
            mean=checked_mean,
            std=checked_std,
            postprocess=postprocess or PostprocessConfig(),
        )

    def to_dict(self) -> dict[str, Any]:
        """The file content: plain Python values and tensors only."""
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "model_name": self.model_name,
            "eomt_config": self.config.to_dict(),
            "state_dict": self.state_dict,
            "classes": self.classes.to_list(),
            "image_size": list(self.image_size),
            "normalize": {"mean": list(self.mean), "std": list(self.std)},
            "postprocess": dataclasses.asdict(self.postprocess),
        }

    def save(self, path: PathLike) -> None:
        """Write the file atomically (a crash never leaves a truncated model)."""
        atomic_torch_save(self.to_dict(), path)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str) -> ExportedModel:
        """Validate a loaded dict; `source` names where it came from for error messages.

        Beyond the entries' types: the normalisation (finite, positive std), the input size,
        the class list against the network's class count, and every weight's name, shape and
        finiteness against the architecture `eomt_config` describes, so that an edited or
        damaged file fails here, naming the entry, instead of predicting garbage.
        """
        missing = [key for key in _KEYS if key not in data]
        if missing:
            raise WeightsError(f"{source} is missing the entries {missing} of an exported model.")
        if data["format"] != FORMAT:
            raise WeightsError(
                f"{source} has format {data['format']!r}; expected {FORMAT!r} (a file written by "
                "panoptic_train's training or `ExportedModel.save`)."
            )
        check_format_version(data["format_version"], FORMAT_VERSION, source, "format_version")
        try:
            normalize = data["normalize"]
            mean, std = normalization(normalize["mean"], normalize["std"])
            exported = cls(
                model_name=str(data["model_name"]),
                config=EoMTConfig.from_dict(dict(data["eomt_config"])),
                state_dict=dict(data["state_dict"]),
                classes=ClassMapping.from_list(data["classes"]),
                image_size=checked_image_size(data["image_size"]),
                mean=mean,
                std=std,
                postprocess=PostprocessConfig(**data["postprocess"]),
            )
        except (ConfigError, KeyError, TypeError, ValueError) as error:
            raise WeightsError(f"{source} holds an invalid exported model: {error}") from error
        exported._check_weights(source)
        return exported

    def _check_weights(self, source: str) -> None:
        """The class list and the weights against the architecture of `config` (built on the
        meta device: shapes only, no memory, no initialisation)."""
        from panoptic_train.models.registry import build_eomt

        if self.classes.num_classes != self.config.num_classes:
            raise WeightsError(
                f"{source} lists {self.classes.num_classes} classes in 'classes', but its network "
                f"predicts {self.config.num_classes} (eomt_config.num_classes). The file was "
                "edited or damaged; re-export it from its checkpoint."
            )
        with torch.device("meta"):
            expected = build_eomt(self.config).state_dict()
        missing = sorted(set(expected) - set(self.state_dict))
        unexpected = sorted(set(self.state_dict) - set(expected))
        if missing or unexpected:
            raise WeightsError(
                f"The weights in {source} do not fit their architecture: missing {missing[:5]}, "
                f"unexpected {unexpected[:5]} (first 5 of {len(missing)} / {len(unexpected)}). "
                "The file was edited or damaged; re-export it from its checkpoint."
            )
        for key, weight in self.state_dict.items():
            if not isinstance(weight, Tensor):
                raise WeightsError(
                    f"The weight {key!r} in {source} is a {type(weight).__name__}, not a "
                    "tensor. The file was edited or damaged; re-export it from its checkpoint."
                )
            found, wanted = tuple(weight.shape), tuple(expected[key].shape)
            if found != wanted:
                raise WeightsError(
                    f"The weight {key!r} in {source} has shape {found}, but the architecture its "
                    f"eomt_config describes ({self.config.backbone}, {self.config.num_classes} "
                    f"classes, {self.config.num_queries} queries) needs {wanted}. The file was "
                    "edited or damaged; re-export it from its checkpoint."
                )
            if weight.is_floating_point() and not bool(torch.isfinite(weight).all()):
                raise WeightsError(
                    f"The weight {key!r} in {source} holds NaN or infinite values, so every "
                    "prediction would be garbage. Re-export the model from a checkpoint of "
                    "the run taken before its loss diverged."
                )

    def build_network(self) -> EoMT:
        """Rebuild the architecture and load the weights (checked by `from_dict` for files)."""
        from panoptic_train.models.registry import build_eomt

        network = build_eomt(self.config)
        network.load_state_dict(self.state_dict)
        return network.eval()


def checked_image_size(values: Sequence[Any]) -> tuple[int, int]:
    """`image_size` of a file: two positive multiples of the patch size (what the network takes)."""
    size = tuple(values)
    if len(size) != 2 or not all(
        is_int(side) and side > 0 and side % PATCH_SIZE == 0 for side in size
    ):
        raise ConfigError(
            f"image_size is {list(size)!r}; it needs (height, width), positive multiples of "
            f"{PATCH_SIZE}."
        )
    return size


def read_model_dict(path: PathLike) -> dict[str, Any]:
    """Load a file with `torch.load(weights_only=True)` and return its exported-model dict.

    Accepts an exported-model file or a training checkpoint holding one under
    CHECKPOINT_MODEL_KEY; anything else is a WeightsError saying what was found.
    """
    verify_checksums(path)
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        found = re.search(r"GLOBAL (\S+)", str(error))
        if found is None:  # not a pickle of allowed operations at all: some other file
            raise _not_pytorch(path, error) from error
        raise WeightsError(
            f"'{path}' cannot be loaded safely: it contains the Python object {found.group(1)}, "
            "not only plain values and tensors. Only exported models (exported_*.pt) and "
            "training checkpoints (.ckpt) of panoptic_train are accepted; panoptic_train never "
            "runs code from a weights file."
        ) from error
    except Exception as error:  # torch.load raises many types for non-PyTorch bytes
        raise _not_pytorch(path, error) from error
    if isinstance(content, Mapping) and "format" in content:
        return dict(content)
    nested = content.get(CHECKPOINT_MODEL_KEY) if isinstance(content, Mapping) else None
    if isinstance(nested, Mapping) and "format" in nested:
        return dict(nested)
    raise WeightsError(
        f"'{path}' holds {_describe(content)}, not a panoptic_train model. Expected an exported "
        f"model (a dict with 'format': {FORMAT!r}, as training writes to "
        f"exported_models/exported_*.pt) or a training checkpoint (.ckpt) holding one under "
        f"{CHECKPOINT_MODEL_KEY!r}. To start from backbone weights, train with "
        "model_args={'backbone_weights': ...} instead."
    )


def verify_checksums(path: PathLike) -> None:
    """Check the CRC-32 that a `torch.save` zip file stores for each entry: torch.load does not,
    so a flipped bit in the weights would otherwise load silently. Files that are no zip
    (the legacy format, other files) are left to torch.load's own errors."""
    if not zipfile.is_zipfile(path):
        return
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise WeightsError(
            f"'{path}' is damaged: its zip structure cannot be read ({error}). The file is "
            "incomplete or corrupt; copy it again or re-export it."
        ) from error
    if damaged is not None:
        raise WeightsError(
            f"'{path}' is damaged: the bytes of its entry '{damaged}' do not match the checksum "
            "stored with them (a flipped bit or an incomplete copy). Copy the file again or "
            "re-export it."
        )


def _not_pytorch(path: PathLike, error: Exception) -> WeightsError:
    return WeightsError(
        f"'{path}' is not a PyTorch file (torch.load failed with {type(error).__name__}). "
        "Expected an "
        "exported model (exported_*.pt) or a training checkpoint (.ckpt) of panoptic_train."
    )


def _describe(content: Any) -> str:
    if isinstance(content, Mapping):
        keys = [str(key) for key in list(content)[:8]]
        more = ", ..." if len(content) > 8 else ""
        if content and all(isinstance(value, Tensor) for value in content.values()):
            return f"a bare state dict of {len(content)} tensors (keys {', '.join(keys)}{more})"
        return f"a dict with keys {', '.join(keys)}{more}"
    if isinstance(content, Tensor):
        return f"a single tensor of shape {tuple(content.shape)}"
    return f"a {type(content).__name__}"
