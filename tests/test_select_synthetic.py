"""The synthetic instance-pool generator (taudis.data.synthetic_instances)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from taudis.data.instances import iter_shards
from taudis.data.synthetic_instances import PoolSpec, write_pool
from taudis.select.graph import similarity_graph
from taudis.select.uncertainty import score_pool

SPEC = PoolSpec(num_instances=1001, num_shards=4, seed=11, mask_size=12, embedding_dim=32)


def test_counts_validity_and_empty_images(tmp_path: Path) -> None:
    paths = write_pool(tmp_path, SPEC)
    assert [p.name for p in paths] == [f"shard-{i:05d}" for i in range(4)]
    shards = list(iter_shards(tmp_path))  # validated against the contract on read
    assert [s.num_instances for s in shards] == [251, 250, 250, 250]
    ids = np.concatenate([s.image_ids for s in shards])
    np.testing.assert_array_equal(ids, np.arange(ids.size))  # contiguous, no image in two shards
    with_instances = np.unique(np.concatenate([s.instance_image for s in shards]))
    assert 0 < with_instances.size < ids.size
    per_image = np.bincount(np.concatenate([s.instance_image for s in shards]), minlength=ids.size)
    assert per_image.max() > 5
    assert shards[0].mask_probs.shape[1:] == (12, 12) and shards[0].embeddings.dtype == np.float16


def test_deterministic_per_seed(tmp_path: Path) -> None:
    write_pool(tmp_path / "a", SPEC)
    write_pool(tmp_path / "b", SPEC)
    write_pool(tmp_path / "c", PoolSpec(**{**SPEC.__dict__, "seed": 12}))
    for name in ("mask_probs", "embeddings", "class_probs", "instance_image"):
        a = np.load(tmp_path / "a" / "shard-00002" / f"{name}.npy")
        assert np.array_equal(a, np.load(tmp_path / "b" / "shard-00002" / f"{name}.npy"))
        c = np.load(tmp_path / "c" / "shard-00002" / f"{name}.npy")
        assert a.shape != c.shape or not np.array_equal(a, c)


def test_skip_existing_keeps_shards(tmp_path: Path) -> None:
    write_pool(tmp_path, SPEC)
    marker = tmp_path / "shard-00001" / "header.json"
    before = marker.stat().st_mtime_ns
    write_pool(tmp_path, SPEC, skip_existing=True)
    assert marker.stat().st_mtime_ns == before


def test_realistic_spread(tmp_path: Path) -> None:
    write_pool(tmp_path, PoolSpec(num_instances=3000, num_shards=1, seed=3, mask_size=28, embedding_dim=64))
    scores = score_pool(tmp_path, ["seg_entropy", "margin"])
    se, cm = scores.metrics["seg_entropy"], scores.metrics["margin"]
    # mostly confident, some uncertain
    assert np.median(cm) < 0.2 and (cm > 0.6).mean() > 0.02
    assert np.median(se) < 0.5 * np.log(2) and se.max() > 2 * np.median(se)
    # clustered embeddings: at sigma 0.8 some nodes have many neighbours and some none
    emb = np.concatenate([s.embeddings for s in iter_shards(tmp_path)])
    degree = np.diff(similarity_graph(emb, 0.8).indptr)
    assert degree.max() > 20 and (degree == 0).any()


@pytest.mark.parametrize("fraction", [1.0, 1.5, -0.1])
def test_empty_image_fraction_checked(tmp_path: Path, fraction: float) -> None:
    # 1.0 used to divide by zero, and above 1 the generator drew empty images forever.
    with pytest.raises(ValueError, match="empty_image_fraction must lie in"):
        write_pool(tmp_path, PoolSpec(num_instances=10, empty_image_fraction=fraction))
