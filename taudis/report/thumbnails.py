"""Thumbnails of pool images with their predicted masks and boxes drawn on, for the HTML reports.

Masks are pasted straight at thumbnail resolution (the box scaled to the thumbnail), so a large
pool image costs one resize, not a full-resolution paste per instance. Drawing is numpy + Pillow.
"""

from __future__ import annotations

import colorsys
import io
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from taudis.data.instances import iter_shards
from taudis.data.masks import binary_mask

THUMB_SIZE = 256
# Overlay opacity of a mask: chosen instances stand out a little more than the other predictions.
MASK_ALPHA = 0.45
CHOSEN_MASK_ALPHA = 0.6
# Chosen instances get a thick box in one highlight colour; other predictions a thin box in their class colour.
CHOSEN_COLOUR = (255, 221, 0)
CHOSEN_BOX_WIDTH = 3
OTHER_BOX_WIDTH = 1
# Predictions that are not chosen are drawn only from this score up, so low-score clutter hides nothing.
MIN_SCORE = 0.5
_BACKGROUND = (255, 255, 255)
_PLACEHOLDER = (200, 200, 200)


# First colours by class index: matplotlib's tab10 without its olive (too close to the chosen-instance
# yellow), then three dark ones; classes beyond these walk the hue circle.
_CLASS_PALETTE: tuple[tuple[int, int, int], ...] = (
    (31, 119, 180),
    (214, 39, 40),
    (44, 160, 44),
    (148, 103, 189),
    (255, 127, 14),
    (23, 190, 207),
    (227, 119, 194),
    (140, 86, 75),
    (127, 127, 127),
    (0, 0, 128),
    (0, 110, 110),
    (128, 0, 0),
)


def class_colour(class_index: int) -> tuple[int, int, int]:
    """A deterministic RGB colour per class: a fixed palette, then golden-ratio hue steps.

    No class colour is near the yellow of ``CHOSEN_COLOUR``, so chosen instances stay distinct.
    """
    if 0 <= class_index < len(_CLASS_PALETTE):
        return _CLASS_PALETTE[class_index]
    hue = (0.6 + class_index * 0.618033988749895) % 1.0
    if 0.08 < hue < 0.26:  # too close to CHOSEN_COLOUR's yellow: move on to green
        hue = (hue + 0.18) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 0.9)
    return round(r * 255), round(g * 255), round(b * 255)


@dataclass
class ImagePredictions:
    """The predicted instances of one image, copied out of the instance table."""

    image_id: int
    height: int
    width: int
    instance_index: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    classes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    mask_probs: np.ndarray = field(default_factory=lambda: np.zeros((0, 28, 28), np.float32))


def collect_predictions(
    instances_dir: str | os.PathLike[str], image_ids: Iterable[int]
) -> tuple[dict[int, ImagePredictions], list[str]]:
    """The predictions of the given images, streaming over the shards under ``instances_dir``.

    Only the rows of the wanted images are copied out of the memory-mapped columns.

    Returns:
        (predictions by image id for every wanted image found in a shard, the shards' class names).
    """
    wanted = np.array(sorted(set(int(i) for i in image_ids)), dtype=np.int64)
    found: dict[int, ImagePredictions] = {}
    class_names: list[str] = []
    for shard in iter_shards(instances_dir):
        class_names = shard.class_names
        here = np.isin(np.asarray(shard.image_ids), wanted)
        if not here.any():
            continue
        sizes = np.asarray(shard.image_sizes)
        for row in np.flatnonzero(here):
            image_id = int(shard.image_ids[row])
            found[image_id] = ImagePredictions(image_id, int(sizes[row, 0]), int(sizes[row, 1]))
        rows = np.flatnonzero(np.isin(np.asarray(shard.instance_image), wanted))
        if rows.size == 0:
            continue
        owners = np.asarray(shard.instance_image[rows])
        # The score column is computed for these rows only: InstanceShard.scores reads every row.
        scores = np.asarray(shard.class_probs[rows, np.asarray(shard.classes[rows])], dtype=np.float32)
        for image_id in np.unique(owners):
            mine = rows[owners == image_id]
            pred = found[int(image_id)]
            pred.instance_index = np.asarray(shard.instance_index[mine])
            pred.classes = np.asarray(shard.classes[mine])
            pred.scores = scores[owners == image_id]
            pred.boxes = np.asarray(shard.boxes[mine], dtype=np.float32)
            pred.mask_probs = np.asarray(shard.mask_probs[mine], dtype=np.float32)
    return found, class_names


def load_display_image(path: str | os.PathLike[str]) -> np.ndarray:
    """An image file as 8-bit RGB for display, whatever its mode.

    8-bit modes convert directly; transparency is composited onto white; 16-bit and float images
    are stretched between their 0.5th and 99.5th percentiles (their raw range is often a small part
    of 0-65535).

    Returns:
        (H, W, 3) uint8.
    """
    with Image.open(path) as img:
        img.load()
        if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
            values = np.asarray(img, dtype=np.float64)
            low, high = np.percentile(values, [0.5, 99.5])
            scaled = (values - low) / max(high - low, 1e-9)
            grey = (scaled.clip(0, 1) * 255).round().astype(np.uint8)
            return np.repeat(grey[:, :, None], 3, axis=2)
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            rgba = img.convert("RGBA")
            canvas = Image.new("RGBA", rgba.size, (*_BACKGROUND, 255))
            return np.asarray(Image.alpha_composite(canvas, rgba).convert("RGB"))
        return np.asarray(img.convert("RGB"))


def placeholder_image(height: int, width: int) -> np.ndarray:
    """A plain grey (H, W, 3) image standing in for a file that could not be read."""
    return np.full((height, width, 3), _PLACEHOLDER, dtype=np.uint8)


def thumbnail_size(height: int, width: int, size: int = THUMB_SIZE) -> tuple[int, int]:
    """(height, width) with the longer side ``size`` (small images are enlarged too, to be visible)."""
    scale = size / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def draw_predictions(
    image: np.ndarray,
    predictions: ImagePredictions,
    chosen: Sequence[int] | set[int] = (),
    *,
    size: int = THUMB_SIZE,
    min_score: float = MIN_SCORE,
) -> tuple[Image.Image, int]:
    """A thumbnail of ``image`` with its predicted masks and boxes drawn on.

    The image is first resized to ``predictions``' (height, width) if it differs (boxes are in
    those pixels), then to the thumbnail. Each drawn instance's mask is blended in its class
    colour; other predictions get a thin box in their class colour, chosen instances (their
    instance indices in ``chosen``) a denser mask and a thick highlight box, drawn last so they
    are on top. Predictions not chosen and scored below ``min_score`` are not drawn.

    Returns:
        (RGB thumbnail, number of predictions left out for their low score).
    """
    thumb_h, thumb_w = thumbnail_size(predictions.height, predictions.width, size)
    pil = Image.fromarray(image)
    if pil.size != (predictions.width, predictions.height):
        pil = pil.resize((predictions.width, predictions.height), Image.Resampling.BILINEAR)
    canvas = np.asarray(pil.resize((thumb_w, thumb_h), Image.Resampling.LANCZOS), dtype=np.float32).copy()
    scale = np.array([thumb_w / predictions.width, thumb_h / predictions.height] * 2, dtype=np.float32)
    chosen_set = {int(c) for c in chosen}
    is_chosen = np.array([int(i) in chosen_set for i in predictions.instance_index], dtype=bool)
    drawn = is_chosen | (predictions.scores >= min_score)
    # Other predictions first, chosen ones last, so a chosen instance is never hidden.
    order = [*np.flatnonzero(drawn & ~is_chosen), *np.flatnonzero(is_chosen)]
    boxes = []
    for row in order:
        box = predictions.boxes[row] * scale
        mask = binary_mask(predictions.mask_probs[row], box, thumb_h, thumb_w)
        alpha = CHOSEN_MASK_ALPHA if is_chosen[row] else MASK_ALPHA
        colour = class_colour(int(predictions.classes[row]))
        canvas[mask] = canvas[mask] * (1 - alpha) + np.array(colour, dtype=np.float32) * alpha
        boxes.append((box, bool(is_chosen[row]), colour))
    out = Image.fromarray(canvas.round().clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(out)
    for box, chosen_here, colour in boxes:
        x0, y0, x1, y1 = (float(v) for v in box)
        if chosen_here:
            draw.rectangle((x0, y0, x1, y1), outline=CHOSEN_COLOUR, width=CHOSEN_BOX_WIDTH)
        else:
            draw.rectangle((x0, y0, x1, y1), outline=colour, width=OTHER_BOX_WIDTH)
    return out, int((~drawn).sum())


def encode_image(image: Image.Image, fmt: str = "JPEG", quality: int = 85) -> bytes:
    """Compressed image bytes: JPEG (smallest for photos) or PNG (lossless)."""
    buffer = io.BytesIO()
    if fmt.upper() in ("JPEG", "JPG"):
        image.convert("RGB").save(buffer, format="JPEG", quality=quality, optimize=True)
    else:
        image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def render_thumbnail(
    image_path: str | os.PathLike[str] | None,
    predictions: ImagePredictions,
    chosen: Sequence[int] | set[int] = (),
    *,
    size: int = THUMB_SIZE,
    min_score: float = MIN_SCORE,
) -> tuple[Image.Image, list[str]]:
    """Load (or stand in for) an image and draw its predictions (see :func:`draw_predictions`).

    A missing or unreadable file does not stop the report: the thumbnail is a grey placeholder
    and the returned notes say why.

    Returns:
        (thumbnail, notes to show beside it: unreadable file, predictions not drawn).
    """
    problems: list[str] = []
    image: np.ndarray | None = None
    if image_path is None:
        problems.append("image not listed in the pool annotations")
    else:
        try:
            image = load_display_image(image_path)
        except (OSError, ValueError) as err:
            problems.append(f"image {Path(image_path).name} could not be read: {err}")
    if image is None:
        image = placeholder_image(predictions.height, predictions.width)
    thumb, hidden = draw_predictions(image, predictions, chosen, size=size, min_score=min_score)
    if hidden:
        what = "prediction scored" if hidden == 1 else "predictions scored"
        problems.append(f"{hidden} {what} below {min_score:g} not drawn")
    return thumb, problems


def chosen_by_image(instances: Iterable[Mapping[str, int]]) -> dict[int, set[int]]:
    """Chosen instance indices per image id, from a selection's ``instances`` records."""
    out: dict[int, set[int]] = {}
    for record in instances:
        out.setdefault(int(record["image_id"]), set()).add(int(record["instance"]))
    return out
