"""Uncertainty metrics against direct formulas on hand-computed examples, and pool scoring."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from taudis.data.instances import InstanceTableError, write_shard
from taudis.data.synthetic_instances import PoolSpec, shard_columns, write_pool
from taudis.select.uncertainty import (
    METRICS,
    aggregate_images,
    classification_entropy,
    classification_margin,
    combine,
    minmax_normalise,
    rank_normalise,
    score_pool,
    segmentation_entropy,
)

LOG2 = math.log(2)


def test_margin_hand_examples() -> None:
    p = np.array([[0.7, 0.2, 0.1], [1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.1, 0.3, 0.6]])
    np.testing.assert_allclose(classification_margin(p), [0.5, 0.0, 1.0, 0.7])


def test_entropy_hand_examples() -> None:
    p = np.array([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3], [0.25, 0.75, 0.0]])
    expected = [LOG2, 0.0, math.log(3), -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))]
    np.testing.assert_allclose(classification_entropy(p), expected)
    np.testing.assert_allclose(classification_entropy(p, normalise=True), np.array(expected) / math.log(3))


def test_segmentation_entropy_hand_examples() -> None:
    masks = np.array(
        [
            [[0.5, 0.5], [0.5, 0.5]],  # all maximally uncertain: log 2
            [[0.0, 1.0], [1.0, 0.0]],  # certain: 0
            [[0.5, 1.0], [0.0, 0.5]],  # half the pixels at 0.5: log 2 / 2
            [[0.25, 0.25], [0.25, 0.25]],
        ]
    )
    h25 = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    expected = np.array([LOG2, 0.0, LOG2 / 2, h25])
    for dtype in (np.float16, np.float32, np.float64):
        np.testing.assert_allclose(segmentation_entropy(masks.astype(dtype)), expected, rtol=1e-6)
        np.testing.assert_allclose(segmentation_entropy(masks.astype(dtype), bits=True), expected / LOG2, rtol=1e-6)


def test_segmentation_entropy_float16_table_matches_formula() -> None:
    rng = np.random.default_rng(3)
    masks = rng.uniform(0.001, 0.999, (50, 7, 7)).astype(np.float16)
    m = masks.astype(np.float64)
    direct = np.mean(-m * np.log(m) - (1 - m) * np.log(1 - m), axis=(1, 2))
    np.testing.assert_allclose(segmentation_entropy(masks), direct, rtol=1e-12)


def test_segmentation_entropy_flags_values_outside_unit_interval() -> None:
    masks = np.full((3, 2, 2), 0.5, np.float16)
    masks[1, 0, 1] = 1.5
    out = segmentation_entropy(masks)
    assert np.isnan(out[1]) and not np.isnan(out[[0, 2]]).any()


@settings(max_examples=50, deadline=None)
@given(arrays(np.float64, (6, 4), elements=st.floats(0.001, 1.0)))
def test_classification_metric_ranges(raw: np.ndarray) -> None:
    p = raw / raw.sum(axis=1, keepdims=True)
    cm, ce = classification_margin(p), classification_entropy(p)
    assert ((cm >= -1e-12) & (cm <= 1 + 1e-12)).all()
    assert ((ce >= -1e-12) & (ce <= math.log(4) + 1e-9)).all()
    top = np.sort(p, axis=1)
    np.testing.assert_allclose(cm, 1 - (top[:, -1] - top[:, -2]))


@settings(max_examples=50, deadline=None)
@given(arrays(np.float16, (3, 4, 4), elements=st.floats(0, 1, width=16)))
def test_segmentation_entropy_range(masks: np.ndarray) -> None:
    se = segmentation_entropy(masks)
    assert ((se >= 0) & (se <= LOG2 + 1e-12)).all()


def test_normalisations() -> None:
    x = np.array([3.0, 1.0, 2.0, 2.0])
    np.testing.assert_allclose(minmax_normalise(x), [1.0, 0.0, 0.5, 0.5])
    np.testing.assert_allclose(rank_normalise(x), [1.0, 0.0, 1 / 3, 1 / 3])
    np.testing.assert_array_equal(minmax_normalise(np.full(3, 7.0)), np.zeros(3))


def test_combinations() -> None:
    base = {
        "margin": np.array([0.0, 0.5, 1.0]),
        "entropy": np.array([1.0, 0.0, 2.0]),
        "seg_entropy": np.array([0.1, 0.3, 0.2]),
    }
    mm = [np.array([0.0, 0.5, 1.0]), np.array([0.5, 0.0, 1.0]), np.array([0.0, 1.0, 0.5])]
    rk = [np.array([0.0, 0.5, 1.0]), np.array([0.5, 0.0, 1.0]), np.array([0.0, 1.0, 0.5])]
    np.testing.assert_allclose(combine(base, "mean_minmax"), np.mean(mm, axis=0))
    np.testing.assert_allclose(combine(base, "product_minmax"), np.prod(mm, axis=0))
    np.testing.assert_allclose(combine(base, "mean_rank"), np.mean(rk, axis=0))
    np.testing.assert_allclose(combine(base, "product_rank"), [0.0, 0.0, 0.5])


def test_a_constant_base_metric_is_left_out_of_a_product_not_made_everyones_zero() -> None:
    """Saturated masks (float16 0/1) make seg_entropy constant: the product must still tell instances apart."""
    base = {"margin": np.array([0.1, 0.9, 0.5]), "entropy": np.array([0.2, 0.6, 0.4]), "seg_entropy": np.zeros(3)}
    without = {"margin": base["margin"], "entropy": base["entropy"]}
    for how in ("rank", "minmax"):
        normalise = rank_normalise if how == "rank" else minmax_normalise
        want = np.prod([normalise(v) for v in without.values()], axis=0)
        np.testing.assert_allclose(combine(base, f"product_{how}"), want)
        assert np.argmax(combine(base, f"product_{how}")) == 1
    flat = {m: np.full(3, 0.3) for m in base}
    np.testing.assert_array_equal(combine(flat, "product_rank"), np.zeros(3))  # nothing tells them apart


@pytest.mark.parametrize("aggregation", ["mean", "max", "sum"])
def test_aggregation(aggregation: str) -> None:
    images = np.array([1, 2, 5, 9])
    inst_image = np.array([5, 1, 5, 5, 1, 77])  # 77: not a pool image, ignored
    u = np.array([0.2, 0.4, 0.6, 0.1, 0.8, 9.0])
    expected = {
        "mean": [0.6, 0.0, 0.3, 0.0],
        "max": [0.8, 0.0, 0.6, 0.0],
        "sum": [1.2, 0.0, 0.9, 0.0],
    }[aggregation]
    np.testing.assert_allclose(aggregate_images(images, inst_image, u, aggregation), expected)


def test_unknown_names_rejected() -> None:
    with pytest.raises(ValueError, match="unknown uncertainty metric 'nope'"):
        score_pool(".", ["nope"])
    with pytest.raises(ValueError, match="unknown image aggregation 'median'"):
        aggregate_images(np.array([1]), np.array([1]), np.array([0.5]), "median")


def test_score_pool_streams_and_matches_formulas(tmp_path: Path) -> None:
    spec = PoolSpec(num_instances=700, num_shards=3, seed=4, mask_size=8, embedding_dim=16)
    write_pool(tmp_path, spec)
    scores = score_pool(tmp_path, METRICS, chunk_rows=50)
    assert scores.num_instances == 700
    cols = [shard_columns(spec, s, first) for s, first in _starts(spec)]
    probs = np.concatenate([c["class_probs"] for c in cols]).astype(np.float64)
    masks = np.concatenate([c["mask_probs"] for c in cols]).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = np.nan_to_num(-masks * np.log(masks)) + np.nan_to_num(-(1 - masks) * np.log(1 - masks))
        ce = np.nan_to_num(-probs * np.log(probs)).sum(axis=1)
    top = np.sort(probs, axis=1)
    np.testing.assert_allclose(scores.metrics["seg_entropy"], h.mean(axis=(1, 2)), atol=1e-12)
    np.testing.assert_allclose(scores.metrics["seg_entropy_bits"], h.mean(axis=(1, 2)) / LOG2, atol=1e-12)
    np.testing.assert_allclose(scores.metrics["margin"], 1 - (top[:, -1] - top[:, -2]), atol=1e-12)
    np.testing.assert_allclose(scores.metrics["entropy"], ce, atol=1e-12)
    np.testing.assert_allclose(scores.metrics["entropy_norm"], ce / math.log(spec.num_classes + 1), atol=1e-12)
    assert set(scores.metrics) == set(METRICS)
    all_ids = np.concatenate([c["image_ids"] for c in cols])
    np.testing.assert_array_equal(scores.image_ids, np.sort(all_ids))
    np.testing.assert_array_equal(scores.shard_offsets, np.cumsum([0] + [len(c["instance_image"]) for c in cols]))


def _starts(spec: PoolSpec) -> list[tuple[int, int]]:
    from taudis.data.synthetic_instances import iter_shard_starts

    return list(iter_shard_starts(spec))


def test_image_in_two_shards_rejected(tmp_path: Path) -> None:
    spec = PoolSpec(num_instances=30, seed=1, mask_size=4, embedding_dim=8)
    cols = shard_columns(spec, 0, 0)
    write_shard(tmp_path / "a", **cols)
    write_shard(tmp_path / "b", **cols)
    with pytest.raises(InstanceTableError, match="also listed by shard") as err:
        score_pool(tmp_path)
    assert err.value.field == "image_ids" and "/b" in str(err.value) and err.value.row == 0


def test_unvalidated_bad_mask_still_named(tmp_path: Path) -> None:
    spec = PoolSpec(num_instances=30, seed=1, mask_size=4, embedding_dim=8)
    path = write_pool(tmp_path, spec)[0]
    masks = np.load(path / "mask_probs.npy")
    masks[7, 1, 1] = 2.0
    np.save(path / "mask_probs.npy", masks)
    with pytest.raises(InstanceTableError) as err:
        score_pool(tmp_path, validate=False)
    assert (err.value.row, err.value.field) == (7, "mask_probs")
