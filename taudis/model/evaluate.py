"""`taudis evaluate`: mask and box AP (COCO metrics, pycocotools) of a model on a COCO split, per class too.

:func:`evaluate_predictions` scores any COCO-format results against a COCO dict and needs no torch;
:func:`evaluate_model` runs a trained model (the plain detectron2 predictor's detections and
binary masks) and scores them. AP values are percentages (0-100), as detectron2 reports them; a
class without ground truth in the split has AP None.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import logging
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from taudis.data.coco import CocoFormatError, category_ids, class_names, load_coco

log = logging.getLogger("taudis.model.evaluate")
SUMMARY_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
COCO_MAX_DETS = 100  # COCO's own count of detections per image (and class)


def evaluate_predictions(ground_truth: dict[str, Any], predictions: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """COCO box and mask AP of ``predictions`` against ``ground_truth``.

    Args:
        ground_truth: a COCO dict (validated). Missing ``area`` / ``iscrowd`` are filled in, and the
            annotation ids renumbered (in a copy) as COCOeval needs them.
        predictions: COCO results: ``image_id``, ``category_id``, ``score``, ``bbox`` (XYWH) and
            ``segmentation`` (RLE or polygons), for images of ``ground_truth``.

    Returns:
        ``{"bbox": {...}, "segm": {...}, "num_images", "num_predictions", "max_dets"}`` where each
        of bbox and segm holds AP, AP50, AP75, APs, APm, APl and ``per_class`` {class name: AP or
        None}, counting up to ``max_dets`` detections per image: COCO's 100, or more where an image
        has more predictions.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt_data = _with_areas(ground_truth)
    images = {img["id"]: img for img in gt_data["images"]}
    results = [_as_rle_result(p, images) for p in predictions]
    names = dict(zip(category_ids(gt_data), class_names(gt_data), strict=True))
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = gt_data
        gt.createIndex()
        dt = gt.loadRes(results) if results else None
    # COCO counts at most 100 detections per image and class; a model that keeps more (dense data,
    # see taudis.model.fit) is scored on all it keeps, or its AP would be capped at 100 objects.
    max_dets = max([COCO_MAX_DETS, *Counter(r["image_id"] for r in results).values()])
    report: dict[str, Any] = {"num_images": len(images), "num_predictions": len(results), "max_dets": max_dets}
    for iou_type in ("bbox", "segm"):
        if dt is None:
            report[iou_type] = _empty_summary(gt_data, names)
            continue
        evaluator = COCOeval(gt, dt, iouType=iou_type)
        evaluator.params.maxDets = [1, 10, max_dets]
        with contextlib.redirect_stdout(io.StringIO()):
            evaluator.evaluate()
            evaluator.accumulate()
        report[iou_type] = _summary(evaluator, names)
    return report


def _with_areas(data: dict[str, Any]) -> dict[str, Any]:
    """A copy for COCOeval: annotation ids 1..N, ``iscrowd`` (0 where absent), and ``area`` the mask's.

    COCOeval's matching stores a matched ground truth's id, and 0 for "no match": a ground truth of
    id 0 counts as missed however well it is found. Its index is keyed by id, so two annotations of
    one id become one. The ids are never reported, so renumbering changes nothing else.

    The area sorts an object into COCOeval's small, medium and large ranges, and COCO defines it
    as the mask's: a file's own (0 as a placeholder, the box's width times height) would score a
    large object as a small one, so it is never used.
    """
    from pycocotools import mask as mask_utils

    out = copy.copy(data)
    images = {img["id"]: img for img in data["images"]}
    anns = []
    for number, ann in enumerate(data.get("annotations", []), start=1):
        ann = dict(ann, id=number)
        ann.setdefault("iscrowd", 0)
        img = images[ann["image_id"]]
        ann["area"] = float(mask_utils.area(_to_rle(ann["segmentation"], img["height"], img["width"])))
        anns.append(ann)
    out["annotations"] = anns
    out.setdefault("info", {})
    return out


def _to_rle(segmentation: Any, height: int, width: int) -> dict[str, Any]:
    from pycocotools import mask as mask_utils

    if isinstance(segmentation, list):
        return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    if isinstance(segmentation.get("counts"), list):
        return mask_utils.frPyObjects(segmentation, height, width)
    counts = segmentation["counts"]
    return {"size": segmentation["size"], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}


def _as_rle_result(prediction: dict[str, Any], images: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """A result with its segmentation as compressed RLE (pycocotools' loadRes needs RLE for masks)."""
    result = dict(prediction)
    image = images.get(result["image_id"])
    if image is None:
        raise KeyError(f"prediction for unknown image id {result['image_id']!r}")
    rle = _to_rle(result["segmentation"], image["height"], image["width"])
    result["segmentation"] = {"size": list(rle["size"]), "counts": rle["counts"]}
    return result


def _summary(evaluator: Any, names: dict[int, str]) -> dict[str, Any]:
    """COCO's AP, AP50, AP75, APs/m/l and AP per class at the evaluator's most detections per image.

    Read from the accumulated precision as COCOeval.summarize does, which itself reads AP at 100
    detections only (its maxDets default) and so could not score more.
    """
    # precision: [IoU thresholds, recall, classes, area ranges, max dets]; the last max dets.
    precision = evaluator.eval["precision"][..., -1]
    thresholds = list(np.round(evaluator.params.iouThrs, 2))
    areas = evaluator.params.areaRngLbl  # all, small, medium, large
    picks = {
        "AP": precision[:, :, :, areas.index("all")],
        "AP50": precision[thresholds.index(0.5), :, :, areas.index("all")],
        "AP75": precision[thresholds.index(0.75), :, :, areas.index("all")],
        "APs": precision[:, :, :, areas.index("small")],
        "APm": precision[:, :, :, areas.index("medium")],
        "APl": precision[:, :, :, areas.index("large")],
    }
    out: dict[str, Any] = {key: _mean_percent(picks[key]) for key in SUMMARY_KEYS}
    out["per_class"] = {
        names[cat_id]: _mean_percent(precision[:, :, k, areas.index("all")])
        for k, cat_id in enumerate(evaluator.params.catIds)
    }
    return out


def _mean_percent(precision: np.ndarray) -> float | None:
    """Mean of the defined entries (COCOeval marks undefined ones -1), as a percentage; None if none is."""
    values = precision[precision > -1]
    return float(np.mean(values) * 100) if values.size else None


def _empty_summary(gt_data: dict[str, Any], names: dict[int, str]) -> dict[str, Any]:
    """No predictions at all: AP 0 where there is ground truth (of the size range, for APs, APm and
    APl, as COCOeval's own ranges sort it), None elsewhere."""
    from pycocotools.cocoeval import Params

    objects = [ann for ann in gt_data["annotations"] if not ann.get("iscrowd", 0)]
    present = {ann["category_id"] for ann in objects}
    out: dict[str, Any] = {k: (0.0 if present else None) for k in SUMMARY_KEYS}
    params = Params(iouType="segm")
    for key, label in (("APs", "small"), ("APm", "medium"), ("APl", "large")):
        low, high = params.areaRng[params.areaRngLbl.index(label)]
        out[key] = 0.0 if any(low <= ann["area"] <= high for ann in objects) else None
    out["per_class"] = {name: (0.0 if cid in present else None) for cid, name in names.items()}
    return out


def predict_coco_results(
    model_dir: str,
    annotations: dict[str, Any],
    image_root: str,
    batch_size: int = 4,
    source: str = "the evaluation set",
) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Run the plain model over a COCO dict's images; COCO results (binary masks as RLE) and failures."""
    import torch
    from pycocotools import mask as mask_utils

    from taudis.model.infer import iter_batches, load_model

    model, cfg = load_model(model_dir, taudis_heads=False)
    model_ids = list(cfg.TAUDIS.CATEGORY_IDS) or list(range(1, cfg.MODEL.ROI_HEADS.NUM_CLASSES + 1))
    _check_categories(cfg, annotations, source)
    failed: list[dict[str, str]] = []
    results: list[dict[str, Any]] = []
    images = sorted(annotations["images"], key=lambda r: r["id"])
    with torch.inference_mode():
        for batch in iter_batches(images, image_root, cfg, batch_size, failed):
            outputs = model(batch.inputs)
            for image_id, output in zip(batch.image_ids, outputs, strict=True):
                instances = output["instances"].to("cpu")
                boxes = instances.pred_boxes.tensor.numpy()
                masks = instances.pred_masks.numpy().astype(np.uint8)
                for i in range(len(instances)):
                    rle = mask_utils.encode(np.asfortranarray(masks[i]))
                    x0, y0, x1, y1 = (float(v) for v in boxes[i])
                    results.append(
                        {
                            "image_id": image_id,
                            "category_id": int(model_ids[int(instances.pred_classes[i])]),
                            "score": float(instances.scores[i]),
                            "bbox": [x0, y0, x1 - x0, y1 - y0],
                            "segmentation": {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode()},
                        }
                    )
    return results, failed


class CategoriesDifferError(ValueError):
    """The evaluation set's categories are not the model's."""


def _check_categories(cfg: Any, annotations: dict[str, Any], source: str = "the evaluation set") -> None:
    trained = dict(zip(cfg.TAUDIS.CATEGORY_IDS, cfg.TAUDIS.CLASS_NAMES, strict=True))
    given = {c["id"]: c["name"] for c in annotations["categories"]}
    if trained and trained != given:
        hint = (
            ": list every category of the model, those without examples too"
            if set(given.items()) < set(trained.items())
            else ""
        )
        raise CategoriesDifferError(
            f"{source}: the model was trained on categories {trained}, this file has {given}{hint}"
        )


def evaluate_model(
    model_dir: str, annotations: str, image_root: str, out: str | None = None, batch_size: int = 4
) -> dict[str, Any]:
    """Box and mask AP of a trained model on a COCO split, overall and per class.

    Args:
        model_dir: trained model directory (config.yaml, model_final.pth).
        annotations: COCO JSON with ground truth (local path or gs:// URI).
        image_root: directory the images' ``file_name`` are relative to.
        out: if given, the metrics are also written there as JSON (nothing is written otherwise).
        batch_size: images per forward pass.

    Returns:
        evaluate_predictions's report plus ``model_dir`` and ``failed_images`` (unreadable images
        are skipped and listed; they count as images without predictions).
    """
    gt = load_coco(annotations)
    results, failed = predict_coco_results(model_dir, gt, image_root, batch_size, str(annotations))
    report = evaluate_predictions(gt, results)
    report["model_dir"] = str(model_dir)
    report["failed_images"] = failed
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(report, indent=1))
    log.info("mask AP %.2f, box AP %.2f on %s", report["segm"]["AP"] or 0, report["bbox"]["AP"] or 0, annotations)
    return report


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="taudis evaluate", description="Mask and box AP (COCO metrics) of a trained model on a COCO split."
    )
    parser.add_argument("--model", required=True, help="trained model directory (from `taudis train`)")
    parser.add_argument("--annotations", required=True, help="COCO JSON with ground truth")
    parser.add_argument("--images", required=True, help="image root that file_name entries are relative to")
    parser.add_argument("--out", default=None, help="write the metrics JSON here (default: print only)")
    parser.add_argument("--batch-size", type=int, default=4, help="images per forward pass (default 4)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        report = evaluate_model(args.model, args.annotations, args.images, out=args.out, batch_size=args.batch_size)
    except (CocoFormatError, FileNotFoundError, CategoriesDifferError) as err:
        print(f"taudis evaluate: {err}", file=sys.stderr)  # the input's fault: its message, not a traceback
        return 1
    print(json.dumps({k: report[k] for k in ("segm", "bbox")}, indent=1))
    return 0
