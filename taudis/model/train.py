"""`taudis train`: train Mask R-CNN on a COCO dataset, resumably, on CUDA when present else CPU."""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from taudis.data.coco import category_ids, class_names, load_coco, to_detectron2_dicts
from taudis.model import numerics
from taudis.model.collapse import TrainingCollapsedError, collapse_reason
from taudis.model.config import CPU_CONFIG, config_summary, load_config, scheduled_iterations
from taudis.model.fit import for_config as data_fit

log = logging.getLogger("taudis.model.train")
# A retry after a collapse trains with seed + RETRY_SEED_STEP * attempt: far from the seeds a user
# runs side by side (0, 1, 2, ...), so a retry never repeats another run's draw.
RETRY_SEED_STEP = 1000


class NothingToTrainError(ValueError):
    """The dataset holds nothing to learn from: no image, no category or no non-crowd annotation."""


def is_trainable(annotation: dict[str, Any]) -> bool:
    """Whether training learns from an annotation: detectron2 trains on no crowd region (iscrowd 1)."""
    return not annotation.get("iscrowd", 0)


class TrainMapper:
    """Dataset dict -> model input for training: taudis's image reader, resize, flips, bitmask targets."""

    def __init__(self, cfg: Any):
        from detectron2.data import transforms as T

        augmentations: list[Any] = [
            T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING),
            T.RandomFlip(horizontal=True, vertical=False),
        ]
        if cfg.TAUDIS.VFLIP:
            augmentations.append(T.RandomFlip(horizontal=False, vertical=True))
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = cfg.INPUT.FORMAT
        self.mask_format = cfg.INPUT.MASK_FORMAT

    def __call__(self, dataset_dict: dict[str, Any]) -> dict[str, Any]:
        import torch
        from detectron2.data import detection_utils as utils
        from detectron2.data import transforms as T

        from taudis.model.images import read_image

        record = copy.deepcopy(dataset_dict)
        image = read_image(record["file_name"], self.image_format)
        if image.shape[:2] != (record["height"], record["width"]):
            raise ValueError(
                f"{record['file_name']}: image is {image.shape[1]}x{image.shape[0]} but the COCO file says "
                f"{record['width']}x{record['height']} (image id {record['image_id']})"
            )
        aug_input = T.AugInput(image)
        transforms = self.augmentations(aug_input)
        image = aug_input.image
        record["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        annotations = [
            utils.transform_instance_annotations(a, transforms, image.shape[:2])
            for a in record.pop("annotations")
            if is_trainable(a)
        ]
        instances = utils.annotations_to_instances(annotations, image.shape[:2], mask_format=self.mask_format)
        record["instances"] = utils.filter_empty_instances(instances)
        return record


def train_model(
    annotations: str,
    image_root: str,
    out_dir: str,
    config: str = CPU_CONFIG,
    opts: Sequence[str] = (),
    seed: int = 0,
    resume: bool = True,
    weights: str = "",
    *,
    finetune: bool = False,
    notes: Sequence[str] = (),
    on_iteration: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Train Mask R-CNN on a COCO instance-segmentation dataset.

    The number of iterations follows the TAUDIS schedule of the config (it grows with the number
    of images; see taudis.model.config). Training is seeded (weights init, sampling order,
    augmentation); it runs on CUDA when present, else CPU (``TAUDIS.DEVICE``). Checkpoints are
    written every ``SOLVER.CHECKPOINT_PERIOD`` iterations; with ``resume`` a rerun continues from
    the last one (the iteration count continues), and a finished run returns its metrics at once.

    Layout of ``out_dir``::

        out_dir/
          config.yaml          the full detectron2 config (with TAUDIS.CLASS_NAMES / CATEGORY_IDS)
          model_final.pth      weights (+ optimizer, scheduler, iteration); loads with weights_only
          model_NNNNNNN.pth    the latest periodic checkpoint (older ones are deleted)
          last_checkpoint      detectron2's pointer to the newest checkpoint
          metrics.json         iterations, start_iter, seconds, seconds_per_iter, losses (median of
                               the last LOG_PERIOD iterations), loss_history, num_images,
                               num_instances (those trained on: crowd regions are not), class_names,
                               device, seed (the attempt's),
                               collapsed_attempts (seed, reason and seconds of each discarded attempt),
                               data_fit (the data against the config's input size, anchors and
                               detection limits: taudis.model.fit), notes (the caller's)
          init_weights.pth     only when ``weights`` is a gs:// URI (the downloaded copy)

    A run from scratch whose classification loss did not fall (a collapsed model, see
    taudis.model.collapse) is discarded and trained again with another seed, up to
    ``TAUDIS.COLLAPSE.RETRIES`` times.

    Args:
        annotations: COCO JSON (local path or gs:// URI) of the labelled set.
        image_root: directory that the images' ``file_name`` are relative to.
        out_dir: output directory (created).
        config: detectron2 YAML config (path, or a file name in ``configs/``).
        opts: ``KEY VALUE`` config overrides.
        seed: random seed.
        resume: continue from ``out_dir``'s last checkpoint if there is one.
        weights: initial weights (local path or gs:// URI); "" trains from scratch.
        finetune: ``weights`` are the previous round's model: train the config's shorter
            fine-tuning share of the schedule (TAUDIS.SCHEDULE.FINETUNE_SCALE).
        notes: what the caller wants said with the metrics (a fine-tuning that could not start).
        on_iteration: called after each iteration with its index (progress hooks, tests).

    Returns:
        The metrics written to ``metrics.json``.

    Raises:
        NothingToTrainError: the dataset holds nothing to train on (no image, category or non-crowd annotation).
        taudis.data.coco.CocoFormatError, FileNotFoundError: the annotations or a labelled image (a size
            not its record's included).
        taudis.model.images.ImageReadError: a labelled image cannot be read.
        TrainingCollapsedError: every attempt collapsed.
    """

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = load_coco(annotations)
    _check_trainable(data, annotations)
    dicts = to_detectron2_dicts(data, image_root)
    _check_files_exist(dicts, annotations, image_root)
    cfg = load_config(config, opts)
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = len(data["categories"])
    cfg.TAUDIS.CLASS_NAMES = class_names(data)
    cfg.TAUDIS.CATEGORY_IDS = category_ids(data)
    cfg.SOLVER.MAX_ITER = max_iter = scheduled_iterations(cfg, len(dicts), finetune=finetune)
    # Short schedules (small labelled sets, tests) must not spend most of their steps warming up.
    cfg.SOLVER.WARMUP_ITERS = min(int(cfg.SOLVER.WARMUP_ITERS), max_iter // 4)
    cfg.OUTPUT_DIR = str(out)
    fit = data_fit(data, cfg)
    for problem in fit.problems() if fit is not None else ():
        log.warning("%s: %s", annotations, problem)
    numerics.configure(int(cfg.TAUDIS.NUM_THREADS))
    check = cfg.TAUDIS.COLLAPSE
    collapsed: list[dict[str, Any]] = []
    recorded = {"data_fit": fit.as_dict() if fit is not None else None, "notes": list(notes)}
    while True:
        attempt_seed = seed + RETRY_SEED_STEP * len(collapsed)
        cfg.SEED = attempt_seed
        metrics = _train_attempt(cfg, dicts, out, resume, weights, on_iteration, collapsed, recorded)
        reason = None if weights else collapse_reason(metrics, float(check.MAX_CLS_LOSS_RATIO), int(check.MIN_ITERS))
        if reason is None:
            return metrics
        collapsed.append({"seed": attempt_seed, "reason": reason, "seconds": metrics.get("seconds")})
        _discard_run(out)  # a collapsed model must not pass for a trained one, nor be resumed
        if len(collapsed) > int(check.RETRIES):
            raise TrainingCollapsedError(
                f"{out}: training collapsed in all {len(collapsed)} attempts (seeds "
                f"{', '.join(str(c['seed']) for c in collapsed)}): {reason}. Lower SOLVER.BASE_LR, or set "
                "TAUDIS.COLLAPSE.MAX_CLS_LOSS_RATIO 0 to keep such a model"
            )
        log.warning("%s: training collapsed (seed %d): %s; training again from scratch", out, attempt_seed, reason)


def _check_trainable(data: dict[str, Any], annotations: str) -> None:
    """Fail before training on nothing to learn: detectron2 would run the schedule and write a model of no object.

    Raises:
        NothingToTrainError: naming the file and why: no image, no category, no annotation, or only crowd regions.
    """
    if not data["images"]:
        raise NothingToTrainError(f"{annotations}: no images to train on")
    if not data["categories"]:
        raise NothingToTrainError(
            f"{annotations}: no categories: nothing to train on (the model needs at least one class)"
        )
    labels = data.get("annotations", [])
    if not labels:
        raise NothingToTrainError(f"{annotations}: no annotations: no object to train on (an unlabelled pool?)")
    if not any(is_trainable(a) for a in labels):
        raise NothingToTrainError(
            f"{annotations}: all {len(labels)} annotations are iscrowd=1 (crowd regions), which detectron2 does not "
            "train on: no object to train on; CVAT's COCO export marks every mask so: set iscrowd 0 to use them"
        )


def _check_files_exist(dicts: list[dict[str, Any]], annotations: str, image_root: str) -> None:
    """Fail before training, not at the iteration that first samples a missing image (maybe hours in)."""
    local = [d["file_name"] for d in dicts if not str(d["file_name"]).startswith("gs://")]  # gs:// is read as it goes
    missing = [name for name in local if not os.path.isfile(name)]
    if missing:
        raise FileNotFoundError(
            f"{annotations}: {len(missing)} of its {len(dicts)} images are not under {image_root}, e.g. "
            f"{missing[0]!r}; `taudis data check --annotations {annotations} --images {image_root}` lists them"
        )
    _check_sizes([d for d in dicts if not str(d["file_name"]).startswith("gs://")], annotations)


def _check_sizes(dicts: list[dict[str, Any]], annotations: str) -> None:
    """Fail before training on an image whose size is not its record's (a photo turned by its EXIF
    orientation, a file replaced): its masks would not fit it, and the iteration that first sampled
    it would stop the run. Only headers are read, of local files (a TIFF is loaded: its reader turns
    it then); a gs:// image is read as training samples it."""
    from taudis.data.coco import CocoFormatError
    from taudis.model.images import ImageReadError, displayed_size, open_file, size_disagreement

    for d in dicts:
        try:
            with open_file(d["file_name"]) as image:
                width, height = displayed_size(image)
        except ImageReadError:
            raise
        except Exception as err:  # a TIFF is loaded to be sized: PIL raises OSError, ValueError...
            raise ImageReadError(f"{d['file_name']}: cannot decode image: {type(err).__name__}: {err}") from err
        why = size_disagreement(d["file_name"], width, height, d)
        if why is not None:
            field = "height" if height != d["height"] else "width"
            raise CocoFormatError(annotations, why, record=f"image id {d['image_id']}", field=field)


def _train_attempt(
    cfg: Any,
    dicts: list[dict[str, Any]],
    out: Path,
    resume: bool,
    weights: str,
    on_iteration: Callable[[int], None] | None,
    collapsed: list[dict[str, Any]],
    recorded: dict[str, Any],
) -> dict[str, Any]:
    """One training run into ``out``, seeded by ``cfg.SEED`` (resumed from its last checkpoint with
    ``resume``); its metrics, with ``recorded`` among them."""
    import torch
    from detectron2.checkpoint import DetectionCheckpointer, PeriodicCheckpointer
    from detectron2.data import build_detection_train_loader
    from detectron2.data.samplers import TrainingSampler
    from detectron2.modeling import build_model
    from detectron2.solver import build_lr_scheduler, build_optimizer
    from detectron2.utils.env import seed_all_rng
    from detectron2.utils.events import EventStorage

    cfg = cfg.clone()
    cfg.freeze()
    seed, max_iter = int(cfg.SEED), int(cfg.SOLVER.MAX_ITER)
    metrics_file = out / "metrics.json"
    seed_all_rng(seed)
    model = build_model(cfg)
    optimizer = build_optimizer(cfg, model)
    scheduler = build_lr_scheduler(cfg, optimizer)
    checkpointer = DetectionCheckpointer(model, str(out), optimizer=optimizer, scheduler=scheduler)
    initial = _local_weights(weights, out) if weights else ""
    resumed = resume and checkpointer.has_checkpoint()
    loaded = checkpointer.resume_or_load(initial, resume=resume)
    # Only this run's own checkpoint says where to continue: initial weights (the previous
    # round's model) carry the iteration they were trained to, and counting on from it would
    # shorten or skip the fine-tuning.
    start_iter = int(loaded.get("iteration", -1)) + 1 if resumed else 0
    if start_iter >= max_iter and metrics_file.is_file():
        log.info("%s: already trained for %d iterations", out, max_iter)
        return dict(json.loads(metrics_file.read_text()))
    _write_text(out / "config.yaml", cfg.dump())

    # Reseed after a resume so that the continuation does not replay the first batches.
    seed_all_rng(seed + start_iter)
    loader = build_detection_train_loader(
        dicts,
        mapper=TrainMapper(cfg),
        sampler=TrainingSampler(len(dicts), shuffle=True, seed=seed + start_iter),
        total_batch_size=cfg.SOLVER.IMS_PER_BATCH,
        aspect_ratio_grouping=True,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
    )
    periodic = PeriodicCheckpointer(checkpointer, cfg.SOLVER.CHECKPOINT_PERIOD, max_iter=max_iter, max_to_keep=1)
    period = max(1, int(cfg.TAUDIS.LOG_PERIOD))
    history: list[dict[str, float]] = []
    window: dict[str, list[float]] = {}
    log.info(
        "training %d iterations (from %d) on %d images, %d classes, device %s",
        max_iter,
        start_iter,
        len(dicts),
        len(cfg.TAUDIS.CLASS_NAMES),
        cfg.MODEL.DEVICE,
    )
    model.train()
    started = time.perf_counter()
    with EventStorage(start_iter) as storage:
        for iteration, batch in zip(range(start_iter, max_iter), loader, strict=False):
            storage.iter = iteration
            loss_dict = model(batch)
            losses = sum(loss_dict.values())
            if not torch.isfinite(losses):
                raise FloatingPointError(
                    f"loss became {float(losses)} at iteration {iteration}: "
                    + ", ".join(f"{k}={float(v):.4g}" for k, v in loss_dict.items())
                )
            optimizer.zero_grad()
            losses.backward()
            optimizer.step()
            scheduler.step()
            values = {k: float(v.detach()) for k, v in loss_dict.items()} | {"total_loss": float(losses.detach())}
            for name, value in values.items():
                window.setdefault(name, []).append(value)
                del window[name][:-period]
            periodic.step(iteration)
            if (iteration + 1) % period == 0 or iteration == max_iter - 1:
                elapsed = time.perf_counter() - started
                row = {"iter": iteration + 1, "lr": optimizer.param_groups[0]["lr"]}
                row |= {k: statistics.median(v) for k, v in window.items()}
                history.append(row)
                log.info(
                    "iter %d/%d  loss %.3f  %.2f s/iter",
                    iteration + 1,
                    max_iter,
                    row["total_loss"],
                    elapsed / (iteration + 1 - start_iter),
                )
            if on_iteration is not None:
                on_iteration(iteration)
    seconds = time.perf_counter() - started
    run = max_iter - start_iter
    _slim_final_checkpoint(out, model, max_iter)
    metrics = {
        "iterations": max_iter,
        "start_iter": start_iter,
        "iterations_run": run,
        "seconds": round(seconds, 3),
        "seconds_per_iter": round(seconds / run, 4) if run else None,
        "losses": {k: statistics.median(v) for k, v in window.items()},
        "loss_history": history,
        "num_images": len(dicts),
        "num_instances": sum(1 for d in dicts for a in d["annotations"] if is_trainable(a)),
        "class_names": list(cfg.TAUDIS.CLASS_NAMES),
        "device": str(cfg.MODEL.DEVICE),
        "seed": seed,
        "collapsed_attempts": collapsed,
        "config": config_summary(cfg),
        "numerics": numerics.describe(),
    } | recorded
    _write_text(metrics_file, json.dumps(metrics, indent=1))
    return metrics


def _discard_run(out: Path) -> None:
    """Remove a finished run's model, checkpoints and metrics from ``out``, so the next attempt starts afresh."""
    for name in ("model_final.pth", "last_checkpoint", "metrics.json"):
        (out / name).unlink(missing_ok=True)
    _remove_periodic_checkpoints(out)


def _local_weights(weights: str, out: Path) -> str:
    """A local path for ``weights``: as given, or a gs:// object downloaded to out/init_weights.pth.

    Raises:
        taudis.model.weights.UnsafeWeightsError: not a .pth / .pt file (a pickle is never loaded).
    """
    from taudis.model.weights import check_weights_path

    check_weights_path(weights)
    if not weights.startswith("gs://"):
        if not Path(weights).is_file():
            raise FileNotFoundError(f"initial weights {weights!r} not found")
        return weights
    from taudis.storage import read_bytes  # lazy: only remote weights need the storage layer

    target = out / ("init_weights" + Path(weights).suffix)
    if not target.is_file():
        target.write_bytes(read_bytes(weights))
    return str(target)


def _slim_final_checkpoint(out: Path, model: Any, max_iter: int) -> None:
    """Once training is complete, keep only model_final.pth, with the weights and the iteration.

    The optimizer state doubles the file and only serves resuming, which a finished run no longer
    needs (a rerun sees iteration == max_iter - 1 and stops at once).
    """
    import torch

    final = out / "model_final.pth"
    tmp = out / ".model_final.pth.tmp"
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"model": state, "iteration": max_iter - 1}, tmp)
    os.replace(tmp, final)
    (out / "last_checkpoint").write_text(final.name)
    _remove_periodic_checkpoints(out)


def _remove_periodic_checkpoints(out: Path) -> None:
    for stale in out.glob("model_[0-9]*.pth"):
        stale.unlink()


def _write_text(path: Path, text: str) -> None:
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False) as f:
        f.write(text)
    os.chmod(f.name, 0o644)
    os.replace(f.name, path)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="taudis train",
        description="Train Mask R-CNN on a COCO instance-segmentation dataset (CUDA when present, else CPU). "
        "Writes OUT/model_final.pth, config.yaml, metrics.json; resumes from OUT's last checkpoint.",
    )
    parser.add_argument("--annotations", required=True, help="COCO JSON of the labelled images (path or gs://)")
    parser.add_argument("--images", required=True, help="image root that file_name entries are relative to")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--config", default=CPU_CONFIG, help="detectron2 YAML config (default: the slim CPU model)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--weights", default="", help="initial weights, local path or gs:// (default: from scratch)")
    parser.add_argument("--no-resume", action="store_true", help="ignore checkpoints already in --out")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from taudis.data.coco import CocoFormatError
    from taudis.model.images import ImageReadError

    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        metrics = train_model(
            args.annotations,
            args.images,
            args.out,
            config=args.config,
            opts=args.opts,
            seed=args.seed,
            resume=not args.no_resume,
            weights=args.weights,
        )
    except (CocoFormatError, NothingToTrainError, ImageReadError, FileNotFoundError) as err:
        print(f"taudis train: {err}", file=sys.stderr)  # the input's fault: its message, not a traceback
        return 1
    print(json.dumps({k: metrics[k] for k in ("iterations", "start_iter", "seconds", "losses", "num_images")}))
    return 0
