"""The ablation: every variant chooses one batch from the same model's predictions; each batch is then scored.

Whole campaigns per variant would cost hours each; a one-round ablation isolates what the
selection itself contributes. Per dataset and seed: the initial labelled set plus ``base_extra``
images drawn at random is the base set; a model trained on it predicts the rest of the pool
(once). Every variant selects ``budget`` images from those predictions; the base set plus the
batch is trained from scratch with the campaign's schedule and evaluated on the val split. Two
variants that choose the same images share one training. The functions are the ones the
pipeline's components call (taudis.select.select, train_model, infer_instances, evaluate_model).

Layout under ``<work>/ablation/<dataset>/s<seed>-<hash of what shapes the base model>/``::

    base.json, base-model/, shards/     the base set, its model and the pool's predictions
    shards-<layer>/                     the same predictions embedded by another layer
    batches/<hash>/                     labelled.json, model/, metrics.json of one chosen set
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from bench.al_benchmark.diagnostics import cover_diagnostics
from bench.al_benchmark.files import locked, write_json
from bench.al_benchmark.plan import DEFAULT_EMBEDDING_LAYER, DEFAULT_PARAMS, Dataset, Spec
from taudis.data.coco import subset_coco


def _train(labelled: Path, dataset: Dataset, out: Path, spec: Spec, threads: int) -> dict[str, Any]:
    """Train on ``labelled`` and evaluate on val, once (later calls read the result)."""
    from taudis.model.evaluate import evaluate_model
    from taudis.model.train import train_model

    result = out / "metrics.json"
    with locked(out):
        if result.is_file():
            return dict(json.loads(result.read_text()))
        opts = [*spec.train_opts.split(), "TAUDIS.NUM_THREADS", str(threads)]
        train = train_model(
            str(labelled), str(dataset.image_root), str(out / "model"), config=spec.config, opts=opts, seed=spec.seed
        )
        report = evaluate_model(str(out / "model"), str(dataset.val), str(dataset.image_root))
        metrics = {
            "labelled_images": len(json.loads(labelled.read_text())["images"]),
            "mask_ap": float(report["segm"]["AP"] or 0.0),
            "mask_ap50": float(report["segm"]["AP50"] or 0.0),
            "box_ap": float(report["bbox"]["AP"] or 0.0),
            "iterations": train["iterations"],
            "train_seconds": train["seconds"],
        }
        result.write_text(json.dumps(metrics))
        return metrics


def base_state(dataset: Dataset, spec: Spec, base_extra: int, threads: int) -> tuple[Path, Path, dict[str, Any]]:
    """(base set, the pool's predictions by the base model, the base model's metrics) for the spec's seed."""
    from taudis.model.infer import infer_instances

    folder = dataset.root.parent.parent / "ablation" / dataset.name / spec.base_key(base_extra)
    base, shards = folder / "base.json", folder / "shards"
    pool = json.loads(dataset.pool.read_text())
    with locked(folder / "base"):
        if not base.is_file():
            initial = {im["id"] for im in json.loads(dataset.initial(spec.seed).read_text())["images"]}
            rest = sorted({im["id"] for im in pool["images"]} - initial)
            extra = np.random.default_rng([spec.seed, 23]).choice(rest, size=base_extra, replace=False).tolist()
            write_json(base, subset_coco(pool, initial | set(extra)))
    metrics = _train(base, dataset, folder / "base-model", spec, threads)
    with locked(shards):
        if not (shards / "done").is_file():
            labelled = {im["id"] for im in json.loads(base.read_text())["images"]}
            unlabelled = folder / "unlabelled.json"
            others = [im["id"] for im in pool["images"] if im["id"] not in labelled]
            write_json(unlabelled, subset_coco(pool, others, keep_annotations=False))
            infer_instances(str(folder / "base-model" / "model"), str(unlabelled), str(dataset.image_root), str(shards))
            (shards / "done").write_text("")
    return base, shards, metrics


def layer_shards(shards: Path, dataset: Dataset, layer: str) -> Path:
    """The base model's predictions of the pool (``shards``) embedded by ``layer`` instead: the same
    detections (inferred again once, beside them), other embeddings."""
    from taudis.model.infer import infer_instances

    if layer == DEFAULT_EMBEDDING_LAYER:
        return shards
    folder = shards.parent
    other = folder / f"shards-{layer}"
    with locked(other):
        if not (other / "done").is_file():
            unlabelled, model = folder / "unlabelled.json", folder / "base-model" / "model"
            infer_instances(str(model), str(unlabelled), str(dataset.image_root), str(other), embedding_layer=layer)
            (other / "done").write_text("")
    return other


def run_variant(spec: Spec, dataset: Dataset, work: Path, threads: int, base_extra: int) -> dict[str, Any]:
    """One variant's batch from the shared predictions, scored by training on base + batch."""
    from taudis.select import select

    os.environ["OMP_NUM_THREADS"] = str(threads)
    base, shards, base_metrics = base_state(dataset, spec, base_extra, threads)
    shards = layer_shards(shards, dataset, spec.variant.embedding_layer)
    params = spec.params
    selection = select(
        shards, spec.budget, spec.variant.strategy, seed=spec.seed,
        **{k: params[k] for k in DEFAULT_PARAMS},
    )  # fmt: skip
    chosen = sorted(selection.image_ids)
    key = hashlib.sha256(json.dumps([spec.seed, chosen]).encode()).hexdigest()[:12]
    batch = base.parent / "batches" / key
    labelled = batch / "labelled.json"
    pool = json.loads(dataset.pool.read_text())
    with locked(batch / "set"):
        if not labelled.is_file():
            have = {im["id"] for im in json.loads(base.read_text())["images"]}
            labelled.parent.mkdir(parents=True, exist_ok=True)
            write_json(labelled, subset_coco(pool, have | set(chosen)))
    metrics = _train(labelled, dataset, batch, spec, threads)
    strata = {im["id"]: str(im.get("stratum", "easy")) for im in pool["images"]}
    unc = select(shards, spec.budget, "uncertainty", metric=params["metric"], aggregation=params["aggregation"])
    row = {
        "dataset": dataset.name,
        "variant": spec.variant.name,
        "key": spec.key,
        "strategy": spec.variant.strategy,
        "seed": spec.seed,
        "batch": key,
        "base_mask_ap": base_metrics["mask_ap"],
        **metrics,
        "hard_share": sum(strata[i] not in ("easy", "sparse") for i in chosen) / len(chosen),
        "overlap_with_uncertainty": len(set(unc.image_ids) & set(chosen)) / len(chosen),
        "filled": selection.stats["filled"],
        "coverage": selection.stats["coverage"],
    }
    if spec.variant.strategy == "taudis":
        row.update(cover_diagnostics(shards, spec.budget, params))
    return row
