"""`taudis data`: make the built-in synthetic dataset, or check a COCO instance-segmentation dataset.

taudis data synth --out DIR [--images N] [--seed S] [knobs...]
taudis data check --annotations FILE [--images DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Sequence
from typing import Any

from taudis.data.coco import (
    CocoFormatError,
    annotation_warnings,
    inspect_image_files,
    load_coco,
    unlabelled_categories,
)
from taudis.data.synth import SynthConfig, make_synthetic_dataset

_DEFAULTS = SynthConfig()


def summarize(data: dict[str, Any]) -> dict[str, Any]:
    """Counts of a COCO dict: images, annotations, annotations per class, images without annotations."""
    names = {c["id"]: c["name"] for c in data["categories"]}
    per_class = Counter(names[a["category_id"]] for a in data.get("annotations", []))
    annotated = {a["image_id"] for a in data.get("annotations", [])}
    return {
        "images": len(data["images"]),
        "annotations": len(data.get("annotations", [])),
        "categories": len(names),
        "annotations_per_class": {name: per_class.get(name, 0) for name in names.values()},
        "images_without_annotations": sum(1 for img in data["images"] if img["id"] not in annotated),
    }


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="taudis data", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="action", required=True)

    synth = commands.add_parser(
        "synth",
        help="write the built-in synthetic dataset",
        description="Write overhead-style synthetic tiles with COCO RLE labels: DIR/images/<id>.png, "
        "DIR/annotations/{train,pool,val}.json (train = initial labelled set, pool = unlabelled pool with "
        "its oracle labels, val = held out, equal numbers per stratum), DIR/dataset.json (knobs, counts). "
        "Byte-identical for equal knobs.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    synth.add_argument("--out", required=True, help="output directory")
    synth.add_argument("--images", type=int, default=_DEFAULTS.num_images, help="tiles in total")
    synth.add_argument("--seed", type=int, default=_DEFAULTS.seed, help="master seed")
    synth.add_argument("--image-size", type=int, default=_DEFAULTS.image_size, help="tile side in pixels")
    synth.add_argument(
        "--initial-labeled", type=int, default=_DEFAULTS.initial_labeled, help="tiles in the initial labelled set"
    )
    synth.add_argument("--val-fraction", type=float, default=_DEFAULTS.val_fraction, help="share held out for val")
    synth.add_argument(
        "--hard-fraction",
        type=float,
        default=_DEFAULTS.hard_fraction,
        help="share of hard tiles (low contrast, dense, rare large), split equally",
    )
    synth.add_argument(
        "--rare-rate", type=float, default=_DEFAULTS.rare_rate, help="chance of the rare class (pool) in other tiles"
    )
    synth.add_argument(
        "--max-objects", type=int, default=_DEFAULTS.max_objects, help="max objects in an easy tile (dense: 2-3x)"
    )
    synth.add_argument(
        "--occlusion", type=float, default=_DEFAULTS.occlusion, help="chance that a canopy covers an object"
    )
    synth.add_argument("--clutter", type=float, default=_DEFAULTS.clutter, help="mean unlabelled distractors per tile")
    synth.add_argument("--noise", type=float, default=_DEFAULTS.noise, help="pixel noise std in easy tiles")
    synth.add_argument("--min-area", type=int, default=_DEFAULTS.min_area, help="min visible pixels of an instance")

    check = commands.add_parser(
        "check",
        help="validate a COCO instance-segmentation dataset",
        description="Validate a COCO file (keys, ids, references, boxes, RLE/polygon masks) and, with --images, "
        "that every image file exists, decodes and has the size the COCO file says. Exit status 1 on problems.",
    )
    check.add_argument("--annotations", required=True, help="COCO JSON (path or gs://)")
    check.add_argument("--images", default=None, help="image root that file_name entries are relative to")
    check.add_argument(
        "--config",
        default=None,
        help="also measure the data against this model config (taudis.model.fit: objects too small for its "
        "input, images fuller than its detection limits), with the overrides that fix it",
    )
    check.add_argument("--train-opts", default="", help="config overrides the campaign will train with")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    if args.action == "synth":
        manifest = make_synthetic_dataset(
            args.out,
            num_images=args.images,
            seed=args.seed,
            image_size=args.image_size,
            initial_labeled=args.initial_labeled,
            val_fraction=args.val_fraction,
            hard_fraction=args.hard_fraction,
            rare_rate=args.rare_rate,
            max_objects=args.max_objects,
            occlusion=args.occlusion,
            clutter=args.clutter,
            noise=args.noise,
            min_area=args.min_area,
        )
        print(json.dumps(manifest["counts"], indent=1))
        return 0
    try:
        data = load_coco(args.annotations)
    except CocoFormatError as err:
        print(f"taudis data check: {err}", file=sys.stderr)
        return 1
    files = inspect_image_files(data, args.images) if args.images else None
    problems = files.problems if files else []
    for problem in problems:
        print(f"taudis data check: {problem}", file=sys.stderr)
    summary = summarize(data)
    summary["warnings"] = unlabelled_categories(data) + annotation_warnings(data) + (files.warnings if files else [])
    for warning in summary["warnings"]:
        print(f"taudis data check: warning: {warning}", file=sys.stderr)
    if args.config:
        try:
            summary["fit"] = _fit(data, args.config, args.train_opts)
        except Exception as err:  # a missing file, an unknown key or a bad value of the config or its overrides
            print(f"taudis data check: --config {args.config} --train-opts {args.train_opts!r}: {err}", file=sys.stderr)
            return 2
        for warning in summary["fit"]["problems"] if summary["fit"] else ():
            print(f"taudis data check: warning: {warning}", file=sys.stderr)
    print(json.dumps(summary, indent=1))
    return 1 if problems else 0


def _fit(data: dict[str, Any], config: str, train_opts: str) -> dict[str, Any] | None:
    """The data against a model config (taudis.model.fit); a warning, never an error: the data is valid."""
    from taudis.model.fit import for_config_file

    fit = for_config_file(data, config, train_opts)
    return fit.as_dict() if fit is not None else None
