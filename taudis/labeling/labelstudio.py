"""A Label Studio task list with the model's predictions as polygons, and the matching labelling config.

Label Studio imports a JSON list of tasks; each task's ``data`` names the image and its
``predictions`` hold pre-annotations (Label Studio's "Basic Label Studio JSON format" with a
``predictions`` key). Masks go out as ``polygonlabels`` results: points in percent of the image
size (0-100), which Label Studio imports as is; its brush format needs Label Studio's own RLE
encoding instead of COCO's, so polygons are the portable choice. One result per outer contour of
the mask (a mask in several parts gives several polygons of the same instance; holes are
dropped, so annotators see the outline they correct).
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any

import contourpy
import numpy as np

from taudis.data.masks import decode_rle
from taudis.labeling.predictions import Prediction

FROM_NAME = "label"  # the PolygonLabels control's name in label_config()
TO_NAME = "image"  # the Image object's name, and the task data key holding the image URI


def mask_polygons(mask: np.ndarray) -> list[np.ndarray]:
    """Outer contours of a binary mask as closed polygons in pixel coordinates.

    Each polygon is an (N, 2) array of (x, y), N >= 3, without the repeated first point, on the
    0.5 iso-line between pixel centres (pixel (r, c) covers [c, c+1) x [r, r+1)). Collinear
    points are dropped.
    """
    if not mask.any():
        return []
    padded = np.pad(mask.astype(np.float64), 1)
    generator = contourpy.contour_generator(z=padded, line_type=contourpy.LineType.Separate)
    polygons = []
    for line in generator.lines(0.5):
        points = np.asarray(line, dtype=np.float64)[:-1] - 0.5  # padding shifts by 1, pixel centres by 0.5
        x, y = points[:, 0], points[:, 1]
        signed_area = 0.5 * float(np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y))
        if signed_area <= 0:  # holes run the other way round
            continue
        points = _drop_collinear(points)
        if len(points) >= 3:
            polygons.append(points)
    return polygons


def _drop_collinear(points: np.ndarray) -> np.ndarray:
    before = np.roll(points, 1, axis=0)
    after = np.roll(points, -1, axis=0)
    cross = (points[:, 0] - before[:, 0]) * (after[:, 1] - points[:, 1]) - (points[:, 1] - before[:, 1]) * (
        after[:, 0] - points[:, 0]
    )
    return points[np.abs(cross) > 1e-9]


def prediction_results(prediction: Prediction, height: int, width: int) -> list[dict[str, Any]]:
    """The Label Studio ``polygonlabels`` results of one predicted instance."""
    results = []
    for part, polygon in enumerate(mask_polygons(decode_rle(prediction.rle))):
        percent = np.stack([polygon[:, 0] / width * 100.0, polygon[:, 1] / height * 100.0], axis=1)
        results.append(
            {
                "id": f"{prediction.image_id}-{prediction.instance}-{part}",
                "from_name": FROM_NAME,
                "to_name": TO_NAME,
                "type": "polygonlabels",
                "original_width": width,
                "original_height": height,
                "image_rotation": 0,
                "value": {
                    "points": np.round(percent, 4).tolist(),
                    "polygonlabels": [prediction.category_name],
                },
                "score": prediction.score,
            }
        )
    return results


def build_tasks(
    images: Sequence[Mapping[str, Any]],
    uris: Mapping[int, str],
    predictions: Mapping[int, Sequence[Prediction]],
    selection_items: Mapping[int, Mapping[str, Any]],
    *,
    model_version: str = "",
) -> list[dict[str, Any]]:
    """The task list, one task per image in selection order.

    Layout of a task::

        {"data": {"image": <image URI>, "image_id", "file_name", "rank", "reason"},
         "predictions": [{"model_version", "score" (mean instance score, 0 without instances),
                          "result": [polygonlabels results, see prediction_results]}]}
    """
    tasks = []
    for image in images:
        image_id = int(image["id"])
        height, width = int(image["height"]), int(image["width"])
        instances = list(predictions.get(image_id, ()))
        results = [r for p in instances for r in prediction_results(p, height, width)]
        item = selection_items.get(image_id, {})
        tasks.append(
            {
                "data": {
                    TO_NAME: uris[image_id],
                    "image_id": image_id,
                    "file_name": image["file_name"],
                    "rank": item.get("rank"),
                    "reason": item.get("reason"),
                },
                "predictions": [
                    {
                        "model_version": model_version,
                        "score": float(np.mean([p.score for p in instances])) if instances else 0.0,
                        "result": results,
                    }
                ],
            }
        )
    return tasks


def label_config(category_names: Sequence[str]) -> str:
    """The labelling configuration (XML) whose names match the tasks' results."""
    labels = "\n".join(f'    <Label value="{html.escape(name, quote=True)}"/>' for name in category_names)
    return (
        "<View>\n"
        f'  <Image name="{TO_NAME}" value="${TO_NAME}" zoom="true"/>\n'
        f'  <PolygonLabels name="{FROM_NAME}" toName="{TO_NAME}" strokeWidth="2" pointSize="small">\n'
        f"{labels}\n"
        "  </PolygonLabels>\n"
        "</View>\n"
    )
