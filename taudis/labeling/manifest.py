"""manifest.jsonl: one line per chosen image: where it is, the model's scores, and why it was chosen."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from taudis.labeling.predictions import Prediction


def build_manifest(
    selection: Mapping[str, Any],
    images: Mapping[int, Mapping[str, Any]],
    uris: Mapping[int, str],
    predictions: Mapping[int, Sequence[Prediction]],
) -> str:
    """The manifest text, in selection order.

    Each line::

        {"image_id", "uri", "file_name", "height", "width",
         "rank", "votes", "uncertainty", "filled", "reason",            # from the selection
         "strategy", "num_predictions", "scores": [per instance], "mean_score",
         "chosen_instances": [{"instance", "uncertainty"}, ...]}       # the instances that voted for it
    """
    chosen_instances: dict[int, list[dict[str, Any]]] = {}
    for item in selection.get("instances", []):
        chosen_instances.setdefault(int(item["image_id"]), []).append(
            {"instance": int(item["instance"]), "uncertainty": float(item["uncertainty"])}
        )
    lines = []
    for item in selection["images"]:
        image_id = int(item["image_id"])
        image = images[image_id]
        scores = [round(p.score, 6) for p in predictions.get(image_id, ())]
        line = {
            "image_id": image_id,
            "uri": uris[image_id],
            "file_name": image["file_name"],
            "height": int(image["height"]),
            "width": int(image["width"]),
            "rank": item.get("rank"),
            "votes": item.get("votes"),
            "uncertainty": item.get("uncertainty"),
            "filled": item.get("filled"),
            "reason": item.get("reason"),
            "strategy": selection.get("strategy"),
            "num_predictions": len(scores),
            "scores": scores,
            "mean_score": round(sum(scores) / len(scores), 6) if scores else None,
            "chosen_instances": chosen_instances.get(image_id, []),
        }
        lines.append(json.dumps(line))
    return "\n".join(lines) + ("\n" if lines else "")
