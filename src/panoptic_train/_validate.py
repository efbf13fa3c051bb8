"""Checks of values that several entry points accept or read from files; each error names the
value, where it came from and what to do.

Every dict a user passes (and every config read from a file) is a `StrictConfig`, validated by
`parse_config`: an unknown key, a missing one or a bad value is one `ConfigError` that lists each
problem on its own line, as `<where>=<value>: <what is wrong or valid>`, e.g.

    Invalid arguments:
      model_args['lrr']: unknown key (valid keys: [...]); did you mean 'lr'?
      steps=0: should be greater than or equal to 1

No torch here: the ONNX runner uses them too.
"""

from __future__ import annotations

import difflib
import json
import math
import types
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from panoptic_train._types import is_int
from panoptic_train.errors import ConfigError, WeightsError

Triple = tuple[float, float, float]

# Longer values are cut in messages: the location already says which one it is.
_MAX_VALUE_CHARS = 80


class StrictConfig(BaseModel):
    """Base of every user-facing config: unknown keys are errors, values are immutable once
    validated, and bad ones are a ConfigError however the config is built (`parse_config`, or a
    direct call such as `ServeConfig(max_batch=0)`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    if not TYPE_CHECKING:  # type checkers keep the signature pydantic derives from the fields

        def __init__(self, **values: Any) -> None:
            try:
                super().__init__(**values)
            except ValidationError as error:
                name = type(self).__name__
                raise config_error(type(self), error, "", f"{name}(...)") from None

        # Marks this __init__ as pydantic's own (as pydantic's RootModel does), so that nested
        # configs and `model_validate` are validated without calling it.
        __init__.__pydantic_base_init__ = True


ConfigT = TypeVar("ConfigT", bound=StrictConfig)


def parse_config(
    cls: type[ConfigT], value: Any, argument: str, source: str | None = None
) -> ConfigT:
    """`value` validated into `cls`: a dict, None (all defaults) or already a `cls`.

    argument: the name the value was passed as ("model_args"); every location in the message
        starts with it, as the user would index it (`model_args['lr']`). "" for the keyword
        arguments of a call, whose names then stand alone (`steps=0`).
    source: where the value was read from, when not from the call (e.g. "data file 'd.yaml'").
    """
    if isinstance(value, cls):
        return value
    try:
        return cls.model_validate({} if value is None else value)
    except ValidationError as error:
        raise config_error(cls, error, argument, source) from None


def config_error(
    cls: type[BaseModel], error: ValidationError, argument: str, source: str | None
) -> ConfigError:
    """One ConfigError for every problem pydantic found, a line each (see the module docstring);
    the messages pydantic gives for each member of a union share their location's line."""
    lines: dict[str, list[str]] = {}
    for detail in error.errors():
        path, holder, annotation = _user_path(cls, detail["loc"])
        where = _location(argument, path)
        kind, value = detail["type"], detail.get("input")
        if kind == "extra_forbidden":
            lines.setdefault(where, []).append(_unknown_key(str(path[-1]), holder))
            continue
        if kind == "missing":
            lines.setdefault(where, []).append("required key missing")
            continue
        if kind == "model_type":
            nested = _config_class(annotation)
            keys = sorted(nested.model_fields) if nested else []
            message = f"should be a dict (valid keys: {keys})"
        else:
            message = detail["msg"].removeprefix("Value error, ").removeprefix("Input ")
        if not isinstance(value, Mapping):  # else the message is about the dict as a whole
            where = f"{where}={_short_repr(value)}" if where else ""
        lines.setdefault(where, []).append(message)
    problems = [
        (f"{where}: " if where else "")
        + "; or ".join([first, *(m.removeprefix("should be ") for m in rest)])
        for where, (first, *rest) in lines.items()
    ]
    header = f"Invalid {source or argument or 'arguments'}:"
    return ConfigError("\n  ".join([header, *problems]))


def _user_path(
    cls: type[BaseModel], loc: tuple[int | str, ...]
) -> tuple[tuple[int | str, ...], type[BaseModel] | None, Any]:
    """Pydantic's error location as the user wrote it, without the member names pydantic adds
    inside unions (`num_queries.int`); with the config class holding the last key and the type
    annotation found there."""
    path: list[int | str] = []
    holder: type[BaseModel] | None = None
    annotation: Any = cls
    for part in loc:
        if get_origin(annotation) in (Union, types.UnionType):
            members = [m for m in get_args(annotation) if m is not type(None)]
            if len(members) > 1:  # `X | None` alone has no member name in the location
                annotation = next((m for m in members if getattr(m, "__name__", "") == part), None)
                continue
            annotation = members[0]
        path.append(part)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            holder = annotation
            field = annotation.model_fields.get(str(part))
            annotation = field.annotation if field else None
        else:  # an index of a list or tuple, a key of a dict: on to the item type
            holder = None
            items = [arg for arg in get_args(annotation) if arg is not Ellipsis]
            annotation = items[-1] if items else None
    return tuple(path), holder, annotation


def _location(argument: str, path: tuple[int | str, ...]) -> str:
    """`model_args['lr']`; without an argument name the first key stands bare: `steps`."""
    if not argument and path:
        argument, path = str(path[0]), path[1:]
    return argument + "".join(f"[{part!r}]" for part in path)


def _unknown_key(key: str, holder: type[BaseModel] | None) -> str:
    valid = sorted(holder.model_fields) if holder else []
    message = f"unknown key (valid keys: {valid})"
    close = difflib.get_close_matches(key, valid, n=1)
    return f"{message}; did you mean {close[0]!r}?" if close else message


def _config_class(annotation: Any) -> type[BaseModel] | None:
    """The config class an annotation such as `WandbArgs | None` holds, if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for member in get_args(annotation):
        found = _config_class(member)
        if found is not None:
            return found
    return None


def _short_repr(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _MAX_VALUE_CHARS else text[: _MAX_VALUE_CHARS - 3] + "..."


def read_config_file(path: Path, what: str, expected: str) -> Any:
    """The content of a YAML or JSON config file (JSON by its suffix). ConfigError, naming the
    file as `what` ("data file"), when it is missing (`expected` says what it should hold) or
    cannot be parsed."""
    if not path.is_file():
        raise ConfigError(f"The {what} '{path}' does not exist. {expected}")
    try:
        text = path.read_text(encoding="utf-8")
        return json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError, UnicodeDecodeError) as error:
        raise ConfigError(f"Cannot parse the {what} '{path}': {error}") from error


def positive_int(value: Any, name: str) -> int:
    """`value` if it is a positive integer (a bool is not one); ConfigError naming it otherwise."""
    if not is_int(value) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}.")
    return value


def one_of(value: Any, name: str, choices: Sequence[Any]) -> Any:
    """`value` if it is one of `choices`; ConfigError naming it and them otherwise."""
    if value not in choices:
        listed = [repr(choice) for choice in choices]
        valid = " or ".join([", ".join(listed[:-1]), listed[-1]] if len(listed) > 1 else listed)
        raise ConfigError(f"{name}={value!r} is not supported; use {valid}.")
    return value


def normalization(mean: Sequence[Any], std: Sequence[Any]) -> tuple[Triple, Triple]:
    """The per-channel `mean` and `std` inputs are normalised with, checked: three finite numbers
    each and a positive std (a zero std turns every pixel into inf, and the predictions into
    garbage without any error)."""
    checked = []
    for name, values in (("mean", mean), ("std", std)):
        try:
            triple = tuple(float(value) for value in values)
        except (TypeError, ValueError):
            triple = ()
        if len(triple) != 3 or not all(math.isfinite(value) for value in triple):
            raise ConfigError(
                f"normalize.{name} is {values!r}; it needs one finite number per RGB channel."
            )
        checked.append(triple)
    if min(checked[1]) <= 0:
        raise ConfigError(
            f"normalize.std is {list(checked[1])}; every channel needs a positive value (the "
            "ImageNet default is [0.229, 0.224, 0.225])."
        )
    return checked[0], checked[1]


def check_format_version(found: Any, expected: int, source: str, key: str) -> None:
    """WeightsError unless a file's version entry `key` is the integer `expected`, saying whether
    the entry was edited (not an integer), or the file is newer or older than this package."""
    if found == expected and is_int(found):
        return
    if not is_int(found):
        raise WeightsError(
            f"{source} has {key} {found!r} (a {type(found).__name__}), but panoptic_train "
            f"writes the integer {expected} there: the entry was edited. Set it back to "
            f"{expected}, or re-export the file."
        )
    if found > expected:
        raise WeightsError(
            f"{source} has {key} {found}: it was written by a newer panoptic_train, and this one "
            f"reads {key} {expected}. Upgrade panoptic_train to load it."
        )
    raise WeightsError(
        f"{source} has {key} {found}, an older format than the {expected} this panoptic_train "
        "reads. Load it with the panoptic_train version that wrote it, or re-export it."
    )
