"""detectron2 configuration: taudis's own keys (the TAUDIS node) and the one place configs are read.

The YAML files live in ``configs/`` at the repository root and install as package data
(``taudis.configs``, see setup.py), so an installed taudis finds them wherever it lives;
``TAUDIS_CONFIG_DIR`` points elsewhere. They use detectron2's ``_BASE_`` inheritance; ``opts``
overrides any key, detectron2 style (``["SOLVER.BASE_LR", "0.01"]``).

``DATALOADER.NUM_WORKERS`` is capped to 0 where ``/dev/shm`` is small (see
:func:`loader_workers`): worker processes hand batches over through shared memory, and a
container's default 64 MiB of it (Docker, a pod without a memory-backed /dev/shm, Vertex AI)
makes them die with a bus error.

TAUDIS keys (defaults below):

- ``TAUDIS.SCHEDULE.ENABLED`` / ``ITERS_PER_IMAGE`` / ``MIN_ITERS`` / ``MAX_ITERS``: the training
  schedule grows with the labelled set, ``SOLVER.MAX_ITER = clamp(round(ITERS_PER_IMAGE *
  num_images), MIN_ITERS, MAX_ITERS)`` (a fixed schedule flattens the learning curve: more images
  at equal iterations scored lower). Disabled, ``SOLVER.MAX_ITER`` is used as is; an override of
  ``SOLVER.MAX_ITER`` alone disables it (what anyone who types one means), unless the overrides
  also set ``TAUDIS.SCHEDULE.ENABLED``.
- ``TAUDIS.SCHEDULE.FINETUNE_SCALE``: when a round starts from the previous round's model instead
  of from scratch, it trains this fraction of the schedule's iterations.
- ``TAUDIS.COLLAPSE.MAX_CLS_LOSS_RATIO`` / ``MIN_ITERS`` / ``RETRIES``: a run from scratch of at
  least MIN_ITERS iterations whose box classification loss ends at MAX_CLS_LOSS_RATIO or more of
  its start has collapsed (taudis.model.collapse) and is trained again with another seed, at most
  RETRIES times; 0.8 sits between the healthy runs measured (0.11-0.58) and a collapsed one (1.08).
  A ratio of 0 turns the check off.
- ``TAUDIS.DEVICE``: "auto" (CUDA when present, else CPU), or any torch device; sets MODEL.DEVICE.
- ``TAUDIS.NUM_THREADS``: torch CPU threads; 0 leaves torch's default.
- ``TAUDIS.LOG_PERIOD``: iterations between progress lines.
- ``TAUDIS.VFLIP``: add vertical flips to the training augmentation (overhead imagery has no "up").
- ``TAUDIS.EMBEDDING_DTYPE``: "float32" or "float16" for the instance table's embeddings.
- ``TAUDIS.EMBEDDING_LAYER``: what the embeddings are: "mask_head" (the mask head's last conv
  layer) or "roi_features" (the FPN features it reads, before any head layer); see
  taudis.model.roi_heads. An inference setting: it changes no weight.
- ``TAUDIS.CLASS_NAMES`` / ``TAUDIS.CATEGORY_IDS``: written by training from the dataset, so a
  trained model knows its classes and their COCO category ids.
"""

from __future__ import annotations

import importlib.resources
import logging
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from detectron2.config import CfgNode

log = logging.getLogger(__name__)

CONFIG_DIR = Path(os.environ.get("TAUDIS_CONFIG_DIR") or str(importlib.resources.files("taudis.configs")))
CPU_CONFIG = str(CONFIG_DIR / "mask_rcnn_R18_slim_cpu.yaml")
GPU_CONFIG = str(CONFIG_DIR / "mask_rcnn_R50_FPN_gpu.yaml")
# Below this much shared memory, data loader workers are not used (see loader_workers).
MIN_SHM_BYTES = 1 << 30
# TAUDIS.EMBEDDING_LAYER's values (taudis.model.roi_heads), each with the words a shard's header gives it
EMBEDDING_LAYERS = {
    "mask_head": "mask head last conv layer, spatial mean, L2-normalised",
    "roi_features": "FPN features ROIAligned on the box (the mask head's input), spatial mean, L2-normalised",
}


def add_taudis_config(cfg: CfgNode) -> CfgNode:
    """Add the TAUDIS node with its defaults to a detectron2 config (in place; returns it)."""
    from detectron2.config import CfgNode as CN

    cfg.TAUDIS = CN()
    cfg.TAUDIS.SCHEDULE = CN()
    cfg.TAUDIS.SCHEDULE.ENABLED = False
    cfg.TAUDIS.SCHEDULE.ITERS_PER_IMAGE = 4.0
    cfg.TAUDIS.SCHEDULE.MIN_ITERS = 100
    cfg.TAUDIS.SCHEDULE.MAX_ITERS = 400
    cfg.TAUDIS.SCHEDULE.FINETUNE_SCALE = 0.5
    cfg.TAUDIS.COLLAPSE = CN()
    cfg.TAUDIS.COLLAPSE.MAX_CLS_LOSS_RATIO = 0.8
    cfg.TAUDIS.COLLAPSE.MIN_ITERS = 200
    cfg.TAUDIS.COLLAPSE.RETRIES = 2
    cfg.TAUDIS.DEVICE = "auto"
    cfg.TAUDIS.NUM_THREADS = 0
    cfg.TAUDIS.LOG_PERIOD = 20
    cfg.TAUDIS.VFLIP = True
    cfg.TAUDIS.EMBEDDING_DTYPE = "float32"
    cfg.TAUDIS.EMBEDDING_LAYER = "mask_head"
    cfg.TAUDIS.CLASS_NAMES = []
    cfg.TAUDIS.CATEGORY_IDS = []
    return cfg


def resolve_config_path(config: str | os.PathLike[str]) -> Path:
    """A config path as given, or a bare file name looked up in the configs directory.

    Raises:
        FileNotFoundError: naming both places tried.
    """
    path = Path(config)
    if path.is_file():
        return path
    candidate = CONFIG_DIR / path.name
    if candidate.is_file():
        return candidate
    raise FileNotFoundError(f"config {str(config)!r} not found (also looked for {candidate})")


def load_config(config: str | os.PathLike[str] = CPU_CONFIG, opts: Sequence[str] = ()) -> CfgNode:
    """Read a detectron2 YAML config (with ``_BASE_`` inheritance) plus overrides, resolving the device.

    Args:
        config: a YAML file, or the bare name of one in ``configs/``.
        opts: flat ``KEY VALUE`` overrides, e.g. ``["SOLVER.MAX_ITER", "10"]``.

    Returns:
        A mutable CfgNode with the TAUDIS node and MODEL.DEVICE set.
    """
    from detectron2.config import get_cfg

    cfg = add_taudis_config(get_cfg())
    cfg.merge_from_file(str(resolve_config_path(config)))
    if len(opts) % 2:
        raise ValueError(f"opts must be KEY VALUE pairs, got an odd number: {list(opts)}")
    cfg.merge_from_list(_widen_ints(cfg, list(opts)))
    keys = set(opts[::2])
    if "SOLVER.MAX_ITER" in keys and "TAUDIS.SCHEDULE.ENABLED" not in keys and cfg.TAUDIS.SCHEDULE.ENABLED:
        log.info(
            "SOLVER.MAX_ITER %s given: the training schedule is off (TAUDIS.SCHEDULE.ENABLED)", cfg.SOLVER.MAX_ITER
        )
        cfg.TAUDIS.SCHEDULE.ENABLED = False
    cfg.MODEL.DEVICE = resolve_device(cfg.TAUDIS.DEVICE)
    cfg.DATALOADER.NUM_WORKERS = loader_workers(int(cfg.DATALOADER.NUM_WORKERS), shm_bytes())
    return cfg


def _widen_ints(cfg: CfgNode, opts: list[str]) -> list[str]:
    """``KEY 20`` for a float key reads as ``KEY 20.0``: yacs refuses an int where the config holds
    a float, and ``TAUDIS.SCHEDULE.ITERS_PER_IMAGE 20`` is what anyone types. Nothing else changes."""
    out = list(opts)
    for i in range(0, len(out), 2):
        node: Any = cfg
        for part in out[i].split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, float) and re.fullmatch(r"[+-]?\d+", out[i + 1].strip()):
            out[i + 1] = f"{int(out[i + 1])}.0"
    return out


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when a GPU is visible, else 'cpu'; anything else as given."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def shm_bytes(path: str = "/dev/shm") -> int | None:
    """The size of the shared-memory filesystem at ``path``, or None where there is none."""
    try:
        return shutil.disk_usage(path).total
    except OSError:
        return None


def loader_workers(requested: int, shm: int | None) -> int:
    """Data loader workers to use: ``requested``, or 0 when ``shm`` bytes of /dev/shm cannot carry their batches.

    None (no /dev/shm, e.g. macOS, where torch shares memory differently) keeps ``requested``.
    """
    if requested > 0 and shm is not None and shm < MIN_SHM_BYTES:
        log.warning(
            "/dev/shm has %d MiB (< %d MiB): loading data in the main process instead of %d workers",
            shm >> 20,
            MIN_SHM_BYTES >> 20,
            requested,
        )
        return 0
    return requested


def scheduled_iterations(cfg: CfgNode, num_images: int, *, finetune: bool = False) -> int:
    """Training iterations for a labelled set of ``num_images``: the TAUDIS schedule or SOLVER.MAX_ITER.

    ``finetune``: the run starts from the previous round's model, and trains
    ``TAUDIS.SCHEDULE.FINETUNE_SCALE`` of the iterations (at least one).
    """
    schedule = cfg.TAUDIS.SCHEDULE
    if not schedule.ENABLED:
        iterations = int(cfg.SOLVER.MAX_ITER)
    else:
        wanted = round(float(schedule.ITERS_PER_IMAGE) * num_images)
        iterations = int(min(max(wanted, int(schedule.MIN_ITERS)), int(schedule.MAX_ITERS)))
    return max(1, round(iterations * float(schedule.FINETUNE_SCALE))) if finetune else iterations


def model_config(model_dir: str | os.PathLike[str], opts: Sequence[str] = ()) -> CfgNode:
    """The config a trained model was trained with (``model_dir/config.yaml``), pointing at its weights.

    Raises:
        FileNotFoundError: no config.yaml or model_final.pth in ``model_dir``.
    """
    model_dir = Path(model_dir)
    config_file, weights = model_dir / "config.yaml", model_dir / "model_final.pth"
    for required in (config_file, weights):
        if not required.is_file():
            raise FileNotFoundError(f"{model_dir} is not a trained model directory: {required.name} is missing")
    cfg = load_config(config_file, opts)
    cfg.MODEL.WEIGHTS = str(weights)
    return cfg


def config_summary(cfg: CfgNode) -> dict[str, Any]:
    """The few settings worth logging next to metrics."""
    return {
        "depth": int(cfg.MODEL.RESNETS.DEPTH),
        "min_size_train": list(cfg.INPUT.MIN_SIZE_TRAIN),
        "ims_per_batch": int(cfg.SOLVER.IMS_PER_BATCH),
        "base_lr": float(cfg.SOLVER.BASE_LR),
        "device": str(cfg.MODEL.DEVICE),
    }
