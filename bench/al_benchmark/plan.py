"""What the benchmark runs: datasets, strategies and their variants, seeds, and where each campaign lives.

A dataset is the built-in synthetic one, the second generated one (fluorescence nuclei,
bench/datasets/cells.py), or any COCO folder a user points at: ``annotations/pool.json`` (fully
labelled: the oracle's), ``annotations/val.json`` (held out), optionally
``annotations/train.json`` (an initial labelled set), and ``images/``. The labelled pool is
train + pool. Per seed, the initial labelled set is drawn from it (``--initial N``) or is the
folder's own train.json (``--initial given``), the same for every strategy and variant of that
seed, so the strategies start from one place.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.al_benchmark.files import locked, write_json
from taudis.data.coco import (
    annotation_warnings,
    inspect_image_files,
    load_coco,
    missing_file_hint,
    normal_file_name,
    nothing_to_score,
    subset_coco,
    unlabelled_categories,
)
from taudis.model import numerics
from taudis.select.pool import UNIVERSES
from taudis.select.uncertainty import (
    AGGREGATIONS,
    BASE_METRICS,
    METRICS,
    RESCALINGS,
    check_aggregation,
    check_metric,
)

INITIAL = 10  # images drawn per seed as the initial labelled set, unless told otherwise
GENERATED_IMAGES = 500  # size of a generated dataset, unless told otherwise
WARNINGS = "warnings.json"  # the folder check's warnings, written beside the merged pool

DEFAULT_PARAMS: dict[str, Any] = {
    "alpha": 2.5,
    "beta": 1.5,
    "sigma": 0.8,
    "metric": "seg_entropy",
    "aggregation": "mean",
    "universe": "candidates",
    "centre": False,
    "whiten": False,
}
DEFAULT_EMBEDDING_LAYER = "mask_head"
# Parameters added after campaigns were recorded, at the value that chooses what was chosen
# before they existed: a key holds one only when it is set otherwise, so recorded keys stand.
LATER_PARAMS: dict[str, Any] = {"whiten": False}


@dataclass(frozen=True)
class Variant:
    """A strategy with its parameters, under a short name for tables."""

    name: str
    strategy: str
    params: dict[str, Any] = field(default_factory=dict)
    # what the pool's embeddings are (TAUDIS.EMBEDDING_LAYER, taudis.model.roi_heads): an
    # inference setting, so the ablation's variants share the base model whatever their layer
    embedding_layer: str = DEFAULT_EMBEDDING_LAYER

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
    # whitened (taudis.select.space): cosines spread out, so the cover binds at lower sigmas; with
    # wider oversampling it has more candidates to choose among
    variants.append(Variant("taudis whiten sigma=0.3", "taudis", {"whiten": True, "sigma": 0.3}))
    for alpha in (5.0, 10.0):
        variants.append(
            Variant(
                f"taudis whiten sigma=0.5 alpha={alpha:g}", "taudis", {"whiten": True, "sigma": 0.5, "alpha": alpha}
            )
        )
    for alpha in (5.0, 10.0):
        variants.append(Variant(f"taudis alpha={alpha:g}", "taudis", {"alpha": alpha}))
    # the FPN features the mask head reads: no ReLU, so cosines spread (median about 0.26 against 0.75)
    variants.append(Variant("taudis roi_features", "taudis", embedding_layer="roi_features"))
    variants.append(
        Variant("taudis roi_features sigma=0.6 alpha=5", "taudis", {"sigma": 0.6, "alpha": 5.0}, "roi_features")
    )
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


def parse_param(text: str) -> tuple[str, Any]:
    """``--param KEY=VALUE``: one of :data:`DEFAULT_PARAMS`, typed like its default, checked as
    taudis.select checks it (a bad value fails here, not hours later inside a campaign)."""
    key, sep, value = text.partition("=")
    if not sep or key not in DEFAULT_PARAMS:
        raise ValueError(f"--param {text!r}: KEY=VALUE with KEY one of {', '.join(DEFAULT_PARAMS)}")
    default = DEFAULT_PARAMS[key]
    try:
        typed: Any = {bool: _boolean, float: float, str: str}[type(default)](value)
        if key == "metric":
            check_metric(typed)
        elif key == "aggregation":
            check_aggregation(typed)
        elif key == "universe" and typed not in UNIVERSES:
            raise ValueError(f"unknown cover universe {typed!r}; known: {', '.join(UNIVERSES)}")
    except ValueError as err:
        raise ValueError(f"--param {text!r}: {err}") from err
    return key, typed


def _boolean(text: str) -> bool:
    if text.lower() not in ("true", "false"):
        raise ValueError(f"{text!r} is not true or false")
    return text.lower() == "true"


def parse_initial(text: str) -> int | None:
    """``--initial``: a number of images drawn per seed, or ``given`` (None): the folder's train.json."""
    if text == "given":
        return None
    try:
        number = int(text)
    except ValueError:
        number = -1
    if number < 1:
        raise ValueError(f"--initial {text!r}: a positive number of images, or 'given' (annotations/train.json)")
    return number


@dataclass(frozen=True)
class Dataset:
    """A dataset's files as campaigns read them."""

    name: str
    root: Path  # where the benchmark keeps its derived files (initial sets, merged pool)
    pool: Path  # COCO of every image that may be labelled, with ground truth (the oracle's)
    val: Path
    image_root: Path
    initial_size: int | None  # None: the initial set is the folder's train.json for every seed

    def initial(self, seed: int) -> Path:
        """The seed's initial labelled set: ``initial_size`` images of the pool drawn with ``seed``,
        or the folder's own train.json; either way a subset of :attr:`pool` (its image ids)."""
        if self.initial_size is None:
            return self.root / "initial-given.json"  # written with the merged pool
        path = self.root / f"initial-{self.initial_size}-s{seed}.json"
        with locked(path):
            if not path.is_file():
                pool = json.loads(self.pool.read_text())
                ids = sorted(int(im["id"]) for im in pool["images"])
                if self.initial_size >= len(ids):
                    raise ValueError(f"{self.pool}: --initial {self.initial_size} leaves no pool ({len(ids)} images)")
                chosen = np.random.default_rng([seed, 11]).choice(ids, size=self.initial_size, replace=False)
                write_json(path, subset_coco(pool, chosen.tolist()))
        return path

    def warnings(self) -> list[str]:
        """What the folder's check found valid but worth a look (crowd regions, unused classes,
        EXIF turns that keep the size...): ``taudis data check``'s warnings, for every split."""
        path = self.root / WARNINGS
        return list(json.loads(path.read_text())) if path.is_file() else []

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
            "initial_labelled": self.initial_size if self.initial_size is not None else "given",
        }


def prepare_dataset(name: str, work: Path, *, initial: int | None = INITIAL, images: int = GENERATED_IMAGES) -> Dataset:
    """The built-in ``synthetic`` or ``cells`` dataset (made once under ``work``), or a COCO folder ``name``.

    The dataset's name, in every table and folder, says what the data is and where campaigns
    start, so that results of different set-ups never mix: ``synthetic``, or ``synthetic-1000``
    for another size; ``<folder>-<hash of its annotation files>`` for a COCO folder (fixed files
    are another dataset); then ``-i<N>`` for an initial set other than 10 images, or ``-given``
    for the folder's train.json.
    """
    if name in ("synthetic", "cells"):
        label = name if images == GENERATED_IMAGES else f"{name}-{images}"
        data = work / "datasets" / label / "data"
        with locked(data):
            if not (data / "dataset.json").is_file():
                _generate(name, data, images)
    else:
        data = Path(name)
        digest = hashlib.sha256(b"".join(p.read_bytes() for p in _splits(data).values() if p.is_file()))
        label = f"{data.resolve().name}-{digest.hexdigest()[:8]}"
    suffix = "" if initial == INITIAL else "-given" if initial is None else f"-i{initial}"
    return coco_folder(label + suffix, data, work / "datasets" / label, initial)


def fit_problems(dataset: Dataset, config: str, train_opts: str) -> list[str]:
    """What of the pool does not fit ``config`` (taudis.model.fit: objects too small for its input,
    too many for its detections), said before hours of campaigns that would learn little."""
    from taudis.model.fit import for_config_file

    fit = for_config_file(load_coco(dataset.pool), config, train_opts)
    return [f"{dataset.name}: {problem}" for problem in (fit.problems() if fit is not None else ())]


def _generate(name: str, data: Path, images: int) -> None:
    if name == "synthetic":
        from taudis.data.synth import make_synthetic_dataset

        make_synthetic_dataset(data, num_images=images, seed=0)
    else:
        from bench.datasets.cells import make_cells_dataset

        make_cells_dataset(data, num_images=images, seed=0)


def _splits(data: Path) -> dict[str, Path]:
    """A dataset folder's annotation files (train.json may be absent)."""
    splits = {split: data / "annotations" / f"{split}.json" for split in ("train", "pool", "val")}
    for split in ("pool", "val"):
        if not splits[split].is_file():
            raise FileNotFoundError(f"{data}: no {splits[split]}; a dataset folder has annotations/pool.json "
                                    "(fully labelled), annotations/val.json and images/")  # fmt: skip
    return splits


def coco_folder(name: str, data: Path, root: Path, initial: int | None) -> Dataset:
    """A COCO folder's splits, checked once: the labelled pool is train + pool (merged under
    ``root``, which is the files' version's own), val is held out.

    Exports number each file's images from 1, so train and pool may share image ids: the pool's
    clashing images get new ids (their annotations follow). An image in both files, or in val
    and the pool, is an error: its labels would be ambiguous, or val would not be held out.
    """
    splits = _splits(data)
    if initial is None and not splits["train"].is_file():
        raise FileNotFoundError(f"{data}: --initial given needs {splits['train']} (the initial labelled set)")
    merged, given, warned = root / "pool-all.json", root / "initial-given.json", root / WARNINGS
    with locked(merged):
        if not (merged.is_file() and given.is_file() and warned.is_file()):
            found = {split: load_coco(path) for split, path in splits.items() if path.is_file()}
            warnings = _check_splits(found, splits, data / "images")
            pool, train_ids = _merge(found.get("train"), found["pool"])
            warnings += [f"{splits['pool']}: {w}" for w in unlabelled_categories(pool)]  # train's labels count
            write_json(given, subset_coco(pool, train_ids))
            write_json(warned, warnings)
            write_json(merged, pool)  # last: its presence says the check is done
    if initial is None and not json.loads(given.read_text())["images"]:
        raise ValueError(f"{splits['train']}: no images; --initial given needs an initial labelled set there")
    return Dataset(name, root, merged, splits["val"], data / "images", initial)


def _check_splits(found: dict[str, dict[str, Any]], paths: dict[str, Path], images: Path) -> list[str]:
    """Same categories in every split, val apart from the labelled pool, every image file present,
    objects to score in val and to label in the pool; returns the splits' warnings (named by file)."""
    categories = {split: sorted((c["id"], c["name"]) for c in d["categories"]) for split, d in found.items()}
    for split, cats in categories.items():
        if cats != categories["pool"]:
            raise ValueError(f"{paths[split]}: categories {cats} differ from {paths['pool']}'s {categories['pool']}")
    names = {split: {normal_file_name(im["file_name"]) for im in d["images"]} for split, d in found.items()}
    for a, b in (("train", "pool"), ("val", "pool"), ("val", "train")):
        shared = sorted(names.get(a, set()) & names.get(b, set()))
        if shared:
            raise ValueError(
                f"{paths[a]} and {paths[b]} share {len(shared)} image(s), e.g. {shared[0]!r}: "
                + ("val must be held out" if a == "val" else "an image may be in one of them only")
            )
    for split, d in found.items():
        for i, image in enumerate(d["images"]):
            if not (images / image["file_name"]).is_file():
                hint = missing_file_hint(image["file_name"], str(images))
                raise FileNotFoundError(f"{paths[split]}, images[{i}] (id {image['id']}), field 'file_name': "
                                        f"no file {images / image['file_name']}{hint}")  # fmt: skip
    for split in ("pool", "val"):
        _require_objects(found[split], paths[split], split)
    warnings = []
    for split, d in found.items():
        files = inspect_image_files(d, str(images))  # sizes as training reads them, before hours of it
        if files.problems:
            more = f" (and {len(files.problems) - 1} more)" if len(files.problems) > 1 else ""
            raise ValueError(f"{paths[split]}: {files.problems[0]}{more}")
        warnings += [f"{paths[split]}: {w}" for w in annotation_warnings(d) + files.warnings]
    return warnings


def _require_objects(data: dict[str, Any], path: Path, split: str) -> None:
    """val must hold an object the evaluation scores, pool.json one the oracle can label: without,
    every round would score None (recorded as 0) or train on background alone, for hours."""
    problem = nothing_to_score(data)
    if problem is None:
        return
    if split == "val":
        raise ValueError(f"{path}: {problem}: COCO evaluation scores none, so every round's mask AP would be empty")
    raise ValueError(f"{path}: {problem}: the benchmark's oracle labels the pool's images from it, so they would "
                     "teach nothing")  # fmt: skip


def _merge(train: dict[str, Any] | None, pool: dict[str, Any]) -> tuple[dict[str, Any], list[int]]:
    """train + pool as one COCO dict (train's ids kept, the pool's renumbered where they clash),
    and train's image ids."""
    train = train or {"images": [], "annotations": [], "categories": pool["categories"]}
    taken = {int(im["id"]) for im in train["images"]}
    fresh = itertools.count(max(taken | {int(im["id"]) for im in pool["images"]}, default=0) + 1)
    renamed = {int(im["id"]): (next(fresh) if int(im["id"]) in taken else int(im["id"])) for im in pool["images"]}
    if max(renamed.values(), default=0) >= 2**63:  # ids are int64 in the instance shards
        raise ValueError("train.json and pool.json share image ids, and their largest is too near 2**63 to renumber "
                         "the pool's past it: renumber the pool's images")  # fmt: skip
    images = train["images"] + [{**im, "id": renamed[int(im["id"])]} for im in pool["images"]]
    annotations = [dict(a) for a in train.get("annotations", [])]
    annotations += [{**a, "image_id": renamed[int(a["image_id"])]} for a in pool.get("annotations", [])]
    for number, ann in enumerate(annotations, 1):
        ann["id"] = number
    return {"images": images, "annotations": annotations, "categories": pool["categories"]}, sorted(taken)


def _digest(shape: list[Any]) -> str:
    return hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:8]


# The parameters each strategy's choice depends on: a campaign's key holds only these, so that
# changing TAUDIS's defaults reruns TAUDIS, not the baselines that never read them.
USED_PARAMS = {
    "random": (),
    "uncertainty": ("metric", "aggregation"),
    "coreset": (),
    "diversity": ("beta", "sigma", "metric", "aggregation", "universe", "centre", "whiten"),
    "taudis": tuple(DEFAULT_PARAMS),
}


def stand_in(strategy: str, change: str) -> str:
    """The campaign that stands for ``strategy`` under ``change``, a campaign variant's name after
    its strategy (``metric=product_rank``, ``finetune``): the strategy's own variant when it reads
    a parameter the change sets; otherwise the campaign without those parameters, which would
    choose the same images (so the run schedules no such variant: see jobs_for)."""
    tokens = change.split()
    params = [t for t in tokens if "=" in t]
    if any(t.partition("=")[0] in USED_PARAMS[strategy] for t in params):
        return f"{strategy} {change}"
    return " ".join([strategy, *(t for t in tokens if "=" not in t)])


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
    portable: bool = False  # portable numerics (taudis.model.numerics): the same models on every machine

    @property
    def params(self) -> dict[str, Any]:
        return self.variant.full_params(self.defaults)

    @property
    def key(self) -> str:
        """A folder name that changes whenever anything that shapes the campaign changes (the config's content too)."""
        used = {
            k: self.params[k]
            for k in USED_PARAMS[self.variant.strategy]
            if k not in LATER_PARAMS or self.params[k] != LATER_PARAMS[k]
        }
        shape = [self.variant.strategy, used, self.rounds, self.budget, self._config_hash(), self.train_opts,
                 self.finetune, *self._numerics(), *self._layer()]  # fmt: skip
        slug = self.variant.name.replace(" ", "_").replace("=", "-")
        return f"{slug}-s{self.seed}-{_digest(shape)}"

    def base_key(self, base_extra: int) -> str:
        """The ablation's base model's folder name (under its dataset's, which names the initial
        set): what shapes that model (seed, extra images, config, schedule), nothing of the variant."""
        shape = [base_extra, self._config_hash(), self.train_opts, *self._numerics()]
        return f"s{self.seed}-{_digest(shape)}"

    def _layer(self) -> list[str]:
        # in the keys only when not the default, which every key recorded before the choice stands for
        layer = self.variant.embedding_layer
        return [] if layer == DEFAULT_EMBEDDING_LAYER else ["embedding_layer", layer]

    def _numerics(self) -> list[str]:
        # in the keys only when portable, with what portable means (it changed once: MKL's AVX2
        # branch was Intel's alone); the keys recorded before the choice existed stand for native
        return ["portable", numerics.PORTABLE] if self.portable else []

    def _config_hash(self) -> str:
        """The config and every config beside it (its _BASE_ chain lives there too)."""
        from taudis.model.config import resolve_config_path

        path = resolve_config_path(self.config)
        return hashlib.sha256(b"".join(p.read_bytes() for p in sorted(path.parent.glob("*.yaml")))).hexdigest()

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "variant": asdict(self.variant)}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Spec:
        return cls(**{**doc, "variant": Variant(**doc["variant"])})
