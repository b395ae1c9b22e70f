"""select(): strategies, validation, determinism, stages == select, edge cases, JSON and CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from taudis.data.instances import write_shard
from taudis.data.synthetic_instances import PoolSpec, shard_columns, write_pool
from taudis.select import STRATEGIES, Selection, SelectionFormatError, select
from taudis.select.baselines import k_center
from taudis.select.cli import main as cli_main
from taudis.select.cover import coverage_count, greedy_cover
from taudis.select.graph import similarity_graph, unit_rows
from taudis.select.stages import (
    StageInputError,
    oversample_instances,
    score_uncertainty,
    select_max_k_cover,
    vote_images,
)
from taudis.select.uncertainty import aggregate_images, score_pool

SPEC = PoolSpec(num_instances=900, num_shards=3, seed=7, mask_size=8, embedding_dim=16, num_clusters=12)


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pool")
    write_pool(root, SPEC)
    return root


@pytest.fixture(scope="module")
def empty_pool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two shards whose 5 images have no instance at all."""
    root = tmp_path_factory.mktemp("empty")
    cols = shard_columns(PoolSpec(num_instances=0, seed=1, mask_size=4, embedding_dim=8), 0, 0)
    for s, ids in enumerate(([3, 1], [7, 5, 9])):
        write_shard(root / f"s{s}", **{**cols, "image_ids": ids, "image_sizes": np.full((len(ids), 2), 32)})
    return root


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"budget": 0}, "budget must be a positive integer"),
        ({"budget": -3}, "budget must be a positive integer"),
        ({"alpha": 1.2}, "alpha must be >= beta"),
        ({"beta": 0.9, "alpha": 2.0}, "beta must be >= 1"),
        ({"sigma": 1.5}, r"sigma .* \[-1, 1\]"),
        ({"sigma": -1.01}, r"sigma .* \[-1, 1\]"),
        ({"sigma": float("nan")}, "sigma"),
        ({"metric": "bald"}, "unknown uncertainty metric 'bald'"),
        ({"aggregation": "median"}, "unknown image aggregation 'median'"),
        ({"strategy": "badge"}, "unknown strategy 'badge'"),
        ({"universe": "world"}, "unknown cover universe 'world'"),
    ],
)
def test_invalid_parameters_rejected_before_any_work(kwargs: dict[str, Any], match: str) -> None:
    args = {"budget": 5, **kwargs}
    budget = args.pop("budget")
    with pytest.raises(ValueError, match=match):
        select("/nonexistent/pool", budget, **args)  # no shard is read: checks come first


# ---------------------------------------------------------------- taudis


def test_taudis_follows_the_algorithm(pool: Path) -> None:
    b = 20
    sel = select(pool, b, alpha=3.0, beta=1.5, sigma=0.8, metric="seg_entropy")
    scores = score_pool(pool, ["seg_entropy"])
    u = scores.metrics["seg_entropy"]
    n_cand, k = math.ceil(3.0 * b), math.ceil(1.5 * b)
    top = np.lexsort((np.arange(u.size), -u))[:n_cand]
    # the cover, recomputed from the candidates' embeddings with an independent graph build
    emb = np.concatenate([np.load(p / "embeddings.npy").astype(np.float32) for p in scores.shard_paths])
    cover = greedy_cover(similarity_graph(emb[top], 0.8, tile=7), u[top], k)
    chosen = top[cover.chosen]
    assert [(i.image_id, i.instance) for i in sel.instances] == [
        (int(scores.instance_image[c]), int(scores.instance_index[c])) for c in chosen
    ]
    assert sel.stats["candidates"] == n_cand and sel.stats["chosen_instances"] == k
    assert sel.stats["coverage"] == pytest.approx(cover.coverage)
    # the vote, by hand
    images = sel.image_ids
    assert len(images) == b == len(set(images))
    votes = {im.image_id: im.votes for im in sel.images}
    counted: dict[int, int] = {}
    for c in chosen:
        counted[int(scores.instance_image[c])] = counted.get(int(scores.instance_image[c]), 0) + 1
    for im in sel.images:
        assert votes[im.image_id] == counted.get(im.image_id, 0)
    assert [im.votes for im in sel.images] == sorted((im.votes for im in sel.images), reverse=True)
    # and exactly the top B by (votes desc, summed uncertainty desc, image id asc), nothing filled
    summed: dict[int, float] = {}
    for c in chosen:
        summed[int(scores.instance_image[c])] = summed.get(int(scores.instance_image[c]), 0.0) + float(u[c])
    assert len(counted) >= b and not any(im.filled for im in sel.images)
    assert images == sorted(counted, key=lambda i: (-counted[i], -summed[i], i))[:b]
    img_u = aggregate_images(scores.image_ids, scores.instance_image, u, "mean")
    for im in sel.images:
        assert im.uncertainty == pytest.approx(img_u[np.searchsorted(scores.image_ids, im.image_id)])


@pytest.mark.parametrize(
    ("universe", "whiten"), [("candidates", False), ("pool", False), ("candidates", True), ("pool", True)]
)
def test_stages_equal_select(pool: Path, tmp_path: Path, universe: str, whiten: bool) -> None:
    exclude = [3, 4, 50]
    sigma = 0.3 if whiten else 0.75  # whitened cosines spread around 0
    kw: dict[str, Any] = {"alpha": 2.5, "beta": 1.5, "sigma": sigma, "metric": "mean_rank", "aggregation": "max"}
    direct = select(pool, 30, "taudis", seed=2, exclude=exclude, universe=universe, whiten=whiten, **kw)
    scores = score_uncertainty(pool, tmp_path / "scores")
    cands = oversample_instances(scores, tmp_path / "cands", 30, kw["alpha"], kw["metric"], exclude=exclude)
    cover = select_max_k_cover(
        pool, cands, tmp_path / "cover", 30, kw["beta"], kw["sigma"], universe=universe, whiten=whiten
    )
    out = vote_images(scores, cover, tmp_path / "selection.json", 30, kw["aggregation"], seed=2)
    assert out.read_text() == direct.to_json()
    assert direct.params["whiten"] is whiten
    assert not set(direct.image_ids) & set(exclude)
    assert direct.notes[0] == "excluded 3 image ids from the pool"


def test_greedi_partitions_cover_nearly_as_much_as_one_worker(pool: Path, tmp_path: Path) -> None:
    # A dense enough graph that the cover does not saturate, so partitioning can lose coverage.
    kw: dict[str, Any] = {"alpha": 6.0, "beta": 1.0, "sigma": 0.9}
    single = select(pool, 20, "taudis", **kw)
    greedi = select(pool, 20, "taudis", partitions=2, **kw)
    assert single.stats["coverage"] < 1.0
    # 120 candidates in two parts lose more than large pools do (0.985-0.997 in bench/selection.py).
    assert greedi.stats["coverage"] / single.stats["coverage"] >= 0.9
    assert greedi.stats["chosen_instances"] == single.stats["chosen_instances"]
    assert any("GreeDi over 2 partitions" in note for note in greedi.notes)
    # The pipeline's cover stage gives the same GreeDi selection as select().
    scores = score_uncertainty(pool, tmp_path / "scores")
    cands = oversample_instances(scores, tmp_path / "cands", 20, kw["alpha"])
    cover = select_max_k_cover(pool, cands, tmp_path / "cover", 20, kw["beta"], kw["sigma"], partitions=2)
    assert vote_images(scores, cover, tmp_path / "sel.json", 20).read_text() == greedi.to_json()


def test_exclusion_note_counts_only_images_of_the_pool(pool: Path) -> None:
    selection = select(pool, 5, "random", exclude=[3, 4, 10**9])
    assert selection.notes[0] == "excluded 2 image ids from the pool (1 more to exclude are not in it)"
    assert not {3, 4} & set(selection.image_ids)


def test_greedi_options_are_checked(pool: Path) -> None:
    with pytest.raises(ValueError, match="partitions must be a positive integer"):
        select(pool, 10, partitions=0)
    with pytest.raises(ValueError, match="'candidates' universe only"):
        select(pool, 10, partitions=2, universe="pool")


def test_stages_check_their_inputs(pool: Path, tmp_path: Path) -> None:
    scores = score_uncertainty(pool, tmp_path / "scores")
    cands = oversample_instances(scores, tmp_path / "cands", 10)
    with pytest.raises(StageInputError, match="budget 10, not 11"):
        select_max_k_cover(pool, cands, tmp_path / "cover", 11)
    with pytest.raises(StageInputError, match=r"no candidates\.json"):
        select_max_k_cover(pool, scores, tmp_path / "cover", 10)
    with pytest.raises(ValueError, match="sigma"):
        select_max_k_cover(pool, cands, tmp_path / "cover", 10, sigma=2.0)


def test_oversample_stage_checks_alpha_and_budget(pool: Path, tmp_path: Path) -> None:
    scores = score_uncertainty(pool, tmp_path / "scores")
    for alpha in (-1.0, 0.5, float("nan")):  # a negative count would have sliced from the end
        with pytest.raises(ValueError, match="alpha must be >= beta"):
            oversample_instances(scores, tmp_path / "cands", 10, alpha)
    with pytest.raises(ValueError, match="budget must be a positive integer"):
        oversample_instances(scores, tmp_path / "cands", 2.5)  # type: ignore[arg-type]
    assert not (tmp_path / "cands").exists()


def test_stage_header_not_json_names_the_file(pool: Path, tmp_path: Path) -> None:
    scores = score_uncertainty(pool, tmp_path / "scores")
    (scores / "scores.json").write_text("{")
    with pytest.raises(StageInputError, match=r"scores\.json: not valid JSON"):
        oversample_instances(scores, tmp_path / "cands", 10)


def test_universe_pool(pool: Path) -> None:
    sel = select(pool, 10, universe="pool")
    assert len(sel.images) == 10 and sel.stats["chosen_instances"] == 15
    assert "of 900 pool" in sel.notes[-1]
    assert 0 < sel.stats["coverage"] <= 1


# ---------------------------------------------------------------- every strategy


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_is_deterministic_and_valid(pool: Path, strategy: str, tmp_path: Path) -> None:
    a = select(pool, 25, strategy, seed=3)
    b = select(pool, 25, strategy, seed=3)
    assert a.to_json() == b.to_json()
    assert len(a.images) == 25 and len(set(a.image_ids)) == 25
    assert [im.rank for im in a.images] == list(range(1, 26))
    pool_ids = set(score_pool(pool).image_ids.tolist())
    assert set(a.image_ids) <= pool_ids
    assert Selection.load(a.save(tmp_path / "s.json")).to_json() == a.to_json()
    data = json.loads(a.to_json())
    assert set(data) == {"schema", "version", "strategy", "params", "budget", "images", "instances", "notes", "stats"}
    assert set(data["params"]) == {
        "alpha",
        "beta",
        "sigma",
        "metric",
        "aggregation",
        "seed",
        "universe",
        "centre",
        "whiten",
    }
    assert set(data["stats"]) == {
        "pool_images",
        "pool_instances",
        "candidates",
        "chosen_instances",
        "filled",
        "coverage",
    }


def test_random_depends_on_seed(pool: Path) -> None:
    assert select(pool, 25, "random", seed=1).image_ids != select(pool, 25, "random", seed=2).image_ids


def test_uncertainty_baseline_order(pool: Path) -> None:
    scores = score_pool(pool, ["margin"])
    img_u = aggregate_images(scores.image_ids, scores.instance_image, scores.metrics["margin"], "sum")
    order = np.lexsort((scores.image_ids, -img_u))
    sel = select(pool, 15, "uncertainty", metric="margin", aggregation="sum")
    assert sel.image_ids == scores.image_ids[order[:15]].tolist()


def test_k_center_matches_brute_force() -> None:
    x = unit_rows(np.random.default_rng(0).standard_normal((40, 5)))
    chosen, _ = k_center(x, 8, first=3)
    ref = [3]
    for _ in range(7):
        dist = [min(1 - float(x[i] @ x[c]) for c in ref) if i not in ref else -1 for i in range(40)]
        ref.append(int(np.argmax(dist)))
    assert chosen.tolist() == ref


def test_diversity_covers_more_than_taudis(pool: Path) -> None:
    div = select(pool, 10, "diversity", sigma=0.8)
    assert div.stats["candidates"] == 900 and div.stats["chosen_instances"] == 15
    # Both choices scored on the whole pool's graph: diversity covers more of it than taudis,
    # whose cover is confined to the uncertain candidates.
    tau = select(pool, 10, "taudis", sigma=0.8)
    scores = score_pool(pool)
    emb = np.concatenate([np.load(p / "embeddings.npy").astype(np.float32) for p in scores.shard_paths])
    graph = similarity_graph(emb, 0.8)
    keys = zip(scores.instance_image.tolist(), scores.instance_index.tolist(), strict=True)
    row = {key: r for r, key in enumerate(keys)}
    covered = {
        sel.strategy: coverage_count(graph, np.array([row[(c.image_id, c.instance)] for c in sel.instances]))
        for sel in (div, tau)
    }
    assert covered["diversity"] == round(div.stats["coverage"] * 900)
    assert covered["diversity"] > covered["taudis"]


# ---------------------------------------------------------------- edge cases


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_pool_without_instances_still_yields_b_images(empty_pool: Path, strategy: str) -> None:
    sel = select(empty_pool, 3, strategy)
    assert len(sel.images) == 3
    assert "the pool has no predicted instance" in sel.notes
    if strategy in ("taudis", "diversity", "uncertainty", "coreset"):
        assert sel.image_ids == [1, 3, 5]  # every image has uncertainty 0: image id order
    if strategy in ("taudis", "diversity", "coreset"):
        assert all(im.filled for im in sel.images) and sel.stats["filled"] == 3


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_budget_above_pool_selects_whole_pool(empty_pool: Path, strategy: str) -> None:
    sel = select(empty_pool, 50, strategy)
    assert sorted(sel.image_ids) == [1, 3, 5, 7, 9] and sel.budget == 50
    assert any("exceeds the pool's 5 images: selecting the whole pool" in n for n in sel.notes)


def test_exclusion_leaves_zero_instance_images_in_pool(empty_pool: Path) -> None:
    sel = select(empty_pool, 10, exclude=[1, 9, 1234])
    assert sorted(sel.image_ids) == [3, 5, 7] and sel.stats["pool_images"] == 3


def test_coreset_image_whose_embeddings_cancel_is_not_an_empty_image(tmp_path: Path) -> None:
    # Image 5's two instances have opposite embeddings: their mean is zero, yet it has instances.
    emb = np.zeros((3, 4), np.float32)
    emb[0, 0], emb[1, 0], emb[2, 1] = 1.0, -1.0, 1.0
    write_shard(
        tmp_path / "s0",
        image_ids=[5, 6, 7],
        image_sizes=np.full((3, 2), 8),
        instance_image=np.array([5, 5, 6]),
        instance_index=np.array([0, 1, 0]),
        classes=np.zeros(3, np.int32),
        class_probs=np.full((3, 2), 0.5, np.float32),
        boxes=np.tile(np.array([[0, 0, 1, 1]], np.float32), (3, 1)),
        mask_probs=np.full((3, 2, 2), 0.5, np.float16),
        embeddings=emb,
        class_names=["a"],
    )
    sel = select(tmp_path, 3, "coreset")
    assert sorted(sel.image_ids[:2]) == [5, 6] and not any(im.filled for im in sel.images[:2])
    assert sel.image_ids[2] == 7 and sel.images[2].filled and "no predicted instance" in sel.images[2].reason


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_first_shard_empty_with_zero_width_embeddings(tmp_path: Path, strategy: str) -> None:
    # The contract lets a shard without instances have (0, 0) embeddings; the shards after it have width 8.
    cols = shard_columns(PoolSpec(num_instances=0, seed=1, mask_size=4, embedding_dim=8), 0, 0)
    cols |= {"embeddings": np.zeros((0, 0), np.float32), "image_ids": [1000, 1001], "image_sizes": np.full((2, 2), 32)}
    write_shard(tmp_path / "a", **cols)
    write_shard(tmp_path / "b", **shard_columns(PoolSpec(num_instances=50, seed=1, mask_size=4, embedding_dim=8), 0, 0))
    sel = select(tmp_path, 3, strategy, universe="pool" if strategy == "taudis" else "candidates")
    assert len(sel.images) == 3
    if strategy != "random":  # the others take images with instances first
        assert not {1000, 1001} & set(sel.image_ids)


def test_images_without_instances_in_a_real_pool(pool: Path) -> None:
    scores = score_pool(pool)
    has = set(scores.instance_image.tolist())
    empty = [i for i in scores.image_ids.tolist() if i not in has]
    assert empty, "the synthetic pool has images without instances"
    sel = select(pool, len(scores.image_ids), "uncertainty")
    assert sel.image_ids[-len(empty) :] == sorted(empty)


# ---------------------------------------------------------------- JSON and CLI


def test_selection_json_errors(tmp_path: Path) -> None:
    with pytest.raises(SelectionFormatError, match="not valid JSON"):
        Selection.from_json("{")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"schema": "taudis.selection", "version": 9}))
    with pytest.raises(SelectionFormatError, match=r"bad.json: field 'version'"):
        Selection.load(bad)
    bad.write_text(json.dumps({"schema": "taudis.selection", "version": 1}))
    with pytest.raises(SelectionFormatError, match="missing field 'strategy'"):
        Selection.load(bad)


def test_cli_writes_selection(pool: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sel.json"
    (tmp_path / "labelled.txt").write_text("# labelled\n1\n2\n")
    argv = ["--instances", str(pool), "--budget", "7", "--strategy", "taudis", "--sigma", "0.7"]
    assert cli_main([*argv, "--exclude", str(tmp_path / "labelled.txt"), "--out", str(out)]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("taudis: selected 7 of") and str(out) in line
    sel = Selection.load(out)
    assert len(sel.images) == 7 and sel.params["sigma"] == 0.7 and not {1, 2} & set(sel.image_ids)
    assert sel.to_json() == select(pool, 7, sigma=0.7, exclude=[1, 2]).to_json()


def test_cli_reports_bad_input(pool: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["--instances", str(pool), "--budget", "0", "--out", str(tmp_path / "x.json")]) == 2
    assert "budget must be a positive integer" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def test_cli_names_what_it_cannot_write_or_read(pool: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "folder").mkdir()
    (tmp_path / "huge.txt").write_text("99999999999999999999\n")
    cases = [
        (["--out", str(tmp_path / "folder")], "is a folder"),
        (["--out", str(tmp_path / "x.json"), "--exclude", str(tmp_path / "huge.txt")], "huge.txt, line 1"),
    ]
    for extra, words in cases:
        assert cli_main(["--instances", str(pool), "--budget", "3", *extra]) == 2
        assert words in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder", "huge.txt"]  # nothing half written


def test_taudis_cli_dispatches_select(pool: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from taudis.cli import main as taudis_main

    out = tmp_path / "s.json"
    assert (
        taudis_main(["select", "--instances", str(pool), "--budget", "4", "--strategy", "random", "--out", str(out)])
        == 0
    )
    assert "random: selected 4 of" in capsys.readouterr().out
    assert Selection.load(out).image_ids == select(pool, 4, "random").image_ids


def test_centred_embeddings_thin_a_graph_of_post_relu_embeddings(tmp_path: Path) -> None:
    """Embeddings with no negative entry (as the mask head's) link most pairs raw; centred, far fewer."""
    from taudis.select.cover import cover_embeddings
    from taudis.select.strategies import cover_step

    rng = np.random.default_rng(0)
    emb = np.maximum(rng.standard_normal((200, 16)) + 1.5, 0).astype(np.float32)
    u = rng.random(200)
    raw = cover_step(emb, u, 20, 1.5, 0.8)
    centred = cover_step(emb, u, 20, 1.5, 0.8, centre=True)
    assert raw.coverage > 0.9 > centred.coverage  # the raw graph is nearly complete
    direct = cover_embeddings(emb - emb.mean(axis=0, keepdims=True), u, 30, 0.8)
    assert centred.chosen.tolist() == direct.chosen.tolist()
