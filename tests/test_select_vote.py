"""Majority vote and fill on hand-made cases."""

from __future__ import annotations

import numpy as np
import pytest

from taudis.select.vote import vote


def test_vote_ranks_by_count_then_summed_uncertainty_then_id() -> None:
    images = np.array([1, 2, 3, 4, 5])
    img_u = np.array([0.1, 0.2, 0.3, 0.4, 0.5])
    counts = np.array([3, 3, 3, 3, 0])
    # image 3: 2 votes; image 1: 1 vote (u 0.9); image 2: 1 vote (u 0.9); image 4: 1 vote (u 0.5)
    chosen_image = np.array([4, 3, 1, 2, 3])
    chosen_u = np.array([0.5, 0.2, 0.9, 0.9, 0.1])
    selected, filled, notes = vote(images, img_u, counts, chosen_image, chosen_u, 3)
    assert [s.image_id for s in selected] == [3, 1, 2]
    assert [s.votes for s in selected] == [2, 1, 1]
    assert [s.rank for s in selected] == [1, 2, 3]
    assert filled == 0 and notes == [] and not any(s.filled for s in selected)
    assert selected[0].uncertainty == 0.3  # the image-level uncertainty
    assert "2 chosen instance(s), summed uncertainty 0.3" in selected[0].reason


def test_fill_by_image_uncertainty_with_empty_images_last() -> None:
    images = np.array([10, 20, 30, 40, 50, 60])
    img_u = np.array([0.5, 0.0, 0.7, 0.7, 0.0, 0.2])
    counts = np.array([2, 0, 1, 4, 0, 1])  # 20 and 50 have no instance
    selected, filled, notes = vote(images, img_u, counts, np.array([60]), np.array([0.2]), 6, aggregation="max")
    # 60 voted; fill: 30, 40 (0.7, id order), 10 (0.5), then the empty images 20, 50 by id
    assert [s.image_id for s in selected] == [60, 30, 40, 10, 20, 50]
    assert [s.filled for s in selected] == [False, True, True, True, True, True]
    assert filled == 5
    assert len(notes) == 1 and "filled 5" in notes[0] and "only 1 images" in notes[0]
    assert "no predicted instance" in selected[4].reason and selected[4].uncertainty == 0.0
    assert "max of product_rank over 1 instances" in selected[1].reason  # the default metric
    assert all(s.reason for s in selected)


def test_budget_above_pool_and_zero_uncertainty_image_with_instances() -> None:
    images = np.array([1, 2, 3])
    img_u = np.array([0.0, 0.0, 0.0])
    counts = np.array([0, 1, 0])  # image 2 has an instance of uncertainty 0: it still comes before 1 and 3
    selected, filled, _ = vote(images, img_u, counts, np.zeros(0, np.int64), np.zeros(0), 10)
    assert [s.image_id for s in selected] == [2, 1, 3] and filled == 3


def test_more_voted_images_than_budget_keeps_top() -> None:
    images = np.arange(1, 7)
    chosen = np.array([6, 5, 5, 4, 3, 2, 1, 1, 1])
    u = np.full(9, 0.1)
    selected, filled, _ = vote(images, np.zeros(6), np.ones(6, int), chosen, u, 2)
    assert [s.image_id for s in selected] == [1, 5] and filled == 0


def test_empty_pool() -> None:
    e = np.zeros(0, np.int64)
    selected, filled, _ = vote(e, np.zeros(0), e, e, np.zeros(0), 5)
    assert selected == [] and filled == 0


def test_chosen_instance_outside_the_pool_is_named() -> None:
    images = np.array([1, 2, 5])
    for chosen in (np.array([2, 3]), np.array([2, 9])):  # 3: between pool ids; 9: past the last
        with pytest.raises(ValueError, match=f"chosen instance 1 lies on image {chosen[1]}, which is not in the pool"):
            vote(images, np.zeros(3), np.ones(3, int), chosen, np.zeros(2), 2)
    e = np.zeros(0, np.int64)
    with pytest.raises(ValueError, match="image 4, which is not in the pool"):
        vote(e, np.zeros(0), e, np.array([4]), np.zeros(1), 1)
