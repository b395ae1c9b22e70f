"""A CVAT-importable COCO 1.0 archive (CVAT's "COCO 1.0" import format)."""

from __future__ import annotations

import io
import json
import posixpath
import zipfile
from collections.abc import Mapping
from typing import Any

ANNOTATIONS_PATH = "annotations/instances_default.json"
IMAGES_DIR = "images"


def build_cvat_archive(coco: Mapping[str, Any], image_bytes: Mapping[str, bytes] | None = None) -> bytes:
    """Zip a COCO instance document the way CVAT's COCO 1.0 importer reads it.

    Layout::

        annotations/instances_default.json   the COCO document (subset "default")
        images/<file_name>                   each image's bytes, when ``image_bytes`` is given

    CVAT imports the RLE segmentations as masks and takes ``attributes`` as shape attributes;
    image entries are matched to the task's images by ``file_name``.

    Args:
        coco: the COCO document (see ``taudis.labeling.coco.build_preannotations``).
        image_bytes: file_name -> bytes of the images to include (None: annotations only).
    """
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(ANNOTATIONS_PATH, json.dumps(coco))
        for file_name, data in sorted((image_bytes or {}).items()):
            # Images are already compressed: store them.
            archive.writestr(posixpath.join(IMAGES_DIR, file_name), data, compress_type=zipfile.ZIP_STORED)
    return buffer.getvalue()
