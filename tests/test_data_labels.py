"""The geometry rules of labels and datasets: compressed RLE decoding, segmentations, boxes."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from taudis.data.labels import (
    bbox_problem,
    box_mask_problem,
    decode_counts_string,
    segmentation_problem,
    segmentation_rle,
)


def test_counts_string_decoder_matches_pycocotools() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        mask = rng.random((17, 23)) < rng.uniform(0.05, 0.95)
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        runs = decode_counts_string(rle["counts"].decode("ascii"))
        flat = np.repeat(np.arange(len(runs)) % 2, runs).astype(bool)
        assert np.array_equal(flat.reshape(23, 17).T, mask)
    with pytest.raises(ValueError, match="ends inside a count"):
        decode_counts_string("o")  # 'o' = 63: continuation bit set, then nothing


@pytest.mark.parametrize(
    ("segmentation", "field"),
    [
        ({"size": [4, 4], "counts": [16]}, None),
        ([[0, 0, 4, 0, 4, 4]], None),
        ({"size": [4, 5], "counts": [16]}, "segmentation.size"),
        ({"size": [4, 4], "counts": [3, -1, 14]}, "segmentation.counts"),
        ({"size": [4, 4], "counts": 7}, "segmentation.counts"),
        ([[0, 0, 4, 0]], "segmentation[0]"),
        ([[0, 0, 9, 0, 9, 4]], "segmentation[0]"),
        ([], "segmentation"),
        ("polygon", "segmentation"),
    ],
)
def test_segmentation_rules(segmentation, field) -> None:
    problem = segmentation_problem(segmentation, 4, 4)
    assert (problem[0] if problem else None) == field


def test_box_rules() -> None:
    assert bbox_problem([0, 0, 4, 4], 4, 4) is None
    assert bbox_problem([-0.5, 0, 4.5, 4], 4, 4) is None  # a pixel of slack at the border
    assert "negative" in bbox_problem([0, 0, -1, 4], 4, 4)
    assert "outside" in bbox_problem([3, 0, 4, 4], 4, 4)
    assert "finite" in bbox_problem([0, 0, float("nan"), 4], 4, 4)


def _box_rle(x: int, y: int, w: int, h: int) -> dict[str, Any]:
    return segmentation_rle([[x, y, x + w, y, x + w, y + h, x, y + h]], 100, 120)


@pytest.mark.parametrize(
    ("bbox", "agrees"),
    [
        ([20.0, 30.0, 40.0, 10.0], True),  # the polygon's own box
        ([19.4, 29.6, 41.3, 10.8], True),  # rounded outward, as tools do
        ([18.0, 30.0, 48.0, 10.0], True),  # a loose hand-drawn box
        ([20.0, 30.0, 60.0, 40.0], False),  # [x1, y1, x2, y2] read as [x, y, w, h]
        ([0.2, 0.3, 0.4, 0.1], False),  # a box in normalised coordinates
        ([60.0, 30.0, 40.0, 10.0], False),  # another object's box
    ],
)
def test_a_box_must_be_its_masks(bbox: list[float], agrees: bool) -> None:
    problem = box_mask_problem(bbox, _box_rle(20, 30, 40, 10))
    assert (problem is None) is agrees
    if not agrees:
        assert "not its mask's" in problem and "[20.0, 30.0, 40.0, 10.0]" in problem


def test_an_empty_mask_has_no_box_to_disagree_with() -> None:
    empty = mask_utils.encode(np.zeros((4, 4), np.uint8, order="F"))
    assert box_mask_problem([1.0, 1.0, 2.0, 2.0], empty) is None


def test_a_mask_run_row_by_row_is_named_as_such() -> None:
    """A converter that ran the mask with numpy's default flatten() writes its runs row by row."""
    mask = np.zeros((30, 40), np.uint8)
    mask[5:15, 5:20] = 1
    flat = mask.flatten()  # row by row: COCO's runs go column by column
    changes = np.flatnonzero(np.diff(np.r_[0, flat, 1 - flat[-1]]))
    runs = np.diff(np.r_[0, changes]).tolist()
    rle = mask_utils.frPyObjects({"size": [30, 40], "counts": runs}, 30, 40)
    problem = box_mask_problem([5.0, 5.0, 15.0, 10.0], rle)
    assert problem is not None and "read row by row" in problem and "column by column" in problem
    assert "row by row" not in (box_mask_problem([20.0, 30.0, 60.0, 40.0], _box_rle(20, 30, 40, 10)) or "")
