"""Small campaigns for tests of the round's state machine, ingest and faults (no model needed).

A pool of tiny 16x16 images with one or two square masks each, COCO with RLE, written to any
storage root; helpers to write annotators' files (a zip of members too), a selection, and a
tasks folder as the export step would.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from taudis import storage

SIZE = 16
CATEGORIES = [{"id": 1, "name": "car"}, {"id": 2, "name": "tree"}]


def square(x: int, y: int, side: int) -> dict[str, Any]:
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[y : y + side, x : x + side] = 1
    rle = mask_utils.encode(np.asfortranarray(mask))
    return {"size": [SIZE, SIZE], "counts": rle["counts"].decode("ascii")}


def make_pool(num_images: int, first_id: int = 1) -> dict[str, Any]:
    """A fully labelled pool: image i has a car (and every third image a tree), file images/<i>.png."""
    images, annotations = [], []
    for image_id in range(first_id, first_id + num_images):
        images.append({"id": image_id, "file_name": f"img{image_id:04d}.png", "height": SIZE, "width": SIZE})
        annotations.append(_annotation(len(annotations) + 1, image_id, 1, square(image_id % 8, 1, 4)))
        if image_id % 3 == 0:
            annotations.append(_annotation(len(annotations) + 1, image_id, 2, square(2, 8, 6)))
    return {"images": images, "annotations": annotations, "categories": CATEGORIES}


def _annotation(ann_id: int, image_id: int, category_id: int, segmentation: dict[str, Any]) -> dict[str, Any]:
    rle = {"size": segmentation["size"], "counts": segmentation["counts"].encode("ascii")}
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_id,
        "segmentation": segmentation,
        "area": float(mask_utils.area(rle)),
        "bbox": [float(v) for v in mask_utils.toBbox(rle)],
        "iscrowd": 0,
    }


def subset(pool: dict[str, Any], image_ids: list[int]) -> dict[str, Any]:
    """The pool's ground truth for ``image_ids``: what a careful annotator returns."""
    wanted = set(image_ids)
    return {
        "images": [im for im in pool["images"] if im["id"] in wanted],
        "annotations": [a for a in pool["annotations"] if a["image_id"] in wanted],
        "categories": pool["categories"],
    }


def write_dataset(root: str, pool_size: int = 40, seed_size: int = 4) -> dict[str, str]:
    """Pool and seed files under ``root``: {"pool", "seed"} URIs (the seed's images are pool images)."""
    pool = make_pool(pool_size)
    uris = {"pool": storage.join(root, "pool.json"), "seed": storage.join(root, "seed.json")}
    storage.write_json(uris["pool"], pool)
    storage.write_json(uris["seed"], subset(pool, [im["id"] for im in pool["images"][:seed_size]]))
    return uris


def selection_doc(image_ids: list[int], strategy: str = "random") -> dict[str, Any]:
    """A taudis.selection document choosing ``image_ids`` in that order."""
    return {
        "schema": "taudis.selection",
        "version": 1,
        "strategy": strategy,
        "params": {"seed": 0},
        "budget": len(image_ids),
        "images": [
            {"image_id": i, "rank": r + 1, "votes": 0, "uncertainty": 0.0, "filled": False, "reason": "test"}
            for r, i in enumerate(image_ids)
        ],
        "instances": [],
        "notes": [],
        "stats": {},
    }


def write_round_outputs(folder: Path, image_ids: list[int]) -> dict[str, str]:
    """The local files commit_round takes: selection, a tasks folder (manifest.jsonl), summary, report."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "selection.json").write_text(json.dumps(selection_doc(image_ids)))
    tasks = folder / "tasks"
    tasks.mkdir(exist_ok=True)
    (tasks / "manifest.jsonl").write_text("".join(json.dumps({"image_id": i}) + "\n" for i in image_ids))
    (tasks / "preannotations.json").write_text(json.dumps({"images": [{"id": i} for i in image_ids]}))
    (folder / "summary.md").write_text("## round\n")
    (folder / "report.html").write_text("<html></html>")
    return {
        "selection": str(folder / "selection.json"),
        "tasks": str(tasks),
        "summary": str(folder / "summary.md"),
        "report": str(folder / "report.html"),
    }


def write_images(root: str, pool: dict[str, Any]) -> str:
    """A tiny PNG for every pool image under ``<root>/images``; returns that image root."""
    import io

    from PIL import Image

    image_root = storage.join(root, "images")
    for image in pool["images"]:
        buffer = io.BytesIO()
        shade = (image["id"] * 37) % 200
        Image.new("RGB", (SIZE, SIZE), (shade, 120, 60)).save(buffer, format="PNG")
        storage.write_bytes(storage.join(image_root, image["file_name"]), buffer.getvalue())
    return image_root


def write_predictions(shard_dir: Path, images: list[dict[str, Any]], class_names: list[str], seed: int = 0) -> Path:
    """An instance-table shard of made-up predictions (two instances per image) for ``images``."""
    from taudis.data.instances import write_shard

    rng = np.random.default_rng(seed)
    ids = np.asarray([im["id"] for im in images], np.int64)
    n = 2 * ids.size
    k = len(class_names)
    probs = rng.dirichlet(np.ones(k + 1), n).astype(np.float32)
    x0 = rng.uniform(0, SIZE / 2, n)
    boxes = np.stack([x0, x0, x0 + SIZE / 3, x0 + SIZE / 3], axis=1).astype(np.float32)
    emb = rng.standard_normal((n, 8)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    return write_shard(
        shard_dir / "shard-0-of-1",
        image_ids=ids,
        image_sizes=np.full((ids.size, 2), SIZE, np.int32),
        instance_image=np.repeat(ids, 2),
        instance_index=np.tile(np.arange(2, dtype=np.int32), ids.size),
        classes=np.argmax(probs[:, :k], axis=1).astype(np.int32),
        class_probs=probs,
        boxes=boxes,
        mask_probs=rng.uniform(0, 1, (n, 28, 28)).astype(np.float16),
        embeddings=emb,
        class_names=class_names,
        model_id="test-model",
    )


def zip_bytes(members: dict[str, bytes]) -> bytes:
    """A zip archive of ``members`` (name -> bytes; a name ending in "/" is a folder), as bytes."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()
