"""One round's labelling tasks made from a real instance table, for the labelling-tool tests.

``make_round`` writes a synthetic pool (``taudis.data.synthetic_instances``: 13 images of 256 px,
40 predicted instances, some in several parts or with holes once thresholded, some images with
none), the pool's COCO file and PNG images, a selection of 8 images, and exports the round's tasks
with ``export_for_labeling`` into ``<campaign>/rounds/round-000/tasks``. ``sent`` holds what the
tasks send each image: the thresholded predicted masks, in instance order, with their category.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from taudis import storage
from taudis.data.instances import iter_shards
from taudis.data.masks import binary_mask
from taudis.data.synthetic_instances import IMAGE_SIZE, PoolSpec, write_pool
from taudis.labeling import export_for_labeling

SPEC = PoolSpec(num_instances=40, num_shards=1, seed=0, num_classes=3, mean_instances_per_image=6, embedding_dim=16)
CHOSEN = [0, 8, 2, 3, 1, 4, 6, 5]  # selection order; 1 and 5 have no predicted instance
CATEGORIES = [{"id": 10 + k, "name": f"class{k}"} for k in range(SPEC.num_classes)]  # ids differ from classes
IMAGES_PATH = "pool/images"  # the images' folder under the document root


@dataclass(frozen=True)
class Round:
    campaign: Path
    pool_uri: str
    pool: dict[str, Any]
    image_root: Path  # <document root>/pool/images
    written: dict[str, str]  # export_for_labeling's outputs
    sent: dict[int, list[tuple[str, np.ndarray]]]  # image id -> (category, mask) per predicted instance

    @property
    def labelstudio_tasks(self) -> str:
        return str(Path(self.written["labelstudio_tasks"]).parent)

    def file_name(self, image_id: int) -> str:
        return str(next(im["file_name"] for im in self.pool["images"] if im["id"] == image_id))


def file_name(image_id: int) -> str:
    # A space on purpose: URLs must quote it, and readers must decode it.
    return f"tiles/tile {image_id:03d}.png"


def make_round(
    root: Path,
    document_root: Path,
    *,
    regions: str = "brush",
    url_prefix: str | None = f"/data/local-files/?d={IMAGES_PATH}/",
    out_name: str = "tasks",
    image_uri_root: str | None = None,
) -> Round:
    """Write the pool, images and selection under ``root`` and export round 0's tasks (see the module docstring).

    With ``image_uri_root`` (e.g. ``gs://bucket/pool/images``) the images are also copied there,
    and the export names them by those URIs.
    """
    shards = root / "instances"
    if not shards.exists():
        write_pool(shards, SPEC)
    shard = next(iter(iter_shards(shards)))
    ids = [int(i) for i in shard.image_ids]
    images = [{"id": i, "file_name": file_name(i), "height": IMAGE_SIZE, "width": IMAGE_SIZE} for i in ids]
    pool = {"images": images, "annotations": [], "categories": CATEGORIES}
    pool_uri = root / "pool.json"
    pool_uri.write_text(json.dumps(pool))
    image_root = document_root / IMAGES_PATH
    for image in images:
        path = image_root / image["file_name"]
        path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        Image.fromarray(np.full((IMAGE_SIZE, IMAGE_SIZE, 3), image["id"] * 17 % 256, np.uint8)).save(buffer, "PNG")
        path.write_bytes(buffer.getvalue())
        if image_uri_root:
            storage.write_bytes(storage.join(image_uri_root, image["file_name"]), buffer.getvalue())
    selection = {
        "schema": "taudis.selection", "version": 1, "strategy": "taudis", "params": {}, "budget": len(CHOSEN),
        "images": [
            {"image_id": i, "rank": r, "votes": 1, "uncertainty": 0.5, "filled": False, "reason": "test"}
            for r, i in enumerate(CHOSEN)
        ],
        "instances": [], "notes": [], "stats": {},
    }  # fmt: skip
    (root / "selection.json").write_text(json.dumps(selection))
    campaign = root / "campaign"
    written = export_for_labeling(
        root / "selection.json", shards, pool_uri, image_uri_root or str(image_root),
        campaign / "rounds" / "round-000" / out_name,
        labelstudio_url_prefix=url_prefix, labelstudio_regions=regions,
    )  # fmt: skip
    sent: dict[int, list[tuple[str, np.ndarray]]] = {i: [] for i in CHOSEN}
    rows = np.lexsort((shard.instance_index, shard.instance_image))
    for row in rows:
        image_id = int(shard.instance_image[row])
        if image_id in sent:
            mask = binary_mask(shard.mask_probs[row], shard.boxes[row], IMAGE_SIZE, IMAGE_SIZE)
            sent[image_id].append((shard.class_names[int(shard.classes[row])], mask))
    return Round(campaign, str(pool_uri), pool, image_root, written, sent)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0
