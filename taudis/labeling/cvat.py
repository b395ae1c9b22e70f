"""CVAT both ways: a COCO 1.0 archive it imports, and the COCO 1.0 export it writes back."""

from __future__ import annotations

import io
import json
import posixpath
import re
import zipfile
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from taudis.labeling.coco import is_preannotations, read_coco_document, refuse_preannotations
from taudis.labeling.toollabels import ToolLabels, merge_labels, unreadable

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


# ------------------------------------------------------------------------------------ reading

# datumaro (through which CVAT writes COCO) leaves these empty: they tell its files from others.
DATUMARO_INFO = {"contributor": "", "date_created": "", "description": "", "url": "", "version": "", "year": ""}
DATUMARO_LICENSES = [{"name": "", "id": 0, "url": ""}]
ANNOTATIONS_MEMBER = re.compile(r"^(?:.*/)?annotations/instances_(?P<subset>[^/]+)\.json$")


def is_cvat_coco(doc: Any) -> bool:
    """Whether a COCO document was written by CVAT (through datumaro): its empty info and licence."""
    return isinstance(doc, dict) and doc.get("info") == DATUMARO_INFO and doc.get("licenses") == DATUMARO_LICENSES


def annotation_members(archive: zipfile.ZipFile) -> list[str]:
    """The archive's ``annotations/instances_<subset>.json`` members, ``default`` first."""
    names = [name for name in archive.namelist() if ANNOTATIONS_MEMBER.match(name)]
    return sorted(names, key=lambda name: (ANNOTATIONS_MEMBER.match(name).group("subset") != "default", name))  # type: ignore[union-attr]


def read_cvat_coco(doc: Any, uri: str, *, member: str = "") -> ToolLabels:
    """Read one COCO document of CVAT's COCO 1.0 export (the archive's member or the bare JSON).

    CVAT numbers images and categories itself, so neither id is the pool's. It writes every mask
    as an uncompressed RLE with ``iscrowd`` 1 (datumaro's "guess" mode: a mask without an
    ``is_crowd`` attribute is written as a crowd RLE), whatever the annotator meant, so a CVAT
    RLE comes back as an ordinary instance (``iscrowd`` 0); polygons keep their ``iscrowd``.
    """
    labels = read_coco_document(
        doc, uri, fmt="cvat-coco", ids_are_pool_ids=False, record_prefix=f"{member}: " if member else ""
    )
    annotations = tuple(
        replace(ann, iscrowd=0) if isinstance(ann.segmentation, dict) else ann for ann in labels.annotations
    )
    return replace(labels, annotations=annotations)


def read_cvat_archive(data: bytes, uri: str) -> ToolLabels:
    """Read CVAT's COCO 1.0 export archive: every ``annotations/instances_<subset>.json`` in it."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        members = annotation_members(archive)
    except zipfile.BadZipFile as err:
        return unreadable(uri, "cvat-coco", f"not a readable zip archive: {err}")
    if not members:
        return unreadable(uri, "cvat-coco", f"no {ANNOTATIONS_PATH} (or other annotations/instances_*.json) inside")
    parts = []
    for member in members:
        try:
            doc = json.loads(archive.read(member))
        except (json.JSONDecodeError, UnicodeDecodeError, zipfile.BadZipFile) as err:
            parts.append(unreadable(uri, "cvat-coco", f"{member}: not valid JSON: {err}"))
            continue
        if is_preannotations(doc):  # build_cvat_archive's own archive, not CVAT's export
            parts.append(refuse_preannotations(uri, "cvat-coco", member))
            continue
        parts.append(read_cvat_coco(doc, uri, member=member if len(members) > 1 else ""))
    return merge_labels(uri, "cvat-coco", parts)
