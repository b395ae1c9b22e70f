"""A second benchmark dataset, generated unlike the built-in one: fluorescence-microscopy nuclei.

taudis's own synthetic data (taudis.data.synth) draws overhead tiles: coloured rigid shapes on
textured ground. This generator shares none of its code or look, so that a benchmark on it says
something about data taudis was not tuned on:

- one stain on a dark background (nuclei glow blue), a smooth illumination falloff toward the
  corners, shot noise that grows with brightness, and a blur of the whole field;
- objects are star-convex blobs (an ellipse whose radius is perturbed by a few random
  harmonics), with a grainy chromatin texture and a brighter rim;
- two classes: ``nucleus`` (common) and ``mitotic`` (rare, about 1 in 20: small, elongated, very
  bright, often as a pair of daughter cells side by side);
- four strata of images: ``sparse`` (a few well-separated nuclei: easy and alike), ``clumped``
  (dozens of touching and overlapping nuclei: the later one is on top and hides what lies
  below), ``dim`` (a faint stain close to the noise floor) and ``blurred`` (out of focus, plus
  mitotic cells three times as often). The validation split holds equal numbers per stratum; the
  initial labelled set is drawn from the rest, so it is mostly sparse.

Layout written (the same as ``taudis data synth``, so the benchmark reads it as any COCO dataset)::

    out/images/<id:06d>.png  out/annotations/{train,pool,val}.json  out/dataset.json

    python bench/datasets/cells.py --out DIR [--images 500] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from taudis.data.masks import mask_annotation

CLASSES = ("nucleus", "mitotic")
STRATA = ("sparse", "clumped", "dim", "blurred")
STRATUM_SHARE = (0.55, 0.15, 0.15, 0.15)
STAIN = np.array([0.25, 0.45, 1.0])  # RGB of a fully bright pixel, relative


def blob(rng: np.random.Generator, size: int, centre: tuple[float, float], radii: tuple[float, float]) -> np.ndarray:
    """A star-convex blob: an ellipse whose radius is modulated by harmonics 2-4, rotated at random."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    dy, dx = yy - centre[0], xx - centre[1]
    angle = rng.uniform(0, np.pi)
    u = dx * np.cos(angle) + dy * np.sin(angle)
    v = -dx * np.sin(angle) + dy * np.cos(angle)
    theta = np.arctan2(v / radii[1], u / radii[0])
    wobble = 1.0 + sum(rng.uniform(0, 0.08) * np.cos(k * theta + rng.uniform(0, 2 * np.pi)) for k in (2, 3, 4))
    return (u / radii[0]) ** 2 + (v / radii[1]) ** 2 <= wobble**2


def plan_cells(
    rng: np.random.Generator, stratum: str, size: int
) -> list[tuple[str, tuple[float, float], tuple[float, float]]]:
    """(class, centre, radii) of each cell to draw, in drawing order (later ones lie on top)."""
    mitotic_rate = 0.15 if stratum == "blurred" else 0.05
    if stratum == "clumped":
        count = int(rng.integers(18, 32))
        clumps = rng.uniform(0.25 * size, 0.75 * size, size=(int(rng.integers(1, 3)), 2))
    else:
        count = int(rng.integers(3, 9))
        clumps = None
    cells = []
    for _ in range(count):
        if clumps is not None:
            centre = clumps[int(rng.integers(len(clumps)))] + rng.normal(0, 0.12 * size, 2)
        else:
            centre = rng.uniform(0.1 * size, 0.9 * size, 2)
        centre = tuple(np.clip(centre, 4, size - 5))
        if rng.random() < mitotic_rate:
            radii = (rng.uniform(4, 6), rng.uniform(2, 3))
            cells.append(("mitotic", centre, radii))
            if rng.random() < 0.6:  # a daughter cell beside it
                offset = rng.normal(0, 1, 2)
                offset = 9 * offset / max(np.linalg.norm(offset), 1e-6)
                cells.append(("mitotic", tuple(np.clip(np.add(centre, offset), 4, size - 5)), radii))
        else:
            r = rng.uniform(6, 11)
            cells.append(("nucleus", centre, (r, r * rng.uniform(0.65, 1.0))))
    return cells


def render(rng: np.random.Generator, stratum: str, size: int) -> tuple[np.ndarray, list[tuple[str, np.ndarray]]]:
    """One image (uint8 RGB) and its visible instances (class, mask), after occlusion."""
    intensity = np.zeros((size, size))
    visible: list[tuple[str, np.ndarray]] = []
    brightness = 0.22 if stratum == "dim" else 0.7
    for category, centre, radii in plan_cells(rng, stratum, size):
        mask = blob(rng, size, centre, radii)
        if not mask.any():
            continue
        level = brightness * (1.6 if category == "mitotic" else rng.uniform(0.7, 1.1))
        grain = 1.0 + 0.25 * rng.standard_normal(mask.sum())
        interior = mask & ~_edge(mask)
        intensity[mask] = level * grain
        intensity[mask & ~interior] = level * 1.25  # a brighter rim
        visible = [(c, m & ~mask) for c, m in visible]  # what lies below is hidden
        visible.append((category, mask))
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1) - 0.5
    falloff = 1.0 - 0.6 * (xx**2 + yy**2) * rng.uniform(0.5, 1.5)
    intensity = _blur(intensity * falloff, sigma=2.5 if stratum == "blurred" else 0.7)
    intensity = intensity + 0.04 + rng.normal(0, 0.02 + 0.05 * np.sqrt(np.clip(intensity, 0, None)))
    pixels = np.clip(intensity[..., None] * STAIN * 255.0, 0, 255).astype(np.uint8)
    return pixels, [(c, m) for c, m in visible if m.sum() >= 10]


def _edge(mask: np.ndarray) -> np.ndarray:
    inner = mask.copy()
    inner[1:] &= mask[:-1]
    inner[:-1] &= mask[1:]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    return mask & ~inner


def _blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur (reflect padding)."""
    radius = max(1, int(3 * sigma))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    padded = np.pad(image, radius, mode="reflect")
    rows = np.apply_along_axis(lambda r: np.convolve(r, taps, mode="valid"), 1, padded)
    return np.apply_along_axis(lambda c: np.convolve(c, taps, mode="valid"), 0, rows)


def strata_of(num_images: int, seed: int) -> list[str]:
    counts = [round(num_images * share) for share in STRATUM_SHARE]
    counts[0] += num_images - sum(counts)
    labels = [s for s, n in zip(STRATA, counts, strict=True) for _ in range(n)]
    return [labels[i] for i in np.random.default_rng([seed, 0]).permutation(num_images)]


def splits_of(strata: list[str], seed: int, val_per_stratum: int, initial: int) -> dict[str, list[int]]:
    """Val: equal numbers per stratum; train: ``initial`` drawn from the rest; pool: what remains."""
    rng = np.random.default_rng([seed, 1])
    val: list[int] = []
    for stratum in STRATA:
        ids = [i + 1 for i, s in enumerate(strata) if s == stratum]
        val += [int(v) for v in rng.choice(ids, size=min(val_per_stratum, len(ids)), replace=False)]
    rest = sorted(set(range(1, len(strata) + 1)) - set(val))
    train = sorted(int(v) for v in rng.choice(rest, size=initial, replace=False))
    return {"train": train, "pool": sorted(set(rest) - set(train)), "val": sorted(val)}


def make_cells_dataset(
    out: Path, num_images: int = 500, seed: int = 0, size: int = 128, initial: int = 10
) -> dict[str, Any]:
    """Write the dataset (see the module docstring); returns dataset.json's content."""
    (out / "images").mkdir(parents=True, exist_ok=True)
    categories = [{"id": i + 1, "name": name, "supercategory": "cell"} for i, name in enumerate(CLASSES)]
    strata = strata_of(num_images, seed)
    images, annotations = [], []
    for image_id, stratum in enumerate(strata, start=1):
        pixels, cells = render(np.random.default_rng([seed, 100, image_id]), stratum, size)
        file_name = f"{image_id:06d}.png"
        Image.fromarray(pixels).save(out / "images" / file_name)
        images.append({"id": image_id, "file_name": file_name, "height": size, "width": size, "stratum": stratum})
        for category, mask in cells:
            annotations.append(mask_annotation(len(annotations) + 1, image_id, CLASSES.index(category) + 1, mask))
    splits = splits_of(strata, seed, val_per_stratum=max(1, num_images // 20), initial=initial)
    counts = {}
    for split, ids in splits.items():
        keep = set(ids)
        coco = {
            "info": {"description": "taudis benchmark: synthetic fluorescence nuclei"},
            "images": [im for im in images if im["id"] in keep],
            "annotations": [a for a in annotations if a["image_id"] in keep],
            "categories": categories,
        }
        (out / "annotations").mkdir(exist_ok=True)
        (out / "annotations" / f"{split}.json").write_text(json.dumps(coco))
        counts[split] = {
            "images": len(coco["images"]),
            "instances": len(coco["annotations"]),
            "per_class": {
                c: sum(a["category_id"] == i + 1 for a in coco["annotations"]) for i, c in enumerate(CLASSES)
            },
            "per_stratum": {s: sum(im["stratum"] == s for im in coco["images"]) for s in STRATA},
        }
    manifest = {
        "generator": "bench/datasets/cells.py",
        "num_images": num_images,
        "seed": seed,
        "size": size,
        "counts": counts,
    }
    (out / "dataset.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--initial", type=int, default=10, help="images in the initial labelled set")
    args = parser.parse_args(argv)
    print(json.dumps(make_cells_dataset(args.out, args.images, args.seed, args.size, args.initial)["counts"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
