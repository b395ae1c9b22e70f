"""Masks in image coordinates: paste a mask head's SxS probabilities into its box, encode as COCO RLE.

Used wherever predictions leave the instance table: labelling exports and reports. Pure numpy and
pycocotools (no torch), so the CPU steps can use it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

MASK_THRESHOLD = 0.5


def paste_mask(mask_probs: np.ndarray, box: np.ndarray | list[float], height: int, width: int) -> np.ndarray:
    """Resample an SxS mask into its box of an image of ``height`` x ``width`` pixels.

    Bilinear sampling at pixel centres, as detectron2's paste does (``paste_masks_in_image``:
    ``grid_sample`` with zero padding): pixel (y, x) of the image looks up the box-relative
    coordinate of its centre in the SxS grid, and past the grid's outer cells the values fade to
    0: a pixel centred on the box's edge gets half its edge cell's value, one further out less.

    Args:
        mask_probs: (S, S) probabilities of the instance's class.
        box: x0, y0, x1, y1 in image pixels.
        height: image height in pixels.
        width: image width in pixels.

    Returns:
        (height, width) float32 probabilities.
    """
    probs = np.asarray(mask_probs, dtype=np.float32)
    size = probs.shape[0]
    x0, y0, x1, y1 = (float(v) for v in box)
    out = np.zeros((height, width), dtype=np.float32)
    c0, c1 = max(int(np.floor(x0)), 0), min(int(np.ceil(x1)), width)
    r0, r1 = max(int(np.floor(y0)), 0), min(int(np.ceil(y1)), height)
    if c1 <= c0 or r1 <= r0:
        return out
    box_w, box_h = max(x1 - x0, 1e-6), max(y1 - y0, 1e-6)
    # Grid coordinate of each pixel centre (cell i of the mask covers [i, i+1) * box/S), on the
    # grid with a border of zeros around it (index + 1): the zero padding of grid_sample.
    padded = np.pad(probs, 1)
    gx = ((np.arange(c0, c1) + 0.5 - x0) / box_w * size - 0.5).clip(-1, size) + 1
    gy = ((np.arange(r0, r1) + 0.5 - y0) / box_h * size - 0.5).clip(-1, size) + 1
    ix0, iy0 = np.floor(gx).astype(int), np.floor(gy).astype(int)
    ix1, iy1 = np.minimum(ix0 + 1, size + 1), np.minimum(iy0 + 1, size + 1)
    fx, fy = (gx - ix0)[None, :], (gy - iy0)[:, None]
    top = padded[iy0][:, ix0] * (1 - fx) + padded[iy0][:, ix1] * fx
    bottom = padded[iy1][:, ix0] * (1 - fx) + padded[iy1][:, ix1] * fx
    out[r0:r1, c0:c1] = top * (1 - fy) + bottom * fy
    return out


def binary_mask(
    mask_probs: np.ndarray, box: np.ndarray | list[float], height: int, width: int, threshold: float = MASK_THRESHOLD
) -> np.ndarray:
    """The instance's binary (height, width) mask: pasted probabilities at or above ``threshold``."""
    return paste_mask(mask_probs, box, height, width) >= threshold


def encode_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO RLE of a binary (H, W) mask, with ``counts`` as a str so it serialises to JSON."""
    return _json_rle(mask_utils.encode(np.asfortranarray(mask.astype(np.uint8))))


def _json_rle(rle: dict[str, Any]) -> dict[str, Any]:
    """pycocotools' compressed RLE with plain ints and ``counts`` as a str (JSON-serialisable)."""
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def mask_annotation(ann_id: int, image_id: int, category_id: int, mask: np.ndarray) -> dict[str, Any]:
    """A COCO annotation record of one instance's binary (H, W) mask: RLE, area and box from pycocotools."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_id,
        "segmentation": _json_rle(rle),
        "area": float(mask_utils.area(rle)),
        "bbox": [float(v) for v in mask_utils.toBbox(rle)],
        "iscrowd": 0,
    }


def decode_rle(rle: dict[str, Any]) -> np.ndarray:
    """Binary (H, W) mask of a COCO RLE whose counts are str or bytes (compressed) or a list (uncompressed)."""
    counts = rle["counts"]
    height, width = (int(v) for v in rle["size"])
    if isinstance(counts, list):
        compressed = mask_utils.frPyObjects({"size": [height, width], "counts": counts}, height, width)
    else:
        compressed = {"size": [height, width], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    return mask_utils.decode(compressed).astype(bool)
