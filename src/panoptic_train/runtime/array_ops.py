"""The few array operations whose spelling differs between numpy and torch.

The panoptic merge in `runtime.postprocess` is written once against arrays: it uses the
operators, indexing and methods numpy and torch share (`a @ b`, `a[..., idx]`, `.sum(axis=)`,
`.argmax(axis=)`, `.cumsum(axis=)`), and these backends for the rest. So the same lines run on
torch tensors (validation, `predict`, the graph baked into an ONNX export) and on numpy arrays
(the exported-model runners, which must work without PyTorch). torch is imported only when a
torch tensor is given.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

Array = Any  # a numpy array or a torch tensor; the backends keep them apart


class ArrayOps(Protocol):
    """Creation on the device of a reference array, dtype changes and math numpy spells apart.

    bincount: per row b of (B, P) `indices` in [0, size), the int64 sums of `weights` (B, P,
    integers or bools) falling into each of the `size` bins: a (B, size) array.
    nonzero: the index arrays of the True entries, one per axis, in row-major order.
    put: in place, 1-D `array[indices] = values` (1-D indices; a repeated index gets any of its
    values).
    """

    def asarray(self, values: np.ndarray, like: Array) -> Array: ...

    def full(self, shape: Sequence[int], value: float, dtype: str, like: Array) -> Array: ...

    def astype(self, array: Array, dtype: str) -> Array: ...

    def where(self, condition: Array, a: Array | float, b: Array | float) -> Array: ...

    def lerp(self, start: Array, end: Array, weight: Array) -> Array: ...

    def minimum(self, a: Array, b: Array) -> Array: ...

    def maximum(self, a: Array, b: Array) -> Array: ...

    def amax(self, array: Array, axis: int) -> Array: ...

    def nonzero(self, array: Array) -> tuple[Array, ...]: ...

    def sort(self, array: Array, axis: int) -> Array: ...

    def put(self, array: Array, indices: Array, values: Array) -> None: ...

    def sigmoid(self, array: Array) -> Array: ...

    def softmax(self, array: Array, axis: int) -> Array: ...

    def take(self, array: Array, indices: Array, axis: int) -> Array: ...

    def take_along_axis(self, array: Array, indices: Array, axis: int) -> Array: ...

    def bincount(self, indices: Array, weights: Array, size: int) -> Array: ...

    def stack(self, arrays: Sequence[Array], axis: int) -> Array: ...

    def concat(self, arrays: Sequence[Array], axis: int) -> Array: ...


class NumpyOps:
    """ArrayOps for numpy arrays (dtype names are numpy's: "int64", "float32", ...)."""

    def asarray(self, values: np.ndarray, like: Array) -> Array:
        return np.asarray(values)

    def full(self, shape: Sequence[int], value: float, dtype: str, like: Array) -> Array:
        return np.full(tuple(shape), value, dtype=dtype)

    def astype(self, array: Array, dtype: str) -> Array:
        return array.astype(dtype, copy=False)

    def where(self, condition: Array, a: Array | float, b: Array | float) -> Array:
        return np.where(condition, a, b)

    def lerp(self, start: Array, end: Array, weight: Array) -> Array:
        return start + (end - start) * weight

    def minimum(self, a: Array, b: Array) -> Array:
        return np.minimum(a, b)

    def maximum(self, a: Array, b: Array) -> Array:
        return np.maximum(a, b)

    def amax(self, array: Array, axis: int) -> Array:
        return array.max(axis=axis)

    def nonzero(self, array: Array) -> tuple[Array, ...]:
        return np.nonzero(array)

    def sort(self, array: Array, axis: int) -> Array:
        return np.sort(array, axis=axis)

    def put(self, array: Array, indices: Array, values: Array) -> None:
        array[indices] = values

    def sigmoid(self, array: Array) -> Array:
        # exp of a positive argument only, so large logits neither overflow nor warn
        negative = np.exp(-np.abs(array))
        return np.where(array >= 0, 1.0, negative) / (1.0 + negative)

    def softmax(self, array: Array, axis: int) -> Array:
        exp = np.exp(array - array.max(axis=axis, keepdims=True))
        return exp / exp.sum(axis=axis, keepdims=True)

    def take(self, array: Array, indices: Array, axis: int) -> Array:
        return np.take(array, indices, axis=axis)

    def take_along_axis(self, array: Array, indices: Array, axis: int) -> Array:
        return np.take_along_axis(array, indices, axis=axis)

    def bincount(self, indices: Array, weights: Array, size: int) -> Array:
        offsets = np.arange(indices.shape[0])[:, None] * size
        counts = np.bincount((indices + offsets).ravel(), weights.ravel(), indices.shape[0] * size)
        return counts.astype(np.int64).reshape(indices.shape[0], size)

    def stack(self, arrays: Sequence[Array], axis: int) -> Array:
        return np.stack(arrays, axis=axis)

    def concat(self, arrays: Sequence[Array], axis: int) -> Array:
        return np.concatenate(arrays, axis=axis)


class TorchOps:
    """ArrayOps for torch tensors; new tensors go to the device of the reference tensor."""

    def __init__(self) -> None:
        import torch

        self._torch = torch

    def _dtype(self, name: str) -> Any:
        return getattr(self._torch, name)

    def asarray(self, values: np.ndarray, like: Array) -> Array:
        return self._torch.from_numpy(np.ascontiguousarray(values)).to(like.device)

    def full(self, shape: Sequence[int], value: float, dtype: str, like: Array) -> Array:
        return self._torch.full(tuple(shape), value, dtype=self._dtype(dtype), device=like.device)

    def astype(self, array: Array, dtype: str) -> Array:
        return array.to(self._dtype(dtype))

    def where(self, condition: Array, a: Array | float, b: Array | float) -> Array:
        return self._torch.where(condition, a, b)

    def lerp(self, start: Array, end: Array, weight: Array) -> Array:
        return self._torch.lerp(start, end, weight)  # one fused kernel

    def minimum(self, a: Array, b: Array) -> Array:
        return self._torch.minimum(a, b)

    def maximum(self, a: Array, b: Array) -> Array:
        return self._torch.maximum(a, b)

    def amax(self, array: Array, axis: int) -> Array:
        return array.amax(dim=axis)

    def nonzero(self, array: Array) -> tuple[Array, ...]:
        return array.nonzero(as_tuple=True)

    def sort(self, array: Array, axis: int) -> Array:
        return array.sort(dim=axis).values

    def put(self, array: Array, indices: Array, values: Array) -> None:
        # scatter_ rather than `array[indices] = values`: two orders of magnitude faster on CPU
        array.scatter_(0, indices, values)

    def sigmoid(self, array: Array) -> Array:
        return array.sigmoid()

    def softmax(self, array: Array, axis: int) -> Array:
        return array.softmax(dim=axis)

    def take(self, array: Array, indices: Array, axis: int) -> Array:
        if array.ndim == 1 or axis % array.ndim != array.ndim - 1:
            return array.index_select(axis, indices)
        # Along the last axis, gather with a broadcast index is ~7x faster on the CPU than
        # index_select or `array[..., indices]`.
        index = indices.expand(*array.shape[:-1], indices.shape[0])
        return array.gather(axis, index)

    def take_along_axis(self, array: Array, indices: Array, axis: int) -> Array:
        return array.gather(axis, indices)

    def bincount(self, indices: Array, weights: Array, size: int) -> Array:
        # scatter_add rather than torch.bincount: batched, and it exports to ONNX
        counts = self._torch.zeros(indices.shape[0], size, dtype=self._torch.int64)
        return counts.to(indices.device).scatter_add_(1, indices, weights.long())

    def stack(self, arrays: Sequence[Array], axis: int) -> Array:
        return self._torch.stack(list(arrays), dim=axis)

    def concat(self, arrays: Sequence[Array], axis: int) -> Array:
        return self._torch.cat(list(arrays), dim=axis)


def array_ops(array: Array) -> ArrayOps:
    """The backend for `array`: numpy for numpy arrays, torch for anything else (tensors)."""
    return NumpyOps() if isinstance(array, np.ndarray) else TorchOps()
