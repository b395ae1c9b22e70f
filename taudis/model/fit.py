"""Does the labelled data fit the model's config: its objects' size at the input, their number per image?

A config reads images at one input size (``INPUT.MIN_SIZE_TEST`` on the short side, at most
``INPUT.MAX_SIZE_TEST`` on the long one) and keeps at most ``TEST.DETECTIONS_PER_IMAGE``
detections from ``MODEL.RPN.POST_NMS_TOPK_TEST`` proposals. Data it was not made for breaks
these silently:

- The CPU config reads 128 px: a folder of 1,024 px scenes is shrunk 8x, and a 30 px building
  becomes 4 px, one cell of the finest (stride 4) features. The model learns little; nothing
  fails.
- An image of 300 nuclei, read by the CPU config (room for 64 objects: 100 detections from 128
  proposals, two each), loses four fifths of its instances to the cap: their uncertainty never
  reaches the selection, and recall stops there.

So training measures the data against the config and, where it does not fit, warns with the
config overrides that would (for ``train_opts``). What the size rule is worth (bench/fit.py, the
synthetic data, 50 images, 500 iterations, one seed): read at a quarter of their size (median
object 3.4 px) they trained a model of 2.5 mask AP, at the input the warning names (160 px)
29.8; files shrunk to 32 px themselves 2.7, read upsampled at the warning's 160 px 30.5. Anchors
of 2 px at the small input gave 0.5: below 8 px a smaller anchor does not help, so the rule is
the objects' size alone and the remedy a larger input.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from taudis.model.images import output_size

# The least a median object must span at the input: two cells of the finest FPN level (stride 4).
MIN_OBJECT_PIXELS = 8.0
# The suggested input brings the median object to this many times MIN_OBJECT_PIXELS (measured:
# 16.9 px, 29.8 mask AP; 13.5 px at the CPU config's own input, 29.3).
TARGET_MULTIPLE = 2.0
# Input sides a suggestion is rounded up to (the FPN's coarsest stride).
SIZE_STEP = 32
# Proposals per kept detection: the box head's NMS discards some, so the proposals need room
# (detectron2's own defaults keep 1,000 proposals for 100 detections).
PROPOSALS_PER_DETECTION = 2
# Headroom over the most objects an image holds when suggesting new limits, and their rounding.
DETECTION_HEADROOM = 1.5
LIMIT_STEP = 50


@dataclass(frozen=True)
class Limits:
    """What a config allows: input sizes, proposals and detections per image."""

    short_edge: int  # INPUT.MIN_SIZE_TEST
    max_size: int  # INPUT.MAX_SIZE_TEST
    train_edges: tuple[int, ...]  # INPUT.MIN_SIZE_TRAIN (a list for multi-scale training)
    train_max_size: int  # INPUT.MAX_SIZE_TRAIN
    detections: int  # TEST.DETECTIONS_PER_IMAGE
    proposals: int  # MODEL.RPN.POST_NMS_TOPK_TEST
    pre_nms: int  # MODEL.RPN.PRE_NMS_TOPK_TEST
    train_proposals: int  # MODEL.RPN.POST_NMS_TOPK_TRAIN
    train_pre_nms: int  # MODEL.RPN.PRE_NMS_TOPK_TRAIN

    @classmethod
    def of(cls, cfg: Any) -> Limits:
        """A detectron2 config's limits."""
        edges = cfg.INPUT.MIN_SIZE_TRAIN
        return cls(
            short_edge=int(cfg.INPUT.MIN_SIZE_TEST),
            max_size=int(cfg.INPUT.MAX_SIZE_TEST),
            train_edges=tuple(int(e) for e in (edges if isinstance(edges, (list, tuple)) else [edges])),
            train_max_size=int(cfg.INPUT.MAX_SIZE_TRAIN),
            detections=int(cfg.TEST.DETECTIONS_PER_IMAGE),
            proposals=int(cfg.MODEL.RPN.POST_NMS_TOPK_TEST),
            pre_nms=int(cfg.MODEL.RPN.PRE_NMS_TOPK_TEST),
            train_proposals=int(cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN),
            train_pre_nms=int(cfg.MODEL.RPN.PRE_NMS_TOPK_TRAIN),
        )

    @property
    def room(self) -> int:
        """The most objects an image can have predicted: the detections, and two proposals each."""
        return min(self.detections, self.proposals // PROPOSALS_PER_DETECTION)


@dataclass(frozen=True)
class DataFit:
    """A COCO dataset measured against a config's limits (object sides are sqrt(box width x height), px)."""

    objects: int
    median_image_short_side: float  # before resizing
    median_resize: float  # the model's input size / the image's size, median over images
    median_side: float  # median object side after resizing (boxes of no area left out)
    most_objects_per_image: int
    images_over_the_cap: int  # images holding more objects than ``room``
    room: int  # the most objects an image can have predicted (Limits.room)
    detections_per_image: int
    proposals_per_image: int
    size_opts: str  # overrides that keep the objects visible; "" when they are
    count_opts: str  # overrides that keep every object of the fullest image; "" when they do

    @property
    def suggested_opts(self) -> str:
        return " ".join(opts for opts in (self.size_opts, self.count_opts) if opts)

    def problems(self) -> list[str]:
        """What does not fit, each in words a user can act on (empty when everything fits)."""
        found = []
        if self.size_opts:
            found.append(
                f"the median object is {self.median_side:.1f} px across once images are resized for the model "
                f"(x{self.median_resize:.2f}: images of {self.median_image_short_side:.0f} px on the short side), "
                f"below the {MIN_OBJECT_PIXELS:g} px (two cells of the finest features) it needs, so the model "
                f"will find and outline most objects poorly; try the config overrides {self.size_opts!r} (an "
                "input larger than the images upsamples them; training time grows with the input's area)"
            )
        if self.count_opts:
            found.append(
                f"{self.images_over_the_cap} image(s) hold more objects (up to {self.most_objects_per_image}) than "
                f"the model has room for: {self.room}, of {self.detections_per_image} detections from "
                f"{self.proposals_per_image} proposals per image (two proposals each), so the rest are never "
                f"predicted, scored or counted; try the config overrides {self.count_opts!r}"
            )
        return found

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"suggested_opts": self.suggested_opts, "problems": self.problems()}


def measure(data: Mapping[str, Any], limits: Limits) -> DataFit | None:
    """COCO ``data`` against ``limits``; None without any object to measure.

    Crowd regions, records without a box and boxes of an unknown image are not objects; a box of
    no area (a point-like label) counts towards its image's objects but has no size.
    """
    sizes = {img["id"]: (int(img["height"]), int(img["width"])) for img in data["images"]}
    resize = {
        i: output_size(h, w, limits.short_edge, limits.max_size)[0] / h
        for i, (h, w) in sizes.items()
        if h > 0 and w > 0
    }
    objects = [
        a
        for a in data.get("annotations", [])
        if not a.get("iscrowd") and a.get("image_id") in resize and len(a.get("bbox") or ()) == 4
    ]
    if not objects:
        return None
    sides = [math.sqrt(max(0.0, float(a["bbox"][2]) * float(a["bbox"][3]))) * resize[a["image_id"]] for a in objects]
    sides = [side for side in sides if side > 0]
    per_image = Counter(a["image_id"] for a in objects).values()
    median_side = statistics.median(sides) if sides else None
    return DataFit(
        objects=len(objects),
        median_image_short_side=round(statistics.median(min(hw) for hw in sizes.values()), 1),
        median_resize=round(statistics.median(resize.values()), 4),
        median_side=round(median_side, 2) if median_side is not None else 0.0,
        most_objects_per_image=max(per_image),
        images_over_the_cap=sum(1 for n in per_image if n > limits.room),
        room=limits.room,
        detections_per_image=limits.detections,
        proposals_per_image=limits.proposals,
        size_opts=_size_opts(median_side, limits) if median_side is not None else "",
        count_opts=_count_opts(max(per_image), limits),
    )


def for_config(data: Mapping[str, Any], cfg: Any) -> DataFit | None:
    """:func:`measure` against a detectron2 config."""
    return measure(data, Limits.of(cfg))


def for_config_file(data: Mapping[str, Any], config: str, train_opts: str = "") -> DataFit | None:
    """:func:`measure` against a config file (taudis.model.config) with a run's ``train_opts`` string."""
    import shlex

    from taudis.model.config import load_config

    return for_config(data, load_config(config, shlex.split(train_opts)))


def _size_opts(median_side: float, limits: Limits) -> str:
    """Overrides that bring the median object to TARGET_MULTIPLE x MIN_OBJECT_PIXELS, or "" if it spans
    MIN_OBJECT_PIXELS already.

    The remedy is a larger input, past the images' own size where need be: detectron2 upsamples
    an image smaller than its input (the GPU config reads 128 px tiles at 800 px), which gives a
    small object more feature cells. Every size grows by the same factor, so a multi-scale
    training list stays a list.
    """
    if median_side >= MIN_OBJECT_PIXELS:
        return ""
    factor = _step_up(limits.short_edge * TARGET_MULTIPLE * MIN_OBJECT_PIXELS / median_side) / limits.short_edge
    edges = ",".join(str(_step_up(e * factor)) for e in limits.train_edges)
    return (
        f"INPUT.MIN_SIZE_TRAIN ({edges},) INPUT.MIN_SIZE_TEST {_step_up(limits.short_edge * factor)} "
        f"INPUT.MAX_SIZE_TRAIN {_step_up(limits.train_max_size * factor)} "
        f"INPUT.MAX_SIZE_TEST {_step_up(limits.max_size * factor)}"
    )


def _count_opts(most: int, limits: Limits) -> str:
    """Overrides that keep every object of the fullest image, with headroom; "" if the limits do already.

    The proposals before NMS, and those of training (where each object needs proposals to learn
    from), grow with them, never below what the config has.
    """
    if most <= limits.room:
        return ""
    detections = max(limits.detections, _step_up(most * DETECTION_HEADROOM, LIMIT_STEP))
    proposals = max(limits.proposals, PROPOSALS_PER_DETECTION * detections)
    return (
        f"TEST.DETECTIONS_PER_IMAGE {detections} MODEL.RPN.POST_NMS_TOPK_TEST {proposals} "
        f"MODEL.RPN.PRE_NMS_TOPK_TEST {max(limits.pre_nms, proposals)} "
        f"MODEL.RPN.POST_NMS_TOPK_TRAIN {max(limits.train_proposals, proposals)} "
        f"MODEL.RPN.PRE_NMS_TOPK_TRAIN {max(limits.train_pre_nms, proposals)}"
    )


def _step_up(value: float, step: int = SIZE_STEP) -> int:
    return int(math.ceil(value / step) * step)
