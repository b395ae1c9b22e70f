"""detectron2 configuration: taudis's own keys (the TAUDIS node) and the one place configs are read.

The YAML files live in ``configs/`` at the repository root and use detectron2's ``_BASE_``
inheritance; ``opts`` overrides any key, detectron2 style (``["SOLVER.BASE_LR", "0.01"]``).

TAUDIS keys (defaults below):

- ``TAUDIS.SCHEDULE.ENABLED`` / ``ITERS_PER_IMAGE`` / ``MIN_ITERS`` / ``MAX_ITERS``: the training
  schedule grows with the labelled set, ``SOLVER.MAX_ITER = clamp(round(ITERS_PER_IMAGE *
  num_images), MIN_ITERS, MAX_ITERS)`` (a fixed schedule flattens the learning curve: more images
  at equal iterations scored lower). Disabled, ``SOLVER.MAX_ITER`` is used as is.
- ``TAUDIS.DEVICE``: "auto" (CUDA when present, else CPU), or any torch device; sets MODEL.DEVICE.
- ``TAUDIS.NUM_THREADS``: torch CPU threads; 0 leaves torch's default.
- ``TAUDIS.LOG_PERIOD``: iterations between progress lines.
- ``TAUDIS.VFLIP``: add vertical flips to the training augmentation (overhead imagery has no "up").
- ``TAUDIS.EMBEDDING_DTYPE``: "float32" or "float16" for the instance table's embeddings.
- ``TAUDIS.CLASS_NAMES`` / ``TAUDIS.CATEGORY_IDS``: written by training from the dataset, so a
  trained model knows its classes and their COCO category ids.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from detectron2.config import CfgNode

CONFIG_DIR = Path(os.environ.get("TAUDIS_CONFIG_DIR", Path(__file__).resolve().parents[2] / "configs"))
CPU_CONFIG = str(CONFIG_DIR / "mask_rcnn_R18_slim_cpu.yaml")
GPU_CONFIG = str(CONFIG_DIR / "mask_rcnn_R50_FPN_gpu.yaml")


def add_taudis_config(cfg: CfgNode) -> CfgNode:
    """Add the TAUDIS node with its defaults to a detectron2 config (in place; returns it)."""
    from detectron2.config import CfgNode as CN

    cfg.TAUDIS = CN()
    cfg.TAUDIS.SCHEDULE = CN()
    cfg.TAUDIS.SCHEDULE.ENABLED = False
    cfg.TAUDIS.SCHEDULE.ITERS_PER_IMAGE = 4.0
    cfg.TAUDIS.SCHEDULE.MIN_ITERS = 100
    cfg.TAUDIS.SCHEDULE.MAX_ITERS = 400
    cfg.TAUDIS.DEVICE = "auto"
    cfg.TAUDIS.NUM_THREADS = 0
    cfg.TAUDIS.LOG_PERIOD = 20
    cfg.TAUDIS.VFLIP = True
    cfg.TAUDIS.EMBEDDING_DTYPE = "float32"
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
    cfg.merge_from_list(list(opts))
    cfg.MODEL.DEVICE = resolve_device(cfg.TAUDIS.DEVICE)
    return cfg


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when a GPU is visible, else 'cpu'; anything else as given."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def scheduled_iterations(cfg: CfgNode, num_images: int) -> int:
    """Training iterations for a labelled set of ``num_images``: the TAUDIS schedule or SOLVER.MAX_ITER."""
    schedule = cfg.TAUDIS.SCHEDULE
    if not schedule.ENABLED:
        return int(cfg.SOLVER.MAX_ITER)
    wanted = round(float(schedule.ITERS_PER_IMAGE) * num_images)
    return int(min(max(wanted, int(schedule.MIN_ITERS)), int(schedule.MAX_ITERS)))


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
