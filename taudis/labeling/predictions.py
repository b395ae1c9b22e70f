"""The model's predictions for chosen images, read from the instance shards, in image coordinates.

One place turns instance-table rows into what every labelling format needs: the category id,
the box, the score (the probability of the predicted class) and the binary mask (the mask head's
probabilities pasted into the box, thresholded at ``MASK_THRESHOLD``), encoded as COCO RLE.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from taudis.data.instances import iter_shards
from taudis.data.masks import MASK_THRESHOLD, binary_mask, encode_rle


class ExportError(ValueError):
    """Inputs of an export disagree; the message names the file, record and field."""


@dataclass(frozen=True)
class Prediction:
    """One predicted instance of an image."""

    image_id: int
    instance: int  # index of the instance within its image (instance_index)
    class_index: int  # 0..K-1, the shard's class order
    category_id: int  # the pool's COCO category id of that class
    category_name: str
    score: float
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels
    rle: dict[str, Any]  # COCO RLE of the thresholded pasted mask, counts as str
    area: int  # pixels in the mask

    @property
    def bbox_xywh(self) -> list[float]:
        x0, y0, x1, y1 = self.box
        return [x0, y0, x1 - x0, y1 - y0]


def category_map(class_names: Sequence[str], categories: Sequence[Mapping[str, Any]], source: str) -> list[int]:
    """COCO category id of each model class, matched by name.

    Raises:
        ExportError: a class name has no category of that name in the pool annotations.
    """
    by_name = {str(c["name"]): int(c["id"]) for c in categories}
    missing = [name for name in class_names if name not in by_name]
    if missing:
        raise ExportError(
            f"{source}: field 'categories': model classes {missing} have no category of that name "
            f"(categories: {sorted(by_name)})"
        )
    return [by_name[name] for name in class_names]


def read_predictions(
    instances_dir: str | os.PathLike[str],
    images: Mapping[int, Mapping[str, Any]],
    categories: Sequence[Mapping[str, Any]],
    *,
    pool_source: str = "pool annotations",
    threshold: float = MASK_THRESHOLD,
) -> dict[int, list[Prediction]]:
    """Predictions of the images in ``images`` (id -> COCO image with height and width).

    Streams over the shards; only the rows of the wanted images are read, one mask at a time.

    Returns:
        image id -> its predictions in instance order (an empty list for an image without any).

    Raises:
        ExportError: a wanted image is in no shard, or its size differs between the shard and
            the pool annotations.
    """
    wanted = np.fromiter((int(i) for i in images), dtype=np.int64)
    found: dict[int, list[Prediction]] = {}
    names = {int(c["id"]): str(c["name"]) for c in categories}
    for shard in iter_shards(instances_dir):
        in_shard = np.isin(shard.image_ids, wanted)
        if not in_shard.any():
            continue
        to_category = category_map(shard.class_names, categories, pool_source)
        for row in np.flatnonzero(in_shard):
            image_id = int(shard.image_ids[row])
            height, width = (int(v) for v in shard.image_sizes[row])
            image = images[image_id]
            if (height, width) != (int(image["height"]), int(image["width"])):
                raise ExportError(
                    f"{shard.path}: field 'image_sizes', image {image_id}: ({height}, {width}) differs from "
                    f"{pool_source}'s ({image['height']}, {image['width']})"
                )
            found[image_id] = []
        rows = np.flatnonzero(np.isin(shard.instance_image, wanted))
        rows = rows[np.lexsort((shard.instance_index[rows], shard.instance_image[rows]))]
        scores = shard.scores
        for row in rows:
            image_id = int(shard.instance_image[row])
            image = images[image_id]
            box = tuple(float(v) for v in shard.boxes[row])
            mask = binary_mask(
                shard.mask_probs[row], np.asarray(box), int(image["height"]), int(image["width"]), threshold
            )
            class_index = int(shard.classes[row])
            rle = encode_rle(mask)
            found[image_id].append(
                Prediction(
                    image_id=image_id,
                    instance=int(shard.instance_index[row]),
                    class_index=class_index,
                    category_id=to_category[class_index],
                    category_name=names[to_category[class_index]],
                    score=float(scores[row]),
                    box=(box[0], box[1], box[2], box[3]),
                    rle=rle,
                    area=int(mask.sum()),
                )
            )
    missing = sorted(set(wanted.tolist()) - set(found))
    if missing:
        raise ExportError(f"{instances_dir}: field 'image_ids': chosen images {missing[:10]} are in no instance shard")
    return found
