"""Helpers for the model and data tests: a tiny synthetic dataset, tiny training settings, odd images."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from taudis.data.synth import make_synthetic_dataset

# 64 px tiles, batch 2, short test-time settings: a few iterations take seconds on one thread.
TINY_OPTS = [
    "INPUT.MIN_SIZE_TRAIN",
    "(64,)",
    "INPUT.MAX_SIZE_TRAIN",
    "128",
    "INPUT.MIN_SIZE_TEST",
    "64",
    "INPUT.MAX_SIZE_TEST",
    "128",
    "SOLVER.IMS_PER_BATCH",
    "2",
    "TAUDIS.SCHEDULE.ENABLED",
    "False",
    "TAUDIS.LOG_PERIOD",
    "2",
    "TAUDIS.NUM_THREADS",
    "1",
]


def tiny_opts(max_iter: int, checkpoint_period: int = 1000) -> list[str]:
    """TINY_OPTS plus a fixed number of iterations and a checkpoint period."""
    return [*TINY_OPTS, "SOLVER.MAX_ITER", str(max_iter), "SOLVER.CHECKPOINT_PERIOD", str(checkpoint_period)]


def make_tiny_dataset(out: Path, num_images: int = 12, seed: int = 3) -> dict[str, Any]:
    """A 64 px synthetic dataset with a 6-image labelled set; returns dataset.json."""
    return make_synthetic_dataset(
        out, num_images=num_images, seed=seed, image_size=64, initial_labeled=6, val_fraction=0.25, min_area=4
    )


def write_coco_for_files(path: Path, files: dict[str, tuple[int, int]]) -> Path:
    """A COCO file listing only the given files (name -> (height, width)) as images 1..n."""
    images = [
        {"id": i + 1, "file_name": name, "height": hw[0], "width": hw[1]} for i, (name, hw) in enumerate(files.items())
    ]
    data = {"images": images}  # an unlabelled pool needs nothing else
    path.write_text(json.dumps(data))
    return path


def write_odd_images(root: Path, like: Path) -> dict[str, dict[str, Any]]:
    """Images in unusual modes plus broken files, derived from the RGB tile ``like``.

    Returns:
        file name -> {"ok": readable or not, "size": (height, width) of the readable ones}.
    """
    root.mkdir(parents=True, exist_ok=True)
    rgb = np.asarray(Image.open(like).convert("RGB"))
    h, w = rgb.shape[:2]
    gray = np.asarray(Image.fromarray(rgb).convert("L"))
    Image.fromarray(gray).save(root / "gray.png")
    rgba = np.dstack([rgb, np.full((h, w), 128, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(root / "rgba.png")
    deep = Image.fromarray(gray.astype(np.uint16) * 200)
    assert deep.mode == "I;16"
    deep.save(root / "deep16.png")
    Image.fromarray(rgb).convert("P").save(root / "palette.png")
    big = np.asarray(Image.fromarray(rgb).resize((w * 24, h * 18), Image.Resampling.NEAREST))
    Image.fromarray(big).save(root / "large.jpg", quality=90)
    good = (root / "gray.png").read_bytes()
    (root / "truncated.png").write_bytes(good[: len(good) // 2])
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    (root / "empty.png").write_bytes(b"")
    out: dict[str, dict[str, Any]] = {
        name: {"ok": True, "size": (h, w)} for name in ("gray.png", "rgba.png", "deep16.png", "palette.png")
    }
    out["large.jpg"] = {"ok": True, "size": (h * 18, w * 24)}
    for name in ("truncated.png", "corrupt.png", "empty.png", "missing.png"):
        out[name] = {"ok": False, "size": (h, w)}
    return out
