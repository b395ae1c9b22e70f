"""``taudis export``: write labelling tasks (COCO, Label Studio, CVAT, manifest) for chosen images."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from taudis import storage
from taudis.data.instances import InstanceTableError
from taudis.labeling.labelstudio import REGIONS
from taudis.labeling.predictions import ExportError
from taudis.labeling.tasks import export_for_labeling, summary


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the arguments, export, and print what was written."""
    parser = argparse.ArgumentParser(prog="taudis export", description=__doc__)
    parser.add_argument("--selection", required=True, help="selection JSON (taudis.selection)")
    parser.add_argument("--instances", required=True, help="instance shards folder (gs:// or local)")
    parser.add_argument("--pool-annotations", required=True, help="the pool's COCO JSON (images, categories)")
    parser.add_argument("--image-root", required=True, help="images are at <image-root>/<file_name>")
    parser.add_argument("--out", required=True, help="output folder (gs:// or local)")
    parser.add_argument("--no-images", action="store_true", help="leave the images out of the CVAT archive")
    parser.add_argument("--threshold", type=float, default=0.5, help="mask probability threshold")
    parser.add_argument(
        "--labelstudio-url-prefix",
        help="Label Studio tasks name their images <prefix><file name>, e.g. /data/local-files/?d=pool/images/ "
        "(default: the image's URI, e.g. gs://..., for a project with a source storage of that bucket)",
    )
    parser.add_argument(
        "--labelstudio-regions",
        choices=REGIONS,
        default="brush",
        help="one brush region per instance (holes kept; default) or its outline polygons (holes filled)",
    )
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        written = export_for_labeling(
            args.selection,
            args.instances,
            args.pool_annotations,
            args.image_root,
            args.out,
            include_images=not args.no_images,
            threshold=args.threshold,
            labelstudio_url_prefix=args.labelstudio_url_prefix,
            labelstudio_regions=args.labelstudio_regions,
        )
    except (ExportError, InstanceTableError, storage.StorageError) as err:
        print(f"taudis export: {err}", file=sys.stderr)
        return 1
    print(summary(written))
    return 0
