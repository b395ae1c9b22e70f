"""What the benchmark runs: datasets, strategies and their variants, seeds, and where each campaign lives.

A dataset is a COCO folder (``annotations/{train,pool,val}.json`` and ``images/``), the built-in
synthetic one, the second generated one (fluorescence nuclei, bench/datasets/cells.py), or any
COCO dataset a user points at with a pool file (fully labelled: the oracle's), a val file and an
image root. Per seed, the initial labelled set is drawn from the labelled pool (train + pool),
the same for every strategy and variant of that seed, so the strategies start from one place.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from taudis.select.uncertainty import AGGREGATIONS, BASE_METRICS, METRICS, RESCALINGS

DEFAULT_PARAMS: dict[str, Any] = {
    "alpha": 2.5,
    "beta": 1.5,
    "sigma": 0.8,
    "metric": "seg_entropy",
    "aggregation": "mean",
    "universe": "candidates",
    "centre": False,
}


@dataclass(frozen=True)
class Variant:
    """A strategy with its parameters, under a short name for tables."""

    name: str
    strategy: str
    params: dict[str, Any] = field(default_factory=dict)

    def full_params(self, defaults: dict[str, Any]) -> dict[str, Any]:
        return {**defaults, **self.params}


def main_variants(defaults: dict[str, Any]) -> list[Variant]:
    """TAUDIS and every baseline, with the run's parameters (the same for all of them)."""
    return [Variant(s, s) for s in ("taudis", "uncertainty", "random", "coreset", "diversity")]


def ablation_variants() -> list[Variant]:
    """One factor at a time around the defaults: the cover's knobs, then the metrics and aggregations.

    ``taudis beta=2.5`` chooses every oversampled candidate (k = ceil(beta B) = ceil(alpha B)), so
    the cover has no say: the difference to the default is what the diversity step adds.
    """
    variants = [Variant("taudis", "taudis"), Variant("uncertainty", "uncertainty"), Variant("random", "random")]
    variants.append(Variant("taudis beta=2.5 (no diversity)", "taudis", {"beta": 2.5}))
    for sigma in (0.9, 0.95):
        variants.append(Variant(f"taudis sigma={sigma:g}", "taudis", {"sigma": sigma}))
    for sigma in (0.3, 0.5):
        variants.append(Variant(f"taudis centre sigma={sigma:g}", "taudis", {"centre": True, "sigma": sigma}))
    for alpha in (5.0, 10.0):
        variants.append(Variant(f"taudis alpha={alpha:g}", "taudis", {"alpha": alpha}))
    variants.append(Variant("taudis universe=pool", "taudis", {"universe": "pool"}))
    for strategy in ("taudis", "uncertainty"):
        for metric in ablation_metrics(strategy):
            variants.append(Variant(f"{strategy} metric={metric}", strategy, {"metric": metric}))
        for agg in AGGREGATIONS:
            if agg != DEFAULT_PARAMS["aggregation"]:
                variants.append(Variant(f"{strategy} aggregation={agg}", strategy, {"aggregation": agg}))
    return variants


def ablation_metrics(strategy: str) -> tuple[str, ...]:
    """Every metric that can change the batch, the default excepted; rescalings select what their
    metric selects (:data:`RESCALINGS`). The combinations are tried with TAUDIS only, which keeps
    the ablation within hours on 2 cores; uncertainty-only tries the base metrics."""
    names = METRICS if strategy == "taudis" else BASE_METRICS
    return tuple(m for m in names if m != DEFAULT_PARAMS["metric"] and m not in RESCALINGS)


@dataclass(frozen=True)
class Dataset:
    """A dataset's files as campaigns read them."""

    name: str
    root: Path  # where the benchmark keeps its derived files (initial sets, merged pool)
    pool: Path  # COCO of every image that may be labelled, with ground truth (the oracle's)
    val: Path
    image_root: Path
    initial_size: int

    def initial(self, seed: int) -> Path:
        """The seed's initial labelled set: ``initial_size`` images of the pool, drawn with ``seed``."""
        path = self.root / f"initial-s{seed}.json"
        if not path.is_file():
            pool = json.loads(self.pool.read_text())
            ids = sorted(int(im["id"]) for im in pool["images"])
            chosen = set(np.random.default_rng([seed, 11]).choice(ids, size=self.initial_size, replace=False).tolist())
            subset = {
                "images": [im for im in pool["images"] if im["id"] in chosen],
                "annotations": [a for a in pool["annotations"] if a["image_id"] in chosen],
                "categories": pool["categories"],
            }
            path.write_text(json.dumps(subset))
        return path

    def describe(self) -> dict[str, Any]:
        pool = json.loads(self.pool.read_text())
        val = json.loads(self.val.read_text())
        names = {c["id"]: c["name"] for c in pool["categories"]}
        per_class: dict[str, int] = {}
        for ann in pool["annotations"]:
            per_class[names[ann["category_id"]]] = per_class.get(names[ann["category_id"]], 0) + 1
        strata: dict[str, int] = {}
        for image in pool["images"]:
            strata[str(image.get("stratum", "-"))] = strata.get(str(image.get("stratum", "-")), 0) + 1
        return {
            "name": self.name,
            "pool_images": len(pool["images"]),
            "pool_instances": len(pool["annotations"]),
            "instances_per_class": per_class,
            "images_per_stratum": strata,
            "val_images": len(val["images"]),
            "val_instances": len(val["annotations"]),
            "initial_labelled": self.initial_size,
        }


def prepare_dataset(name: str, work: Path, *, initial: int = 10, images: int = 500) -> Dataset:
    """The built-in ``synthetic`` or ``cells`` dataset (made once under ``work``), or a COCO folder ``name``."""
    root = work / "datasets" / Path(name).name
    root.mkdir(parents=True, exist_ok=True)
    data = root / "data"
    if name == "synthetic":
        if not (data / "dataset.json").is_file():
            from taudis.data.synth import make_synthetic_dataset

            make_synthetic_dataset(data, num_images=images, seed=0)
    elif name == "cells":
        if not (data / "dataset.json").is_file():
            from bench.datasets.cells import make_cells_dataset

            make_cells_dataset(data, num_images=images, seed=0)
    else:
        data = Path(name)
    return coco_folder(Path(name).name, data, root, initial)


def coco_folder(name: str, data: Path, root: Path, initial: int) -> Dataset:
    """A COCO folder's splits: the labelled pool is train + pool (the initial set is drawn per seed)."""
    merged = root / "pool-all.json"
    if not merged.is_file():
        parts = [json.loads((data / "annotations" / f"{split}.json").read_text()) for split in ("train", "pool")]
        annotations = []
        for part in parts:
            for ann in part["annotations"]:
                annotations.append({**ann, "id": len(annotations) + 1})
        merged.write_text(
            json.dumps({"images": parts[0]["images"] + parts[1]["images"], "annotations": annotations,
                        "categories": parts[0]["categories"]})
        )  # fmt: skip
    return Dataset(name, root, merged, data / "annotations" / "val.json", data / "images", initial)


# The parameters each strategy's choice depends on: a campaign's key holds only these, so that
# changing TAUDIS's defaults reruns TAUDIS, not the baselines that never read them.
USED_PARAMS = {
    "random": (),
    "uncertainty": ("metric", "aggregation"),
    "coreset": (),
    "diversity": ("beta", "sigma", "metric", "aggregation", "universe", "centre"),
    "taudis": tuple(DEFAULT_PARAMS),
}


@dataclass(frozen=True)
class Spec:
    """One campaign of the benchmark."""

    dataset: str
    variant: Variant
    seed: int
    rounds: int
    budget: int
    config: str
    train_opts: str
    finetune: bool
    defaults: dict[str, Any]

    @property
    def params(self) -> dict[str, Any]:
        return self.variant.full_params(self.defaults)

    @property
    def key(self) -> str:
        """A folder name that changes whenever anything that shapes the campaign changes (the config's content too)."""
        from taudis.model.config import resolve_config_path

        path = resolve_config_path(self.config)
        # The config and every config beside it (its _BASE_ chain lives there too).
        config = hashlib.sha256(b"".join(p.read_bytes() for p in sorted(path.parent.glob("*.yaml")))).hexdigest()
        used = {k: self.params[k] for k in USED_PARAMS[self.variant.strategy]}
        text = json.dumps(
            [self.variant.strategy, used, self.rounds, self.budget, config, self.train_opts, self.finetune],
            sort_keys=True,
        )
        slug = self.variant.name.replace(" ", "_").replace("=", "-")
        return f"{slug}-s{self.seed}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "variant": asdict(self.variant)}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Spec:
        return cls(**{**doc, "variant": Variant(**doc["variant"])})
