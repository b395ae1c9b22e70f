"""COCO AP as taudis reports it: COCOeval's own numbers, and every detection of a dense image counted."""

from __future__ import annotations

import contextlib
import io
import random
from typing import Any

import pytest

from taudis.model.evaluate import SUMMARY_KEYS, evaluate_predictions


def _grid(objects: int, side: int = 8, gap: int = 4, per_row: int = 20) -> dict[str, Any]:
    """One image holding ``objects`` squares in rows, each square its own polygon annotation."""
    pitch = side + gap
    rows = -(-objects // per_row)
    annotations = []
    for i in range(objects):
        x, y = gap + (i % per_row) * pitch, gap + (i // per_row) * pitch
        polygon = [x, y, x + side, y, x + side, y + side, x, y + side]
        annotations.append({"id": i + 1, "image_id": 1, "category_id": 1 + i % 2, "bbox": [x, y, side, side],
                            "segmentation": [polygon], "area": side * side, "iscrowd": 0})  # fmt: skip
    image = {"id": 1, "file_name": "dense.png", "height": gap + rows * pitch, "width": gap + per_row * pitch}
    categories = [{"id": 1, "name": "nucleus"}, {"id": 2, "name": "mitotic"}]
    return {"images": [image], "annotations": annotations, "categories": categories}


def _predictions(gt: dict[str, Any], shift: int = 0, seed: int = 0) -> list[dict[str, Any]]:
    """Each ground-truth square as a detection, every third one moved by ``shift`` px, with random scores."""
    rng = random.Random(seed)
    out = []
    for n, a in enumerate(gt["annotations"]):
        dx = shift if n % 3 == 0 else 0
        x, y, w, h = a["bbox"]
        polygon = [x + dx, y, x + dx + w, y, x + dx + w, y + h, x + dx, y + h]
        out.append({"image_id": 1, "category_id": a["category_id"], "bbox": [x + dx, y, w, h],
                    "segmentation": [polygon], "score": rng.random()})  # fmt: skip
    return out


def _pycocotools_stats(gt: dict[str, Any], predictions: list[dict[str, Any]], iou_type: str) -> list[float]:
    """COCOeval.summarize's AP, AP50, AP75, APs, APm, APl at its defaults (100 detections per image)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = gt
        coco.createIndex()
        evaluator = COCOeval(coco, coco.loadRes(predictions), iouType=iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return [float(s) * 100 for s in evaluator.stats[: len(SUMMARY_KEYS)]]


@pytest.mark.parametrize("iou_type", ["segm", "bbox"])
def test_up_to_100_detections_the_numbers_are_cocoevals_own(iou_type: str) -> None:
    gt = _grid(60)
    predictions = _predictions(gt, shift=3)
    report = evaluate_predictions(gt, predictions)
    assert report["max_dets"] == 100
    ours = [report[iou_type][key] for key in SUMMARY_KEYS]
    theirs = [v if v >= 0 else None for v in _pycocotools_stats(gt, predictions, iou_type)]
    assert ours == pytest.approx(theirs)
    assert 0 < report[iou_type]["AP"] < 100  # the shifted squares cost something: a real comparison


def test_a_dense_image_is_scored_on_every_detection_not_the_first_100() -> None:
    gt = _grid(240)
    predictions = _predictions(gt)  # every object found exactly
    report = evaluate_predictions(gt, predictions)
    assert report["max_dets"] == 240
    assert report["segm"]["AP"] == pytest.approx(100.0) and report["bbox"]["AP"] == pytest.approx(100.0)
    assert report["segm"]["per_class"] == {"nucleus": pytest.approx(100.0), "mitotic": pytest.approx(100.0)}
    # COCO's default keeps 100 detections per image and class: 100 of each class's 120 objects.
    capped = _pycocotools_stats(gt, predictions, "segm")[0]
    assert capped == pytest.approx(100 * 84 / 101)  # recall 0.83: 84 of COCO's 101 recall points


def test_perfect_predictions_of_a_ground_truth_whose_ids_start_at_0_score_100() -> None:
    # COCOeval's matching stores 0 for "no match": a found ground truth of id 0 counted as missed.
    gt = _grid(6)
    for number, ann in enumerate(gt["annotations"]):
        ann["id"] = number
    report = evaluate_predictions(gt, [{**p, "score": 1.0} for p in _predictions(gt)])
    for iou_type in ("segm", "bbox"):
        assert report[iou_type]["AP"] == pytest.approx(100.0)
        assert report[iou_type]["per_class"] == {"nucleus": pytest.approx(100.0), "mitotic": pytest.approx(100.0)}
    assert [a["id"] for a in gt["annotations"]] == list(range(6)), "renumbered in a copy"


def test_an_absent_or_null_area_is_measured_from_the_mask() -> None:
    gt = _grid(6, side=40)  # 1,600 px: medium objects, as their areas say
    predictions = _predictions(gt, shift=9)
    given = evaluate_predictions(gt, predictions)
    gt["annotations"][3]["area"] = None
    del gt["annotations"][4]["area"]
    assert evaluate_predictions(gt, predictions) == given
    assert given["segm"]["APm"] is not None and given["segm"]["APs"] is None
    assert gt["annotations"][3]["area"] is None, "filled in a copy"


def test_a_stated_area_unlike_the_mask_does_not_move_the_object_to_another_size_range() -> None:
    """A converter's placeholder 0, or a box's area, would score these medium objects as small or large."""
    gt = _grid(6, side=40)
    predictions = _predictions(gt, shift=9)
    measured = evaluate_predictions(gt, predictions)
    assert measured["segm"]["APm"] is not None and measured["segm"]["APs"] is None
    for area in (0, 4, 100_000):
        odd = {**gt, "annotations": [{**a, "area": area} for a in gt["annotations"]]}
        assert evaluate_predictions(odd, predictions) == measured, area


def test_no_prediction_at_all_scores_zero_only_in_the_size_ranges_that_hold_objects() -> None:
    small = _grid(6, side=8)  # 64 px each: small objects only
    report = evaluate_predictions(small, [])
    assert report["segm"]["AP"] == 0.0 and report["segm"]["APs"] == 0.0
    assert report["segm"]["APm"] is None and report["segm"]["APl"] is None
    one = evaluate_predictions(small, _predictions(small)[:1])  # COCOeval's own answer agrees on which are None
    assert [one["segm"][k] is None for k in ("APm", "APl")] == [True, True]


def test_annotations_of_one_id_are_each_scored() -> None:
    # COCO's index is keyed by annotation id: two of one id would be one object, the other's match a false positive.
    gt = _grid(6)
    gt["annotations"][1]["id"] = gt["annotations"][0]["id"]
    report = evaluate_predictions(gt, [{**p, "score": 1.0} for p in _predictions(gt)])
    assert report["segm"]["AP"] == pytest.approx(100.0) and report["bbox"]["AP"] == pytest.approx(100.0)
