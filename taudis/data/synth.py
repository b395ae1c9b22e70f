"""The built-in synthetic dataset: overhead-style tiles where active learning has something to find.

Each tile is a small aerial-like scene: a textured ground, roads and unlabelled clutter, and
labelled objects of four classes with strong imbalance:

    ========  ============================================  =====================
    class     shape                                         frequency
    ========  ============================================  =====================
    car       small rotated rectangle, often parked in rows  most common
    tree      round canopy drawn last: occludes what is below common
    building  rotated rectangle or L-shape, with shadow      common
    pool      rounded bright-blue rectangle                  rare (``rare_rate``)
    ========  ============================================  =====================

Tiles come in four strata. Most are ``easy`` (clear contrast, few objects, redundant: they look
alike). The hard strata are fewer: ``low_contrast`` (objects close to the ground's colour, more
noise), ``dense`` (packed rows of cars with heavy canopy occlusion) and ``rare_large`` (a large
L-shaped building and a pool). The validation split is stratified with equal numbers per stratum
so that hard tiles count in its AP; the initial labelled set is drawn at random from the rest, so
it holds mostly easy tiles.

Every tile is drawn from its own generator seeded by ``(seed, image_id)``: a dataset is
byte-identical for a seed, and tile i is the same whatever ``num_images`` is.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from taudis.data.coco import write_coco
from taudis.data.masks import mask_annotation

CLASSES = ("car", "tree", "building", "pool")
STRATA = ("easy", "low_contrast", "dense", "rare_large")
SPLITS = ("train", "pool", "val")
GENERATOR = "taudis.data.synth"
GENERATOR_VERSION = 1

# Mean colours (RGB) of the ground and of each class in an easy tile.
_GROUND = np.array([96.0, 118.0, 72.0])
_ROAD = np.array([120.0, 120.0, 118.0])
_CLASS_COLOURS = {
    "car": [np.array(c, float) for c in ([200, 40, 40], [230, 230, 235], [40, 60, 170], [30, 30, 30], [210, 190, 60])],
    "tree": [np.array([34.0, 78.0, 30.0])],
    "building": [np.array([170.0, 150.0, 140.0]), np.array([140.0, 80.0, 70.0])],
    "pool": [np.array([60.0, 190.0, 230.0])],
}


@dataclass(frozen=True)
class SynthConfig:
    """The knobs of the synthetic dataset (all recorded in ``dataset.json``).

    Attributes:
        num_images: tiles in total (train + pool + val).
        seed: master seed; the dataset is a pure function of the knobs.
        image_size: tile side in pixels (tiles are square).
        initial_labeled: tiles in the initial labelled set (``train.json``).
        val_fraction: share of the tiles held out for validation (``val.json``).
        hard_fraction: share of tiles drawn from the three hard strata (split equally among them).
        rare_rate: probability that a non-``rare_large`` tile holds a pool (the rare class);
            every ``rare_large`` tile holds one.
        max_objects: upper bound of labelled objects in an easy tile (dense tiles hold 2-3x more).
        occlusion: probability that a tree canopy is placed over another object.
        clutter: number of unlabelled distractor blobs per tile, on average.
        noise: standard deviation of the per-pixel noise in easy tiles (grey levels).
        min_area: instances whose visible area falls below this many pixels are dropped.
    """

    num_images: int = 300
    seed: int = 0
    image_size: int = 128
    initial_labeled: int = 10
    val_fraction: float = 0.2
    hard_fraction: float = 0.3
    rare_rate: float = 0.04
    max_objects: int = 6
    occlusion: float = 0.3
    clutter: float = 3.0
    noise: float = 6.0
    min_area: int = 12

    def validate(self) -> None:
        """Raise ValueError naming the knob that is out of range."""
        if self.num_images < 4:
            raise ValueError(f"num_images must be at least 4, got {self.num_images}")
        if self.image_size < 32:
            raise ValueError(f"image_size must be at least 32, got {self.image_size}")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if not 0 <= self.hard_fraction <= 1:
            raise ValueError(f"hard_fraction must be in [0, 1], got {self.hard_fraction}")
        if not 0 <= self.rare_rate <= 1:
            raise ValueError(f"rare_rate must be in [0, 1], got {self.rare_rate}")
        if not 0 <= self.occlusion <= 1:
            raise ValueError(f"occlusion must be in [0, 1], got {self.occlusion}")
        if self.max_objects < 1:
            raise ValueError(f"max_objects must be at least 1, got {self.max_objects}")
        if self.clutter < 0 or self.noise < 0 or self.min_area < 1:
            raise ValueError("clutter and noise must be >= 0 and min_area >= 1")
        num_val = self.num_val
        if self.initial_labeled < 1 or self.initial_labeled > self.num_images - num_val - 1:
            raise ValueError(
                f"initial_labeled must be in [1, {self.num_images - num_val - 1}] "
                f"for {self.num_images} images with {num_val} held out, got {self.initial_labeled}"
            )

    @property
    def num_val(self) -> int:
        return max(1, round(self.num_images * self.val_fraction))


@dataclass
class _Instance:
    category: str
    mask: np.ndarray  # bool (H, W), full shape before occlusion


def make_synthetic_dataset(
    out_dir: str | Path,
    num_images: int = 300,
    seed: int = 0,
    *,
    image_size: int = 128,
    initial_labeled: int = 10,
    val_fraction: float = 0.2,
    hard_fraction: float = 0.3,
    rare_rate: float = 0.04,
    max_objects: int = 6,
    occlusion: float = 0.3,
    clutter: float = 3.0,
    noise: float = 6.0,
    min_area: int = 12,
) -> dict[str, Any]:
    """Write the synthetic dataset to ``out_dir``. See :class:`SynthConfig` for every knob.

    Layout::

        out_dir/
          images/<id:06d>.png          RGB tiles, image_size x image_size
          annotations/train.json       COCO, RLE masks: the initial labelled set
          annotations/pool.json        COCO: the unlabelled pool, with its labels (the oracle's)
          annotations/val.json         COCO: held out, equal numbers of tiles per stratum
          dataset.json                 generator, version, knobs, image root, split files,
                                       per-split image and instance counts per class and stratum

    ``file_name`` in the COCO files is relative to ``out_dir/images`` (the image root). Each COCO
    image carries an extra ``stratum`` field. Running it twice with the same knobs gives
    byte-identical files.

    Returns:
        The contents of ``dataset.json``.
    """
    config = SynthConfig(
        num_images=num_images,
        seed=seed,
        image_size=image_size,
        initial_labeled=initial_labeled,
        val_fraction=val_fraction,
        hard_fraction=hard_fraction,
        rare_rate=rare_rate,
        max_objects=max_objects,
        occlusion=occlusion,
        clutter=clutter,
        noise=noise,
        min_area=min_area,
    )
    config.validate()
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    categories = [{"id": i + 1, "name": name, "supercategory": "object"} for i, name in enumerate(CLASSES)]
    category_id = {name: i + 1 for i, name in enumerate(CLASSES)}
    strata = _assign_strata(config)
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for image_id in range(1, config.num_images + 1):
        stratum = strata[image_id - 1]
        rng = np.random.default_rng([config.seed, image_id])
        pixels, instances = _render_tile(rng, stratum, config)
        file_name = f"{image_id:06d}.png"
        Image.fromarray(pixels).save(out / "images" / file_name, optimize=False)
        images.append(
            {
                "id": image_id,
                "file_name": file_name,
                "height": config.image_size,
                "width": config.image_size,
                "stratum": stratum,
            }
        )
        for instance in instances:
            annotations.append(
                mask_annotation(len(annotations) + 1, image_id, category_id[instance.category], instance.mask)
            )
    # A rerun with fewer images must not leave the previous run's extra tiles behind.
    for stale in (out / "images").glob("[0-9][0-9][0-9][0-9][0-9][0-9].png"):
        if int(stale.stem) > config.num_images:
            stale.unlink()
    splits = _split(config, strata)
    info = {"description": "taudis synthetic overhead tiles", "version": str(GENERATOR_VERSION)}
    counts: dict[str, Any] = {}
    for split, ids in splits.items():
        chosen = set(ids)
        coco = {
            "info": info,
            "images": [img for img in images if img["id"] in chosen],
            "annotations": [ann for ann in annotations if ann["image_id"] in chosen],
            "categories": categories,
        }
        write_coco(coco, out / "annotations" / f"{split}.json")
        counts[split] = _counts(coco)
    manifest = {
        "generator": GENERATOR,
        "version": GENERATOR_VERSION,
        "knobs": asdict(config),
        "classes": list(CLASSES),
        "strata": list(STRATA),
        "image_root": "images",
        "splits": {split: f"annotations/{split}.json" for split in SPLITS},
        "counts": counts,
    }
    (out / "dataset.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return manifest


def _assign_strata(config: SynthConfig) -> list[str]:
    """Stratum of each tile, in id order: a seeded shuffle of exact per-stratum counts."""
    rng = np.random.default_rng([config.seed, 0])
    num_hard = round(config.num_images * config.hard_fraction)
    per_hard = [num_hard // 3 + (1 if i < num_hard % 3 else 0) for i in range(3)]
    labels = ["easy"] * (config.num_images - num_hard)
    for stratum, count in zip(STRATA[1:], per_hard, strict=True):
        labels += [stratum] * count
    order = rng.permutation(len(labels))
    return [labels[i] for i in order]


def _split(config: SynthConfig, strata: list[str]) -> dict[str, list[int]]:
    """Image ids per split: val balanced over strata, then a random initial labelled set, the rest the pool."""
    rng = np.random.default_rng([config.seed, 1])
    by_stratum = {s: [i + 1 for i, t in enumerate(strata) if t == s] for s in STRATA}
    present = [s for s in STRATA if by_stratum[s]]
    val: list[int] = []
    # Round-robin over strata so that val holds (nearly) equal numbers of each, within what exists.
    shuffled = {s: list(rng.permutation(by_stratum[s])) for s in present}
    while len(val) < config.num_val:
        progressed = False
        for s in present:
            if shuffled[s] and len(val) < config.num_val:
                val.append(int(shuffled[s].pop()))
                progressed = True
        if not progressed:
            break
    rest = sorted(set(range(1, config.num_images + 1)) - set(val))
    train = sorted(int(i) for i in rng.choice(rest, size=config.initial_labeled, replace=False))
    pool = sorted(set(rest) - set(train))
    return {"train": train, "pool": pool, "val": sorted(val)}


def _counts(coco: dict[str, Any]) -> dict[str, Any]:
    names = {c["id"]: c["name"] for c in coco["categories"]}
    per_class = dict.fromkeys(CLASSES, 0)
    for ann in coco["annotations"]:
        per_class[names[ann["category_id"]]] += 1
    per_stratum = dict.fromkeys(STRATA, 0)
    for img in coco["images"]:
        per_stratum[img["stratum"]] += 1
    return {
        "images": len(coco["images"]),
        "instances": len(coco["annotations"]),
        "instances_per_class": per_class,
        "images_per_stratum": per_stratum,
    }


# ---------------------------------------------------------------------------------------------
# Rendering


def _render_tile(rng: np.random.Generator, stratum: str, config: SynthConfig) -> tuple[np.ndarray, list[_Instance]]:
    """One tile's RGB pixels and its visible instances (after occlusion and the min-area filter)."""
    size = config.image_size
    low = stratum == "low_contrast"
    # Low contrast: objects are pulled toward the ground colour and the noise is doubled.
    contrast = rng.uniform(0.25, 0.4) if low else 1.0
    ground = _GROUND + rng.normal(0, 8, 3)
    canvas = _ground(rng, size, ground)
    if rng.random() < 0.5:
        _road(rng, canvas, size)
    _clutter(rng, canvas, size, config.clutter * (2.0 if stratum in ("dense", "low_contrast") else 1.0))

    placed: list[_Instance] = []
    plan = _plan_objects(rng, stratum, config)
    # Dense tiles park their cars side by side in rows, a few pixels apart: a parking lot.
    slots = _parking_rows(rng, size) if stratum == "dense" else []
    for category in plan:
        slot = slots.pop() if category == "car" and slots else None
        mask = _shape(rng, category, size, slot)
        if mask is None:
            continue
        if category != "tree":
            _shadow(canvas, mask, strength=0.35 if category != "car" else 0.2)
        palette = _CLASS_COLOURS["building" if category == "large_building" else category]
        colour = palette[int(rng.integers(len(palette)))]
        colour = ground + contrast * (colour - ground)
        _paint(rng, canvas, mask, colour, texture=10.0 if category == "tree" else 4.0)
        placed.append(_Instance(category, mask))
    # Tree canopies drawn over other objects: the occlusion that makes masks hard.
    occluders = sum(1 for _ in placed if rng.random() < config.occlusion)
    for _ in range(occluders):
        target = placed[int(rng.integers(len(placed)))].mask if placed else None
        mask = _canopy_over(rng, size, target)
        colour = ground + contrast * (_CLASS_COLOURS["tree"][0] - ground)
        _paint(rng, canvas, mask, colour, texture=10.0)
        placed.append(_Instance("tree", mask))

    noise = config.noise * (2.0 if low else 1.0)
    canvas += rng.normal(0, noise, canvas.shape)
    pixels = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    return pixels, _visible(placed, config.min_area)


def _plan_objects(rng: np.random.Generator, stratum: str, config: SynthConfig) -> list[str]:
    """The classes to draw, bottom to top. Imbalance: cars > trees > buildings >> pools."""
    weights = np.array([0.45, 0.25, 0.30])
    base = ["car", "tree", "building"]
    if stratum == "dense":
        count = int(rng.integers(2 * config.max_objects, 3 * config.max_objects + 1))
        weights = np.array([0.75, 0.15, 0.10])
    elif stratum == "rare_large":
        count = int(rng.integers(1, max(2, config.max_objects // 2) + 1))
    else:
        count = int(rng.integers(1, config.max_objects + 1))
    plan = [base[int(i)] for i in rng.choice(3, size=count, p=weights)]
    # Big things first so that small ones sit on top of them, not under.
    plan.sort(key=lambda c: {"building": 0, "pool": 1, "car": 2, "tree": 3}[c])
    if stratum == "rare_large" or rng.random() < config.rare_rate:
        plan.insert(0, "pool")
    if stratum == "rare_large":
        plan.insert(0, "large_building")
    return plan


def _parking_rows(rng: np.random.Generator, size: int) -> list[tuple[float, float, float]]:
    """Car slots (cx, cy, angle) along one or two parallel rows, in random order."""
    scale = size / 128.0
    angle = rng.uniform(0, math.pi)
    along = np.array([math.cos(angle), math.sin(angle)])
    across = np.array([-along[1], along[0]])
    centre = rng.uniform(0.35, 0.65, 2) * size
    slots = []
    for row in range(int(rng.integers(1, 3))):
        origin = centre + across * row * 13 * scale
        for k in range(-6, 7):
            x, y = origin + along * k * rng.uniform(5.5, 6.5) * scale
            if 0 <= x < size and 0 <= y < size:
                slots.append((float(x), float(y), angle + math.pi / 2 + rng.normal(0, 0.08)))
    order = rng.permutation(len(slots))
    return [slots[i] for i in order]


def _shape(
    rng: np.random.Generator, category: str, size: int, slot: tuple[float, float, float] | None = None
) -> np.ndarray | None:
    """Boolean mask of one object at ``slot`` (centre x, y and angle) or at a random place."""
    scale = size / 128.0
    image = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(image)
    cx, cy = rng.uniform(0.1, 0.9, 2) * size
    angle = rng.uniform(0, math.pi)
    if slot is not None:
        cx, cy, angle = slot
    if category == "car":
        length, width = rng.uniform(7, 11) * scale, rng.uniform(3.5, 5.5) * scale
        draw.polygon(_rectangle(cx, cy, length, width, angle), fill=1)
    elif category == "tree":
        radius = rng.uniform(4, 9) * scale
        draw.ellipse(_blob_box(cx, cy, radius), fill=1)
    elif category == "building":
        length, width = rng.uniform(14, 30) * scale, rng.uniform(10, 20) * scale
        draw.polygon(_rectangle(cx, cy, length, width, angle), fill=1)
    elif category == "large_building":
        cx, cy = rng.uniform(0.3, 0.7, 2) * size
        arm, width = rng.uniform(40, 60) * scale, rng.uniform(14, 22) * scale
        draw.polygon(_rectangle(cx, cy, arm, width, angle), fill=1)
        # The second arm of the L, from one end of the first.
        ex, ey = cx + math.cos(angle) * arm / 2, cy + math.sin(angle) * arm / 2
        perp = angle + math.pi / 2
        draw.polygon(
            _rectangle(ex + math.cos(perp) * arm / 4, ey + math.sin(perp) * arm / 4, arm / 2, width, perp), fill=1
        )
    elif category == "pool":
        length, width = rng.uniform(12, 26) * scale, rng.uniform(8, 14) * scale
        x0, y0 = cx - length / 2, cy - width / 2
        draw.rounded_rectangle([x0, y0, x0 + length, y0 + width], radius=max(1.0, width / 3), fill=1)
    else:
        raise ValueError(f"unknown synthetic category {category!r}")
    mask = np.asarray(image, dtype=bool)
    return mask if mask.any() else None


def _rectangle(cx: float, cy: float, length: float, width: float, angle: float) -> list[tuple[float, float]]:
    c, s = math.cos(angle), math.sin(angle)
    corners = [(-length / 2, -width / 2), (length / 2, -width / 2), (length / 2, width / 2), (-length / 2, width / 2)]
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in corners]


def _blob_box(cx: float, cy: float, radius: float) -> list[float]:
    return [cx - radius, cy - radius, cx + radius, cy + radius]


def _canopy_over(rng: np.random.Generator, size: int, target: np.ndarray | None) -> np.ndarray:
    """A tree canopy centred near an edge of ``target`` (or anywhere), partly covering it."""
    image = Image.new("L", (size, size), 0)
    radius = rng.uniform(5, 10) * size / 128.0
    if target is not None and target.any():
        ys, xs = np.nonzero(target)
        k = int(rng.integers(len(xs)))
        cx, cy = float(xs[k]) + rng.normal(0, 3), float(ys[k]) + rng.normal(0, 3)
    else:
        cx, cy = rng.uniform(0, size, 2)
    ImageDraw.Draw(image).ellipse(_blob_box(cx, cy, radius), fill=1)
    return np.asarray(image, dtype=bool)


def _ground(rng: np.random.Generator, size: int, colour: np.ndarray) -> np.ndarray:
    """Ground texture: the colour modulated by smooth low-frequency noise."""
    coarse = rng.normal(0, 1, (size // 16 + 2, size // 16 + 2, 1))
    smooth = np.asarray(
        Image.fromarray(((coarse[..., 0] * 20) + 128).clip(0, 255).astype(np.uint8)).resize(
            (size, size), Image.Resampling.BILINEAR
        ),
        dtype=np.float64,
    )
    return colour[None, None, :] + (smooth[..., None] - 128.0) * np.array([0.8, 1.0, 0.6])


def _road(rng: np.random.Generator, canvas: np.ndarray, size: int) -> None:
    image = Image.new("L", (size, size), 0)
    width = int(rng.integers(8, 16) * size / 128)
    if rng.random() < 0.5:
        y = int(rng.integers(0, size))
        ImageDraw.Draw(image).line([(0, y), (size, y + int(rng.integers(-20, 21)))], fill=1, width=width)
    else:
        x = int(rng.integers(0, size))
        ImageDraw.Draw(image).line([(x, 0), (x + int(rng.integers(-20, 21)), size)], fill=1, width=width)
    mask = np.asarray(image, dtype=bool)
    canvas[mask] = _ROAD + rng.normal(0, 3, (int(mask.sum()), 3))


def _clutter(rng: np.random.Generator, canvas: np.ndarray, size: int, mean: float) -> None:
    """Unlabelled distractors: small dark or light blobs and short strokes."""
    for _ in range(int(rng.poisson(mean))):
        image = Image.new("L", (size, size), 0)
        draw = ImageDraw.Draw(image)
        cx, cy = rng.uniform(0, size, 2)
        r = rng.uniform(1.5, 5) * size / 128
        if rng.random() < 0.5:
            draw.ellipse(_blob_box(cx, cy, r), fill=1)
        else:
            draw.line([(cx, cy), (cx + rng.normal(0, 8), cy + rng.normal(0, 8))], fill=1, width=2)
        mask = np.asarray(image, dtype=bool)
        canvas[mask] = canvas[mask] * rng.uniform(0.5, 1.4)


def _shadow(canvas: np.ndarray, mask: np.ndarray, strength: float) -> None:
    """Darken the ground below and right of an object (sun from the top left)."""
    shifted = np.zeros_like(mask)
    shifted[2:, 2:] = mask[:-2, :-2]
    shadow = shifted & ~mask
    canvas[shadow] *= 1.0 - strength


def _paint(rng: np.random.Generator, canvas: np.ndarray, mask: np.ndarray, colour: np.ndarray, texture: float) -> None:
    count = int(mask.sum())
    canvas[mask] = colour[None, :] + rng.normal(0, texture, (count, 1)) + rng.normal(0, texture / 3, (count, 3))


def _visible(placed: list[_Instance], min_area: int) -> list[_Instance]:
    """Each instance's mask minus everything drawn above it; drop those left too small."""
    covered = np.zeros_like(placed[0].mask) if placed else None
    visible: list[_Instance] = []
    for instance in reversed(placed):
        assert covered is not None
        mask = instance.mask & ~covered
        covered |= instance.mask
        if int(mask.sum()) >= min_area:
            category = "building" if instance.category == "large_building" else instance.category
            visible.append(_Instance(category, mask))
    visible.reverse()
    return visible
