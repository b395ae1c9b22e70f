"""What a round's selection looked like, measured on the predictions it was made from.

For each selection round of a campaign: how many chosen instances each chosen image holds, what
share of the chosen images are hard tiles (any stratum but the easy one), how far the batch is
from the one uncertainty-only would have chosen on the same predictions, and for the cover: the
similarity graph's edge density among the oversampled candidates at several sigmas (on the raw
embeddings and on embeddings centred on the candidates' mean) and on the graph the cover ran on
(its sigma, in its space: raw, centred or whitened), and the pick at which the greedy
cover stopped gaining (after it, picks are decided by the uncertainty tie-break alone).
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

SIGMAS = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98)
EASY_STRATA = ("easy", "sparse")


def find_shards(kfp_root: Path, model_dir: Path, chosen: list[int]) -> Path | None:
    """A folder of the instance shards that the round's model predicted for its pool, or None.

    A shard belongs to the round when its header names the round's model (model_id, a hash of
    its weights) and it holds the chosen images (core-set rounds also embed the labelled set).
    """
    from taudis.model.infer import model_id_of

    if not (model_dir / "model_final.pth").is_file():
        return None
    model_id = model_id_of(model_dir)
    wanted = set(chosen)
    found = []
    for header in kfp_root.rglob("shard-*/header.json"):
        if json.loads(header.read_text()).get("model_id") != model_id:
            continue
        ids = set(np.load(header.parent / "image_ids.npy").tolist())
        if ids & wanted:
            found.append(header.parent)
    if not found or not wanted <= set().union(*(set(np.load(p / "image_ids.npy").tolist()) for p in found)):
        return None
    folder = Path(tempfile.mkdtemp(prefix="taudis-diag-"))
    for index, shard in enumerate(sorted(found)):
        (folder / f"{index:03d}-{shard.name}").symlink_to(shard.resolve(), target_is_directory=True)
    return folder


def _density(embeddings: np.ndarray, sigma: float) -> float:
    from taudis.select.graph import similarity_graph

    n = embeddings.shape[0]
    if n < 2:
        return math.nan
    return similarity_graph(embeddings, sigma).num_edges / (n * (n - 1))


def _centred(embeddings: np.ndarray) -> np.ndarray:
    x = embeddings - embeddings.mean(axis=0, keepdims=True)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


def cover_diagnostics(shards: Path, budget: int, params: dict[str, Any]) -> dict[str, Any]:
    """Edge densities among the candidates and the pick at which the cover stopped gaining."""
    from taudis.select.cover import coverage_count, greedy_cover
    from taudis.select.graph import similarity_graph, unit_rows
    from taudis.select.pool import gather_embeddings, make_pool, scaled_budget
    from taudis.select.space import pool_whitening
    from taudis.select.strategies import cover_space, oversample_step
    from taudis.select.uncertainty import score_pool

    scores = score_pool(shards, [params["metric"]])
    pool = make_pool(scores.image_ids, scores.instance_image, ())
    u = scores.metrics[params["metric"]]
    b = min(budget, pool.num_images)
    candidates = oversample_step(u, pool.eligible, b, params["alpha"])
    emb = gather_embeddings(scores.shard_paths, scores.shard_offsets, candidates.indices).astype(np.float32)
    out: dict[str, Any] = {"candidates": int(candidates.indices.size)}
    for sigma in SIGMAS:
        out[f"density_raw_{sigma:g}"] = _density(emb, sigma)
        out[f"density_centred_{sigma:g}"] = _density(_centred(emb), sigma)
    if emb.shape[0] >= 2:
        whitening = None
        if params.get("whiten"):
            rows = np.flatnonzero(pool.eligible)
            whitening = pool_whitening(scores.shard_paths, scores.shard_offsets, rows)
        space, _ = cover_space(emb, None, centre=bool(params.get("centre")), whitening=whitening)
        unit = unit_rows(space)
        pairs = unit @ unit.T
        out["median_cosine"] = float(np.median(pairs[np.triu_indices(emb.shape[0], 1)]))
        graph = similarity_graph(unit, params["sigma"])  # the graph the cover was run on
        out["density_cover"] = graph.num_edges / (emb.shape[0] * (emb.shape[0] - 1))
        k = scaled_budget(params["beta"], b)
        result = greedy_cover(graph, candidates.uncertainty, k)
        counts = [coverage_count(graph, result.chosen[: i + 1]) for i in range(result.chosen.size)]
        out["cover_k"] = int(result.chosen.size)
        out["cover_coverage"] = result.coverage
        out["cover_saturated_at"] = int(counts.index(counts[-1]) + 1) if counts else 0
    return out


def round_diagnostics(
    selection: dict[str, Any], model_dir: Path, kfp_root: Path, dataset: Any, params: dict[str, Any]
) -> dict[str, Any]:
    """The diagnostics of one round's selection (the module docstring)."""
    from taudis.select import select

    chosen = [int(item["image_id"]) for item in selection["images"]]
    pool = {int(im["id"]): im for im in json.loads(Path(dataset.pool).read_text())["images"]}
    per_image: dict[int, int] = {}
    for item in selection.get("instances", []):
        per_image[int(item["image_id"])] = per_image.get(int(item["image_id"]), 0) + 1
    hard = [i for i in chosen if str(pool.get(i, {}).get("stratum", "easy")) not in EASY_STRATA]
    out: dict[str, Any] = {
        "chosen_images": len(chosen),
        "filled": sum(bool(item.get("filled")) for item in selection["images"]),
        "hard_share": len(hard) / len(chosen) if chosen else math.nan,
        "instances_per_chosen_image": float(np.mean([per_image.get(i, 0) for i in chosen])) if per_image else math.nan,
    }
    shards = find_shards(kfp_root, model_dir, chosen)
    if shards is None:
        return out
    unc = select(shards, len(chosen), "uncertainty", metric=params["metric"], aggregation=params["aggregation"])
    out["overlap_with_uncertainty"] = len(set(unc.image_ids) & set(chosen)) / len(chosen) if chosen else math.nan
    if selection["strategy"] == "taudis":
        out.update(cover_diagnostics(shards, int(selection["budget"]), params))
    return out
