"""Whitened embeddings for the cover (taudis.select.space): the statistics, their streaming, the cover's use."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from taudis.data.synthetic_instances import PoolSpec, write_pool
from taudis.select import select
from taudis.select import space as space_module
from taudis.select.cover import cover_embeddings
from taudis.select.pool import gather_embeddings
from taudis.select.space import EPS_SHARE, fit_whitening, pool_whitening
from taudis.select.strategies import cover_step
from taudis.select.uncertainty import score_pool


def _moments(x: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    x = np.asarray(x, np.float64)
    return x.shape[0], x.sum(axis=0), x.T @ x


def _post_relu(rng: np.random.Generator, n: int, d: int = 16) -> np.ndarray:
    """Like mask-head embeddings: no negative entry, one direction carrying most of the variance."""
    scale = np.r_[4.0, np.full(d - 1, 0.5)]
    return np.maximum(rng.standard_normal((n, d)) * scale + 1.5, 0).astype(np.float32)


def test_whitened_sample_has_unit_variance_along_every_direction() -> None:
    rng = np.random.default_rng(0)
    rotation = np.linalg.qr(rng.standard_normal((8, 8)))[0]
    x = rng.standard_normal((5000, 8)) * np.linspace(1.0, 3.0, 8) @ rotation + 3.0  # correlated units
    w = fit_whitening(*_moments(x))
    z = w.apply(x).astype(np.float64)
    assert np.abs(z.mean(axis=0)).max() < 1e-5
    lam = np.linalg.eigvalsh(np.cov(x.T))
    # unit variance up to the regulariser: lambda / (lambda + eps) along each principal direction
    expected = np.sort(lam / (lam + EPS_SHARE * lam.mean()))
    assert np.allclose(np.sort(np.linalg.eigvalsh(np.cov(z.T))), expected, atol=1e-4)
    assert expected.min() > 0.9


def test_dead_directions_are_not_blown_up() -> None:
    """A unit that is always 0 (a dead ReLU) or barely moves stays small after whitening."""
    rng = np.random.default_rng(1)
    x = np.c_[rng.standard_normal((500, 4)), np.zeros(500), 1e-9 * rng.standard_normal(500)]
    z = fit_whitening(*_moments(x)).apply(x)
    assert np.isfinite(z).all()
    spread = np.sort(z.std(axis=0))
    assert spread[:2].max() < 1e-5 and spread[2:].min() > 0.9  # two dead directions, four live ones


@pytest.mark.parametrize("rows", [0, 1])
def test_too_few_rows_centre_only(rows: int) -> None:
    x = np.ones((rows, 3))
    w = fit_whitening(*_moments(x))
    assert np.array_equal(w.projection, np.eye(3))
    assert w.apply(np.zeros((0, 3))).shape == (0, 3)


def test_pool_whitening_streams_in_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_pool(tmp_path, PoolSpec(num_instances=120, num_shards=3, seed=2, mask_size=4, embedding_dim=8))
    scores = score_pool(tmp_path, ["seg_entropy"])
    rows = np.arange(0, scores.instance_image.size, 2)  # every other instance
    whole = pool_whitening(scores.shard_paths, scores.shard_offsets, rows)
    monkeypatch.setattr(space_module, "CHUNK", 7)
    chunked = pool_whitening(scores.shard_paths, scores.shard_offsets, rows)
    assert whole is not None and chunked is not None
    direct = fit_whitening(*_moments(gather_embeddings(scores.shard_paths, scores.shard_offsets, rows)))
    for w in (whole, chunked):
        assert np.allclose(w.mean, direct.mean) and np.allclose(w.projection, direct.projection)
    assert pool_whitening(scores.shard_paths, scores.shard_offsets, np.zeros(0, np.int64)) is None


def test_whitening_thins_a_post_relu_graph_and_the_cover_uses_it() -> None:
    rng = np.random.default_rng(3)
    pool = _post_relu(rng, 2000)
    candidates, u = pool[:60], rng.random(60)
    w = fit_whitening(*_moments(pool))
    raw = cover_step(candidates, u, 10, 1.5, 0.5)
    centred = cover_step(candidates, u, 10, 1.5, 0.5, centre=True)
    whitened = cover_step(candidates, u, 10, 1.5, 0.5, whitening=w)
    # raw cosines link nearly every pair; centred ones still compare along the dominant direction
    assert raw.coverage == centred.coverage == 1.0 > whitened.coverage
    # the cover's graph is the one on the whitened embeddings, computed here independently
    shifted = candidates.astype(np.float64) - pool.mean(axis=0)
    lam, v = np.linalg.eigh(np.cov(pool.astype(np.float64).T))
    by_hand = (shifted @ v / np.sqrt(lam + EPS_SHARE * lam.mean())).astype(np.float32)
    assert whitened.chosen.tolist() == cover_embeddings(by_hand, u, 15, 0.5).chosen.tolist()
    # whitening centres, so asking to centre as well changes nothing
    both = cover_step(candidates, u, 10, 1.5, 0.5, centre=True, whitening=w)
    assert both.chosen.tolist() == whitened.chosen.tolist()


def test_select_whitens_on_the_pool_not_on_the_candidates(tmp_path: Path) -> None:
    """Whitened on the candidates alone (fewer than the dimensions), every pair would be alike."""
    write_pool(tmp_path, PoolSpec(num_instances=600, seed=4, mask_size=4, embedding_dim=32))
    scores = score_pool(tmp_path, ["seg_entropy"])
    chosen = select(tmp_path, 8, metric="seg_entropy", whiten=True, sigma=0.3)  # 20 candidates in 32 dimensions
    assert chosen.params["whiten"] is True
    # its cover ran on the pool's whitening: the same picks as cover_step given that whitening
    rows = np.arange(scores.instance_image.size)
    w = pool_whitening(scores.shard_paths, scores.shard_offsets, rows)
    u = scores.metrics["seg_entropy"]
    top = np.lexsort((rows, -u))[:20]
    emb = gather_embeddings(scores.shard_paths, scores.shard_offsets, top)
    expected = cover_step(emb, u[top], 8, 1.5, 0.3, whitening=w).chosen
    assert [(c.image_id, c.instance) for c in chosen.instances] == [
        (int(scores.instance_image[i]), int(scores.instance_index[i])) for i in top[expected]
    ]

    # on the candidates' own statistics they would form a simplex: every pairwise cosine alike
    def cosines(x: np.ndarray) -> np.ndarray:
        x = x.astype(np.float64) / np.linalg.norm(x, axis=1, keepdims=True)
        return (x @ x.T)[np.triu_indices(x.shape[0], 1)]

    own = cosines(fit_whitening(*_moments(emb)).apply(emb))
    assert w is not None and cosines(w.apply(emb)).std() > 0.1
    assert own.std() < 0.01 and own.mean() == pytest.approx(-1 / 19, abs=0.01)


def test_cli_whiten_gives_the_library_selection(tmp_path: Path) -> None:
    from taudis.select.cli import main

    write_pool(tmp_path / "pool", PoolSpec(num_instances=300, seed=5, mask_size=4, embedding_dim=8))
    out = tmp_path / "selection.json"
    assert (
        main(["--instances", str(tmp_path / "pool"), "--budget", "6", "--whiten", "--sigma", "0.4", "--out", str(out)])
        == 0
    )
    assert out.read_text() == select(tmp_path / "pool", 6, whiten=True, sigma=0.4).to_json()
