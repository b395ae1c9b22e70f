"""COCO pre-annotations: the model's predictions for the chosen images, as a COCO instance file."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from taudis.labeling.predictions import Prediction


def build_preannotations(
    images: Sequence[Mapping[str, Any]],
    categories: Sequence[Mapping[str, Any]],
    predictions: Mapping[int, Sequence[Prediction]],
    *,
    description: str = "taudis pre-annotations",
) -> dict[str, Any]:
    """A COCO instance document of the predictions.

    Layout::

        {"info": {"description"}, "licenses": [],
         "images": [{"id", "file_name", "height", "width", "coco_url" (if given)}, ...],   # selection order
         "categories": the pool's categories,
         "annotations": [{"id" (1..N), "image_id", "category_id", "segmentation" (RLE, counts str),
                          "area" (mask pixels), "bbox" [x0, y0, x1 - x0, y1 - y0] (the predicted box),
                          "iscrowd": 0, "score", "attributes": {"occluded": false, "score", "instance"}}, ...]}

    The boxes are the model's boxes, not the masks' extents, so a reader gets the prediction back.
    """
    annotations: list[dict[str, Any]] = []
    for image in images:
        for prediction in predictions.get(int(image["id"]), ()):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": prediction.image_id,
                    "category_id": prediction.category_id,
                    "segmentation": dict(prediction.rle),
                    "area": float(prediction.area),
                    "bbox": prediction.bbox_xywh,
                    "iscrowd": 0,
                    "score": prediction.score,
                    "attributes": {"occluded": False, "score": prediction.score, "instance": prediction.instance},
                }
            )
    return {
        "info": {"description": description},
        "licenses": [],
        "images": [dict(image) for image in images],
        "categories": [dict(c) for c in categories],
        "annotations": annotations,
    }
