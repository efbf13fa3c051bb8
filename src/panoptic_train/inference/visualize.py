"""Draw a panoptic result over its image: one colour per segment, borders and class names."""

from __future__ import annotations

import colorsys
from collections.abc import Mapping
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage
from torch import Tensor

from panoptic_train.runtime.inputs import ImageInput, to_uint8_image

_GOLDEN_RATIO = 0.618033988749895


def visualize(
    image: ImageInput,
    result: Mapping[str, Any],
    classes: Mapping[int, str] | None = None,
    *,
    alpha: float = 0.6,
    borders: bool = True,
    labels: bool = True,
) -> Image.Image:
    """An RGB overlay of `result` (as `predict` returns it) on `image`.

    classes: category id -> name (e.g. `model.classes`) for the labels; without it the category
        ids are written. Void pixels keep the image's colours. The same category always gets
        the same hue and its instances differ in brightness, so classes read consistently across
        images.
    """
    rgb = to_uint8_image(image).permute(1, 2, 0).numpy()
    panoptic = _to_numpy(result["masks"]).astype(np.int64)
    if panoptic.shape != (*rgb.shape[:2], 2):
        raise ValueError(
            f"The result's masks have shape {panoptic.shape} but the image is "
            f"{rgb.shape[0]}x{rgb.shape[1]}: pass the image the result was predicted from."
        )
    category_map, segment_map = panoptic[..., 0], panoptic[..., 1]
    segment_ids, index_map = np.unique(segment_map, return_inverse=True)
    index_map = index_map.reshape(segment_map.shape)
    # segment -> category, from any pixel of it (segments are single-class by construction)
    categories = np.zeros(segment_ids.size, dtype=np.int64)
    categories[index_map.ravel()] = category_map.ravel()

    colors = _segment_colors(categories, void=segment_ids < 0)
    is_void = segment_map < 0
    blended = rgb * (1 - alpha) + colors[index_map] * alpha
    out = np.where(is_void[..., None], rgb, blended).round().astype(np.uint8)

    thickness = max(1, round(min(segment_map.shape) / 400))
    edges = _boundaries(segment_map, thickness)
    if borders:
        out[edges] = 255
    overlay = Image.fromarray(out)
    if labels:
        _draw_labels(overlay, index_map, segment_ids, categories, edges | is_void, classes)
    return overlay


def instance_color(category_id: int, rank: int = 0) -> tuple[float, float, float]:
    """RGB (0..255) of a category's `rank`-th instance in overlays (segment order).

    The hue follows the category id, so a class has the same colour in every image (legends
    show rank 0, the brightest); the brightness tells its instances apart.
    """
    hue = (category_id * _GOLDEN_RATIO) % 1.0
    value = 0.95 - 0.5 * ((rank * _GOLDEN_RATIO) % 1.0)
    red, green, blue = colorsys.hsv_to_rgb(hue, 0.75, value)
    return red * 255, green * 255, blue * 255


def _to_numpy(value: Any) -> np.ndarray:
    if isinstance(value, Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def _segment_colors(categories: np.ndarray, void: np.ndarray) -> np.ndarray:
    """(S, 3) float colours: hue from the category id, brightness from the instance rank."""
    colors = np.zeros((categories.size, 3))
    seen: dict[int, int] = {}
    for index, category in enumerate(categories.tolist()):
        if void[index]:
            continue
        rank = seen.get(category, 0)
        seen[category] = rank + 1
        colors[index] = instance_color(category, rank)
    return colors


def _boundaries(segment_map: np.ndarray, thickness: int) -> np.ndarray:
    """Pixels whose right or lower neighbour belongs to another segment (or void), thickened."""
    edges = np.zeros(segment_map.shape, dtype=bool)
    horizontal = segment_map[:, 1:] != segment_map[:, :-1]
    vertical = segment_map[1:, :] != segment_map[:-1, :]
    edges[:, :-1] |= horizontal
    edges[:-1, :] |= vertical
    edges &= segment_map >= 0  # draw on the segments' side, never into void
    if thickness > 1:
        edges = ndimage.binary_dilation(edges, iterations=thickness - 1) & (segment_map >= 0)
    return edges


def _draw_labels(
    overlay: Image.Image,
    index_map: np.ndarray,
    segment_ids: np.ndarray,
    categories: np.ndarray,
    blocked: np.ndarray,
    classes: Mapping[int, str] | None,
) -> None:
    """Write each segment's class name at its most interior pixel."""
    depth = ndimage.distance_transform_edt(~blocked)
    flat_index, flat_depth = index_map.ravel(), depth.ravel()
    # per segment, the pixel of greatest depth: sort by (segment, -depth), take each first
    order = np.lexsort((-flat_depth, flat_index))
    segments, first = np.unique(flat_index[order], return_index=True)
    width, height = overlay.size
    font = ImageFont.load_default(size=max(10, round(min(width, height) / 40)))
    draw = ImageDraw.Draw(overlay)
    for segment, pixel in zip(segments.tolist(), order[first].tolist(), strict=True):
        if segment_ids[segment] < 0:
            continue
        category = int(categories[segment])
        text = classes.get(category, str(category)) if classes is not None else str(category)
        y, x = divmod(pixel, width)
        # shift the label inside the image when its segment touches the border
        left, top, right, bottom = draw.textbbox((x, y), text, font, "mm", stroke_width=2)
        x += max(0, -left) - max(0, right - width)
        y += max(0, -top) - max(0, bottom - height)
        draw.text(
            (x, y), text, fill="white", font=font, anchor="mm", stroke_width=2, stroke_fill="black"
        )
