"""Benchmark: what objects below 8 px at the input cost, and what taudis.model.fit's overrides give back.

Two ways to make the built-in synthetic data's objects (128 px tiles, median object 16 px) small
for the CPU config (its 128 px input, anchors from 8 px), each trained from scratch on the same
50 labelled images with the same seed and iterations, and scored by mask AP on val:

- ``read small``: the 128 px files read at a 32 px input (the median object 3.4 px), which is what
  a folder of 512 px scenes looks like to the CPU config;
- ``small files``: the files themselves shrunk to 32 px (masks too), read at 32 px: objects small
  at the images' own size, so that only upsampling can enlarge them.

For each: the small input, which taudis.model.fit warns about; the input the warning names
(computed, not typed in); and, for the first, smaller anchors at the small input (the other
remedy one might try, which fit does not suggest because of this measurement).

    OMP_WAIT_POLICY=PASSIVE nice python bench/fit.py --out bench/results/fit.csv

Rows already in the CSV are skipped, so a rerun resumes.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
FIELDS = ["dataset", "setting", "opts", "median_side", "warned", "labelled_images", "iterations", "seed", "mask_ap",
          "box_ap", "train_seconds"]  # fmt: skip
SMALL = 32
SMALL_INPUT = f"INPUT.MIN_SIZE_TRAIN ({SMALL},) INPUT.MIN_SIZE_TEST {SMALL} INPUT.MAX_SIZE_TRAIN {2 * SMALL} " + (
    f"INPUT.MAX_SIZE_TEST {2 * SMALL}"
)
SMALLER_ANCHORS = "MODEL.ANCHOR_GENERATOR.SIZES [[2],[4],[8],[16],[32]]"  # each level a quarter of the config's


def settings(pool: dict[str, Any], anchors: bool) -> dict[str, str]:
    """Each setting's config overrides: the small input, the fit's fix for it, and smaller anchors."""
    from taudis.model.config import CPU_CONFIG
    from taudis.model.fit import for_config_file

    fit = for_config_file(pool, CPU_CONFIG, SMALL_INPUT)
    assert fit is not None and fit.size_opts, "the small input must be one that fit warns about"
    out = {"small input": SMALL_INPUT, "small input, fit's overrides": f"{SMALL_INPUT} {fit.size_opts}"}
    if anchors:
        out["small input, smaller anchors"] = f"{SMALL_INPUT} {SMALLER_ANCHORS}"
    return out


def shrink_dataset(source: Path, out: Path, side: int) -> Path:
    """``source`` with every image and mask resized to ``side`` px (square tiles), boxes and areas from the masks."""
    import numpy as np
    from PIL import Image
    from pycocotools import mask as mask_utils

    from taudis.data.coco import load_coco
    from taudis.data.labels import rle_json, segmentation_rle

    if (out / "annotations" / "val.json").is_file():
        return out
    for folder in ("images", "annotations"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    for split in ("train", "pool", "val"):
        data = load_coco(source / "annotations" / f"{split}.json")
        sizes = {im["id"]: (im["height"], im["width"]) for im in data["images"]}
        annotations = []
        for ann in data["annotations"]:
            mask = mask_utils.decode(segmentation_rle(ann["segmentation"], *sizes[ann["image_id"]]))
            small = np.asarray(Image.fromarray(mask * 255).resize((side, side), Image.Resampling.BOX)) >= 128
            if not small.any():
                continue  # too small to survive: the object is gone at this size
            rle = mask_utils.encode(np.asfortranarray(small.astype(np.uint8)))
            box = [float(v) for v in mask_utils.toBbox(rle)]
            annotations.append({**ann, "segmentation": rle_json(rle), "bbox": box, "area": float(mask_utils.area(rle))})
        for image in data["images"]:
            pixels = Image.open(source / "images" / image["file_name"]).convert("RGB")
            target = out / "images" / image["file_name"]
            target.parent.mkdir(parents=True, exist_ok=True)
            pixels.resize((side, side), Image.Resampling.BOX).save(target)
        images = [{**im, "height": side, "width": side} for im in data["images"]]
        doc = {**data, "images": images, "annotations": annotations}
        (out / "annotations" / f"{split}.json").write_text(json.dumps(doc))
    return out


def labelled_set(data: Path, images: int, seed: int, out: Path) -> Path:
    """The dataset's initial labelled images plus pool images drawn with ``seed``, ``images`` in all."""
    from taudis.data.coco import load_coco, subset_coco

    train, pool = load_coco(data / "annotations/train.json"), load_coco(data / "annotations/pool.json")
    merged = {**pool, "images": pool["images"] + train["images"]}
    merged["annotations"] = pool["annotations"] + train["annotations"]
    drawn = random.Random(seed).sample([im["id"] for im in pool["images"]], images - len(train["images"]))
    out.write_text(json.dumps(subset_coco(merged, {im["id"] for im in train["images"]} | set(drawn))))
    return out


def run(dataset: str, data: Path, setting: str, opts: str, args: argparse.Namespace) -> dict[str, Any]:
    from taudis.data.coco import load_coco
    from taudis.model.config import CPU_CONFIG, load_config
    from taudis.model.evaluate import evaluate_model
    from taudis.model.fit import for_config
    from taudis.model.train import train_model

    labelled = labelled_set(data, args.images, args.seed, data.parent / f"{data.name}-labelled-{args.images}.json")
    split = [*shlex.split(opts), "TAUDIS.SCHEDULE.ENABLED", "False", "SOLVER.MAX_ITER", str(args.iterations),
             "TAUDIS.NUM_THREADS", "1"]  # fmt: skip
    fit = for_config(load_coco(labelled), load_config(CPU_CONFIG, split))
    with tempfile.TemporaryDirectory(dir=args.work) as model:
        started = time.monotonic()
        train_model(str(labelled), str(data / "images"), model, opts=split, seed=args.seed)
        seconds = time.monotonic() - started
        scores = evaluate_model(model, str(data / "annotations/val.json"), str(data / "images"))
    return {"dataset": dataset, "setting": setting, "opts": opts, "median_side": fit.median_side if fit else "",
            "warned": bool(fit and fit.problems()), "labelled_images": args.images, "iterations": args.iterations,
            "seed": args.seed, "mask_ap": round(scores["segm"]["AP"], 2), "box_ap": round(scores["bbox"]["AP"], 2),
            "train_seconds": round(seconds, 1)}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results/fit.csv"))
    parser.add_argument("--work", type=Path, default=Path("runs/bench/fit"))
    parser.add_argument("--images", type=int, default=50)
    parser.add_argument("--iterations", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import torch

    from taudis.data.coco import load_coco
    from taudis.data.synth import make_synthetic_dataset

    torch.set_num_threads(1)
    full = args.work / "synthetic"
    if not (full / "dataset.json").is_file():
        make_synthetic_dataset(full, num_images=500, seed=0)
    datasets = {"read small": full, "small files": shrink_dataset(full, args.work / f"synthetic-{SMALL}px", SMALL)}
    done = set()
    if args.out.is_file():
        done = {(row["dataset"], row["setting"]) for row in csv.DictReader(args.out.open())}
    for dataset, data in datasets.items():
        for setting, opts in settings(load_coco(data / "annotations/pool.json"), dataset == "read small").items():
            if (dataset, setting) in done:
                continue
            row = run(dataset, data, setting, opts, args)
            new = not args.out.is_file()
            with args.out.open("a", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=FIELDS)
                if new:
                    writer.writeheader()
                writer.writerow(row)
            print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
