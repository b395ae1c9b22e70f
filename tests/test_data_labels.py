"""The geometry rules of labels and datasets: compressed RLE decoding, segmentations, boxes."""

from __future__ import annotations

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from taudis.data.labels import bbox_problem, decode_counts_string, segmentation_problem


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
