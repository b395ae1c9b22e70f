"""TAUDIS as four file-based stages, one per pipeline component: paths in, path out.

score_uncertainty -> oversample_instances -> select_max_k_cover -> vote_images. Each stage
calls the same step functions as :func:`taudis.select.strategies.select`, so running the four
stages gives exactly the Selection that ``select(strategy="taudis")`` gives. The intermediate
directories are small columnar tables: ``.npy`` arrays plus one JSON header each.
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np

from taudis.data.instances import list_shards, read_shard
from taudis.select.pool import (
    budget_notes,
    check_params,
    gather_embeddings,
    make_pool,
)
from taudis.select.selection import Selection
from taudis.select.space import pool_whitening
from taudis.select.strategies import (
    check_cover_options,
    cover_notes,
    cover_step,
    make_params,
    oversample_step,
    vote_step,
)
from taudis.select.uncertainty import DEFAULT_METRIC, METRICS, PoolScores, check_aggregation, score_pool

SCORES_SCHEMA = "taudis.scores"
CANDIDATES_SCHEMA = "taudis.candidates"
COVER_SCHEMA = "taudis.cover"
VERSION = 1


class StageInputError(ValueError):
    """A stage's input directory is missing, of the wrong kind, or disagrees with its parameters."""


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")


def _read_header(directory: Path, name: str, schema: str) -> dict[str, Any]:
    file = directory / name
    if not file.is_file():
        raise StageInputError(f"{directory}: no {name} (not the output of the expected stage)")
    try:
        header = json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise StageInputError(f"{file}: not valid JSON: {err}") from err
    if not isinstance(header, dict):
        raise StageInputError(f"{file}: not a JSON object")
    if header.get("schema") != schema or header.get("version") != VERSION:
        raise StageInputError(
            f"{file}: field 'schema'/'version' is {header.get('schema')!r}/{header.get('version')!r}, "
            f"expected {schema!r}/{VERSION}"
        )
    return header


# ---------------------------------------------------------------- stage 1


def score_uncertainty(instances_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> Path:
    """Score every instance with every registered metric, streaming over the shards.

    Layout of ``out_dir``::

        scores.json           {"schema": "taudis.scores", "version": 1, "metrics": [...],
                               "num_instances": N, "num_images": M, "num_classes": K+1,
                               "shards": [{"name", "offset", "num_instances"}, ...]}
        image_ids.npy         int64   (M,)  every image id in the shards (the pool before exclusion), sorted
        instance_image.npy    int64   (N,)  image id of each instance, global order (shards by name, rows)
        instance_index.npy    int64   (N,)  instance index within its image
        metric_<name>.npy     float64 (N,)  one per metric of taudis.select.uncertainty.METRICS

    Returns:
        ``out_dir``.
    """
    out = Path(out_dir)
    scores = score_pool(instances_dir, METRICS)
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "image_ids.npy", scores.image_ids)
    np.save(out / "instance_image.npy", scores.instance_image)
    np.save(out / "instance_index.npy", scores.instance_index)
    for name, values in scores.metrics.items():
        np.save(out / f"metric_{name}.npy", values)
    offsets = scores.shard_offsets.tolist()
    shards = [
        {"name": p.name, "offset": offsets[i], "num_instances": offsets[i + 1] - offsets[i]}
        for i, p in enumerate(scores.shard_paths)
    ]
    header = {
        "schema": SCORES_SCHEMA,
        "version": VERSION,
        "metrics": list(METRICS),
        "num_instances": scores.num_instances,
        "num_images": int(scores.image_ids.shape[0]),
        "num_classes": scores.num_classes,
        "shards": shards,
    }
    _write_json(out / "scores.json", header)
    return out


def read_scores(scores_dir: str | os.PathLike[str], metrics: Collection[str] = METRICS) -> PoolScores:
    """Load stage 1's output (shard paths are the bare shard names; resolve them with the shards' root)."""
    d = Path(scores_dir)
    header = _read_header(d, "scores.json", SCORES_SCHEMA)
    shards = header["shards"]
    offsets = [s["offset"] for s in shards] + [header["num_instances"]]
    return PoolScores(
        shard_paths=[Path(s["name"]) for s in shards],
        shard_offsets=np.asarray(offsets, dtype=np.int64),
        image_ids=np.load(d / "image_ids.npy"),
        instance_image=np.load(d / "instance_image.npy"),
        instance_index=np.load(d / "instance_index.npy"),
        num_classes=int(header["num_classes"]),
        metrics={m: np.load(d / f"metric_{m}.npy") for m in metrics},
    )


# ---------------------------------------------------------------- stage 2


def oversample_instances(
    scores_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    budget: int,
    alpha: float = 2.5,
    metric: str = DEFAULT_METRIC,
    *,
    exclude: Collection[int] = (),
) -> Path:
    """Keep the top ceil(alpha * B) pool instances by ``metric`` (ties: lower global index).

    B is capped at the pool's images. Layout of ``out_dir``::

        candidates.json            {"schema": "taudis.candidates", "version": 1, "budget", "alpha",
                                    "metric", "num_candidates", "shards" (from scores.json), "notes"}
        candidates.npy             int64   (C,)  global instance indices, most uncertain first
        candidate_uncertainty.npy  float64 (C,)
        excluded.npy               int64   (E,)  image ids excluded from the pool, sorted unique

    Returns:
        ``out_dir``.
    """
    # beta and sigma belong to the cover stage; alpha >= beta >= 1 there, so alpha >= 1 here.
    check_params(budget, "taudis", alpha, 1.0, 0.0, metric, "mean")
    d = Path(scores_dir)
    header = _read_header(d, "scores.json", SCORES_SCHEMA)
    scores = read_scores(d, [metric])
    pool = make_pool(scores.image_ids, scores.instance_image, exclude)
    cands = oversample_step(scores.metrics[metric], pool.eligible, min(budget, pool.num_images), alpha)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "candidates.npy", cands.indices)
    np.save(out / "candidate_uncertainty.npy", cands.uncertainty)
    np.save(out / "excluded.npy", pool.excluded)
    _write_json(
        out / "candidates.json",
        {
            "schema": CANDIDATES_SCHEMA,
            "version": VERSION,
            "budget": int(budget),
            "alpha": float(alpha),
            "metric": metric,
            "num_candidates": int(cands.indices.size),
            "shards": header["shards"],
            "notes": cands.notes,
        },
    )
    return out


# ---------------------------------------------------------------- stage 3


def _shard_paths(instances_dir: Path, shards: list[dict[str, Any]]) -> tuple[list[Path], np.ndarray]:
    found = {p.name: p for p in list_shards(instances_dir)}
    names = [s["name"] for s in shards]
    missing = [n for n in names if n not in found]
    if missing or len(found) != len(names):
        raise StageInputError(
            f"{instances_dir}: shards {sorted(found)} differ from the scored shards {names} (missing: {missing})"
        )
    offsets = [s["offset"] for s in shards] + [(shards[-1]["offset"] + shards[-1]["num_instances"]) if shards else 0]
    return [found[n] for n in names], np.asarray(offsets, dtype=np.int64)


def select_max_k_cover(
    instances_dir: str | os.PathLike[str],
    candidates_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    budget: int,
    beta: float = 1.5,
    sigma: float = 0.8,
    *,
    universe: str = "candidates",
    partitions: int = 1,
    seed: int = 0,
    centre: bool = False,
    whiten: bool = False,
) -> Path:
    """Greedy max k-cover of ceil(beta * B) candidates on the graph cos >= sigma.

    ``partitions`` > 1 covers by GreeDi over that many random parts (``seed``); ``centre``
    centres the embeddings first, ``whiten`` whitens them on the pool's statistics
    (taudis.select.strategies.cover_step).

    Reads only the candidates' embeddings from the shards (with ``universe="pool"`` or
    ``whiten``, every pool instance's). Layout of ``out_dir``::

        cover.json    {"schema": "taudis.cover", "version": 1, "budget", "alpha", "beta", "sigma",
                       "metric", "universe", "centre", "whiten", "num_candidates", "k", "covered", "universe_size",
                       "coverage", "shards", "partitions",
                       "notes" (the oversampling's notes, then the cover's)}
        chosen.npy    int64 (k,)  global instance indices in choice order
        excluded.npy  int64 (E,)  carried over from the candidates

    Returns:
        ``out_dir``.
    """
    check_cover_options(universe, partitions)
    cdir = Path(candidates_dir)
    header = _read_header(cdir, "candidates.json", CANDIDATES_SCHEMA)
    check_params(budget, "taudis", header["alpha"], beta, sigma, header["metric"], "mean")
    if header["budget"] != budget:
        raise StageInputError(f"{cdir}: candidates were drawn for budget {header['budget']}, not {budget}")
    candidates = np.load(cdir / "candidates.npy")
    cand_u = np.load(cdir / "candidate_uncertainty.npy")
    excluded = np.load(cdir / "excluded.npy")
    paths, offsets = _shard_paths(Path(instances_dir), header["shards"])
    emb = gather_embeddings(paths, offsets, candidates)
    pool_emb = pool_rows = whitening = None
    if universe == "pool" or whiten:
        parts = [np.asarray(read_shard(p, validate=False).instance_image) for p in paths]
        image_of = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        all_rows = np.flatnonzero(~np.isin(image_of, excluded))
        if whiten:
            whitening = pool_whitening(paths, offsets, all_rows)
    if universe == "pool":
        pool_emb = gather_embeddings(paths, offsets, all_rows)
        pool_rows = np.searchsorted(all_rows, candidates)
    images_budget = _pool_budget(budget, paths, excluded)
    result = cover_step(
        emb,
        cand_u,
        images_budget,
        beta,
        sigma,
        universe=universe,
        pool_embeddings=pool_emb,
        candidate_pool_rows=pool_rows,
        partitions=partitions,
        seed=seed,
        centre=centre,
        whitening=whitening,
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "chosen.npy", candidates[result.chosen])
    np.save(out / "excluded.npy", excluded)
    _write_json(
        out / "cover.json",
        {
            "schema": COVER_SCHEMA,
            "version": VERSION,
            "budget": int(budget),
            "alpha": header["alpha"],
            "beta": float(beta),
            "sigma": float(sigma),
            "metric": header["metric"],
            "universe": universe,
            "centre": bool(centre),
            "whiten": bool(whiten),
            "num_candidates": int(candidates.size),
            "k": int(result.chosen.size),
            "covered": result.covered,
            "universe_size": result.universe,
            "coverage": result.coverage,
            "shards": header["shards"],
            "partitions": int(partitions),
            "notes": header["notes"] + cover_notes(result, int(candidates.size), universe, partitions),
        },
    )
    return out


def _pool_budget(budget: int, paths: list[Path], excluded: np.ndarray) -> int:
    # The effective budget is capped at the pool's images, as in select().
    ids = [np.asarray(read_shard(p, validate=False).image_ids) for p in paths]
    all_ids = np.concatenate(ids) if ids else np.zeros(0, np.int64)
    return min(budget, int((~np.isin(all_ids, excluded)).sum()))


# ---------------------------------------------------------------- stage 4


def vote_images(
    scores_dir: str | os.PathLike[str],
    cover_dir: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    budget: int,
    aggregation: str = "mean",
    *,
    seed: int = 0,
) -> Path:
    """Majority vote of the chosen instances into B images, fill included; writes the Selection.

    The metric, alpha, beta, sigma and exclusions come from ``cover_dir`` (the earlier stages'
    parameters). ``out_path`` receives the Selection JSON (taudis.select.selection).

    Returns:
        ``out_path``.
    """
    check_aggregation(aggregation)
    cdir = Path(cover_dir)
    header = _read_header(cdir, "cover.json", COVER_SCHEMA)
    if header["budget"] != budget:
        raise StageInputError(f"{cdir}: the cover was chosen for budget {header['budget']}, not {budget}")
    metric = header["metric"]
    scores = read_scores(scores_dir, [metric])
    pool = make_pool(scores.image_ids, scores.instance_image, np.load(cdir / "excluded.npy").tolist())
    params = make_params(
        header["alpha"],
        header["beta"],
        header["sigma"],
        metric,
        aggregation,
        seed,
        universe=header.get("universe", "candidates"),
        centre=bool(header.get("centre", False)),
        whiten=bool(header.get("whiten", False)),
    )
    selection: Selection = vote_step(
        strategy="taudis",
        params=params,
        budget=budget,
        pool=pool,
        instance_image=scores.instance_image,
        instance_index=scores.instance_index,
        uncertainty=scores.metrics[metric],
        chosen=np.load(cdir / "chosen.npy"),
        num_candidates=int(header["num_candidates"]),
        coverage=float(header["coverage"]),
        notes=budget_notes(budget, pool) + list(header["notes"]),
    )
    return selection.save(out_path)
