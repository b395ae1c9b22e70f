"""`taudis infer`: predict the pool's instances with uncertainty inputs and embeddings, as one shard.

What each instance row holds (see taudis.data.instances for the shard layout):

- ``class_probs``: softmax over the K classes plus background (last) of the box predictor's
  classification logits for the proposal behind the detection (TaudisROIHeads). The detection's
  box is that proposal's box after class-specific regression, so the probabilities describe the
  proposal, not the refined box; this is exactly the vector detectron2 derives its score from, so
  ``score == class_probs[class]``.
- ``mask_probs``: the mask head's unthresholded sigmoid for the predicted class, S x S (28 for the
  standard head, 2 x ROI_MASK_HEAD.POOLER_RESOLUTION in general), float16, in box coordinates.
- ``boxes``: x0, y0, x1, y1 in pixels of the original image (clipped to it).
- ``embeddings``: the mask head's last conv layer on the box, mean over space, L2-normalised; or,
  with ``embedding_layer="roi_features"``, the FPN features the mask head reads (taudis.model.roi_heads).

Detections are those of the plain detectron2 predictor of the same model: same resize, same
score threshold (ROI_HEADS.SCORE_THRESH_TEST unless overridden), same NMS and top-k, and boxes
that end up empty after scaling to the original size are dropped, as detector_postprocess does.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from taudis.data.coco import CocoFormatError, read_coco_json, validate_coco
from taudis.data.instances import write_shard
from taudis.model import numerics
from taudis.model.config import EMBEDDING_LAYERS

log = logging.getLogger("taudis.model.infer")
PROGRESS_SECONDS = 10.0  # at most one progress line this often


def shard_name(shard: int, num_shards: int) -> str:
    """The directory name of one inference shard."""
    return f"shard-{shard:05d}-of-{num_shards:05d}"


def model_id_of(model_dir: str | os.PathLike[str]) -> str:
    """An identifier of a trained model: 'sha256:' and the first 16 hex digits of model_final.pth's hash."""
    digest = hashlib.sha256()
    with open(Path(model_dir) / "model_final.pth", "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return "sha256:" + digest.hexdigest()[:16]


def load_model(model_dir: str | os.PathLike[str], *, taudis_heads: bool = True, opts: Sequence[str] = ()) -> Any:
    """Build a trained model from ``model_dir`` in eval mode; returns (model, cfg).

    Args:
        model_dir: a directory written by train_model (config.yaml, model_final.pth).
        taudis_heads: swap in TaudisROIHeads (same weights) to get class probabilities and embeddings.
        opts: extra ``KEY VALUE`` config overrides.
    """
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model

    from taudis.model import roi_heads
    from taudis.model.config import model_config

    cfg = model_config(model_dir, opts)
    if taudis_heads:
        cfg.MODEL.ROI_HEADS.NAME = roi_heads.NAME
    numerics.configure(int(cfg.TAUDIS.NUM_THREADS))
    cfg.freeze()
    model = build_model(cfg)
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    model.eval()
    return model, cfg


@dataclass
class _Batch:
    image_ids: list[int]
    inputs: list[dict[str, Any]]


def iter_batches(
    images: Sequence[dict[str, Any]], image_root: str, cfg: Any, batch_size: int, failed: list[dict[str, str]]
) -> Iterator[_Batch]:
    """Model inputs for COCO image records, up to ``batch_size`` at a time, in order.

    A batch holds images of one input size only: detectron2 pads a batch to its largest image, and
    the padding changes a smaller image's detections, so in a pool of mixed sizes an image's
    predictions (and the choice) would depend on its neighbours. Images that cannot be read, or
    whose size is not the one their record states (a photo turned by its EXIF orientation, a file
    replaced), go to ``failed`` with the reason: their masks would land on the wrong pixels.
    """
    import torch

    from taudis.model.images import ImageReadError, load_for_inference, size_disagreement

    batch = _Batch([], [])
    for record in images:
        path = os.path.join(image_root, record["file_name"])
        try:
            loaded = load_for_inference(path, cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST, cfg.INPUT.FORMAT)
        except ImageReadError as err:
            log.warning("skipping unreadable image %s: %s", record["id"], err)
            failed.append({"file": record["file_name"], "image_id": str(record["id"]), "error": str(err)})
            continue
        error = size_disagreement(path, loaded.width, loaded.height, record)
        if error is not None:
            log.warning("skipping image %s: %s", record["id"], error)
            failed.append({"file": record["file_name"], "image_id": str(record["id"]), "error": error})
            continue
        tensor = torch.as_tensor(np.ascontiguousarray(loaded.pixels.transpose(2, 0, 1)))
        if batch.inputs and tuple(tensor.shape) != tuple(batch.inputs[0]["image"].shape):
            yield batch
            batch = _Batch([], [])
        batch.image_ids.append(int(record["id"]))
        batch.inputs.append({"image": tensor, "height": loaded.height, "width": loaded.width})
        if len(batch.inputs) == batch_size:
            yield batch
            batch = _Batch([], [])
    if batch.inputs:
        yield batch


def pool_images(annotations: str) -> list[dict[str, Any]]:
    """The image records of a COCO file, validated; its annotations and categories are not needed or checked."""
    data = read_coco_json(annotations)
    images_only: dict[str, Any] = {"images": data.get("images"), "categories": [], "annotations": []}
    validate_coco(images_only, source=str(annotations))
    return list(data["images"])


def shard_images(images: Sequence[dict[str, Any]], shard: int, num_shards: int) -> list[dict[str, Any]]:
    """This shard's images: a contiguous block of the records sorted by image id."""
    if num_shards < 1 or not 0 <= shard < num_shards:
        raise ValueError(f"shard must be in [0, num_shards), got shard={shard}, num_shards={num_shards}")
    ordered = sorted(images, key=lambda r: r["id"])
    bounds = np.linspace(0, len(ordered), num_shards + 1).round().astype(int)
    return ordered[bounds[shard] : bounds[shard + 1]]


def infer_instances(
    model_dir: str,
    annotations: str,
    image_root: str,
    out_dir: str,
    shard: int = 0,
    num_shards: int = 1,
    batch_size: int = 4,
    score_threshold: float | None = None,
    embedding_layer: str | None = None,
) -> Path:
    """Predict the instances of one shard of the images listed in a COCO file; write one instance shard.

    The COCO file's annotations are ignored (only ``images`` is read). Unreadable images (missing,
    empty, truncated, corrupt) are recorded in the shard's ``failed_images`` and skipped; images
    with no detection are listed in ``image_ids`` with zero instances. Grayscale, palette, RGBA and
    16-bit images are converted as taudis.model.images describes; very large images are shrunk
    while decoding.

    Layout: ``out_dir/shard-{shard:05d}-of-{num_shards:05d}/`` in the instance-table format of
    taudis.data.instances (header ``model_id`` = :func:`model_id_of`, ``extra`` = score threshold,
    input size, probability semantics). A shard directory that already exists is complete (it is
    written atomically) and is returned without recomputing.

    Args:
        model_dir: trained model directory (config.yaml, model_final.pth).
        annotations: COCO JSON listing the images (local path or gs:// URI).
        image_root: directory the images' ``file_name`` are relative to.
        out_dir: directory that receives the shard.
        shard: this task's shard index, 0-based.
        num_shards: number of shards the images are split into (contiguous blocks by image id).
        batch_size: images per forward pass.
        score_threshold: detection threshold on the class probability; None keeps the config's
            ROI_HEADS.SCORE_THRESH_TEST.
        embedding_layer: what the embeddings are (taudis.model.roi_heads.EMBEDDING_LAYERS); None
            keeps the model's TAUDIS.EMBEDDING_LAYER.

    Returns:
        The shard directory.
    """
    import torch

    target = Path(out_dir) / shard_name(shard, num_shards)
    if (target / "header.json").is_file():
        log.info("%s exists: skipping", target)
        return target
    images = shard_images(pool_images(annotations), shard, num_shards)
    model, cfg = load_model(model_dir, opts=["TAUDIS.EMBEDDING_LAYER", embedding_layer] if embedding_layer else ())
    if score_threshold is not None:
        model.roi_heads.box_predictor.test_score_thresh = float(score_threshold)
    threshold = float(model.roi_heads.box_predictor.test_score_thresh)
    embedding_dtype = np.dtype(cfg.TAUDIS.EMBEDDING_DTYPE)
    failed: list[dict[str, str]] = []
    columns = _Columns()
    started = last_report = time.perf_counter()
    done = 0
    log.info("inferring %d images (shard %d of %d) with %s", len(images), shard, num_shards, model_dir)
    with torch.inference_mode():
        for batch in iter_batches(images, image_root, cfg, batch_size, failed):
            outputs = model.inference(batch.inputs, do_postprocess=False)
            for image_id, inputs, instances in zip(batch.image_ids, batch.inputs, outputs, strict=True):
                columns.add(image_id, inputs["height"], inputs["width"], instances)
            done += len(batch.inputs)
            now = time.perf_counter()
            if now - last_report >= PROGRESS_SECONDS:
                last_report = now
                log.info("%d/%d images, %.2f images/s", done, len(images), done / (now - started))
    log.info(
        "%d images done (%d unreadable), %.2f images/s",
        done,
        len(failed),
        done / max(time.perf_counter() - started, 1e-9),
    )
    class_names = list(cfg.TAUDIS.CLASS_NAMES) or [f"class_{i}" for i in range(cfg.MODEL.ROI_HEADS.NUM_CLASSES)]
    mask_size = 2 * int(cfg.MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION)
    return write_shard(
        target,
        **columns.arrays(len(class_names), mask_size, model.roi_heads.embedding_dim(), embedding_dtype),
        class_names=class_names,
        model_id=model_id_of(model_dir),
        failed_images=failed,
        extra={
            "score_threshold": threshold,
            "min_size_test": int(cfg.INPUT.MIN_SIZE_TEST),
            "max_size_test": int(cfg.INPUT.MAX_SIZE_TEST),
            "category_ids": list(cfg.TAUDIS.CATEGORY_IDS),
            "class_probs": "softmax of the box predictor's logits for the detection's proposal (before box "
            "regression), background last",
            "embedding_layer": model.roi_heads.embedding_layer,
            "embeddings": EMBEDDING_LAYERS[model.roi_heads.embedding_layer],
        },
    )


class _Columns:
    """Accumulates per-image detections into the instance table's columns."""

    def __init__(self) -> None:
        self.image_ids: list[int] = []
        self.image_sizes: list[tuple[int, int]] = []
        self.parts: dict[str, list[np.ndarray]] = {
            k: []
            for k in ("instance_image", "instance_index", "classes", "class_probs", "boxes", "mask_probs", "embeddings")
        }

    def add(self, image_id: int, height: int, width: int, instances: Any) -> None:
        """Scale one image's raw detections to its original size and append them."""
        self.image_ids.append(image_id)
        self.image_sizes.append((height, width))
        resized_h, resized_w = instances.image_size
        boxes = instances.pred_boxes.tensor.clone()
        boxes[:, 0::2] *= width / resized_w
        boxes[:, 1::2] *= height / resized_h
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
        # detector_postprocess drops boxes that are empty once in original pixels; so do we.
        keep = ((boxes[:, 2] - boxes[:, 0]) > 0) & ((boxes[:, 3] - boxes[:, 1]) > 0)
        n = int(keep.sum())
        self.parts["instance_image"].append(np.full(n, image_id, dtype=np.int64))
        self.parts["instance_index"].append(np.arange(n, dtype=np.int32))
        self.parts["classes"].append(instances.pred_classes[keep].cpu().numpy().astype(np.int32))
        self.parts["class_probs"].append(instances.pred_class_probs[keep].float().cpu().numpy())
        self.parts["boxes"].append(boxes[keep].float().cpu().numpy())
        self.parts["mask_probs"].append(instances.pred_masks[keep][:, 0].float().cpu().numpy().astype(np.float16))
        self.parts["embeddings"].append(instances.pred_embeddings[keep].float().cpu().numpy())

    def arrays(self, num_classes: int, mask_size: int, embedding_dim: int, embedding_dtype: np.dtype) -> dict[str, Any]:
        empty = {
            "instance_image": np.zeros(0, np.int64),
            "instance_index": np.zeros(0, np.int32),
            "classes": np.zeros(0, np.int32),
            "class_probs": np.zeros((0, num_classes + 1), np.float32),
            "boxes": np.zeros((0, 4), np.float32),
            "mask_probs": np.zeros((0, mask_size, mask_size), np.float16),
            "embeddings": np.zeros((0, embedding_dim), np.float32),
        }
        out: dict[str, Any] = {
            name: np.concatenate(parts) if parts else empty[name] for name, parts in self.parts.items()
        }
        out["embeddings"] = out["embeddings"].astype(embedding_dtype)
        out["image_ids"] = np.asarray(self.image_ids, dtype=np.int64)
        out["image_sizes"] = np.asarray(self.image_sizes, dtype=np.int32).reshape(-1, 2)
        return out


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="taudis infer",
        description="Predict instances (class probabilities, mask probabilities, boxes, embeddings) for one "
        "shard of the images in a COCO file; writes OUT/shard-SSSSS-of-NNNNN (skipped if it exists).",
    )
    parser.add_argument("--model", required=True, help="trained model directory (from `taudis train`)")
    parser.add_argument("--annotations", required=True, help="COCO JSON listing the pool's images")
    parser.add_argument("--images", required=True, help="image root that file_name entries are relative to")
    parser.add_argument("--out", required=True, help="directory that receives the shard")
    parser.add_argument("--shard", type=int, default=0, help="this shard's index (default 0)")
    parser.add_argument("--num-shards", type=int, default=1, help="number of shards (default 1)")
    parser.add_argument("--batch-size", type=int, default=4, help="images per forward pass (default 4)")
    parser.add_argument(
        "--score-threshold", type=float, default=None, help="detection threshold (default: the config's)"
    )
    parser.add_argument(
        "--embedding-layer",
        choices=sorted(EMBEDDING_LAYERS),
        default=None,
        help="what the embeddings are (default: the model's TAUDIS.EMBEDDING_LAYER, mask_head)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        path = infer_instances(
            args.model,
            args.annotations,
            args.images,
            args.out,
            shard=args.shard,
            num_shards=args.num_shards,
            batch_size=args.batch_size,
            score_threshold=args.score_threshold,
            embedding_layer=args.embedding_layer,
        )
    except (CocoFormatError, FileNotFoundError) as err:
        print(f"taudis infer: {err}", file=sys.stderr)  # the input's fault: its message, not a traceback
        return 1
    print(path)
    return 0
