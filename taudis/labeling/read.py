"""read_labels: one entry point for every labelling tool's export, the format told from the content.

=====================  ======================================================================
format                 what the file is
=====================  ======================================================================
``labelstudio-json``   a JSON list of tasks: Label Studio's JSON export (``taudis labelstudio pull``),
                       or one task
``labelstudio-coco``   Label Studio's COCO export: the zip (``result.json`` at its root or in one
                       folder) or the JSON, ``info.contributor`` "Label Studio"
``cvat-coco``          CVAT's COCO 1.0 export: a zip with ``annotations/instances_<subset>.json``,
                       or that JSON alone (datumaro's empty ``info`` and licence)
``cvat-xml``           CVAT's "CVAT for images 1.1" export: ``annotations.xml``, bare or zipped
                       (at the zip's root or in one folder of it)
``coco``               any other COCO instance JSON; its image ids are taken to be the pool's
=====================  ======================================================================

Refused with one problem each, since they lose what ingest needs: Label Studio's JSON_MIN export
(no task data), its CSV and TSV exports, and its BRUSH_TO_COCO export (it turns a brush region
into one polygon per part, without holes, and leaves out images labelled empty); and taudis's own
pre-annotations (``build_preannotations``, bare or in ``build_cvat_archive``'s zip: the model's
predictions, not labels), told by their ``info.description``. A zip of none of the exports above
gives one problem that names what it looks like (CVAT's Segmentation mask 1.1, a YOLO export,
Label Studio's PNG masks) and what to export instead, and so does a JSON file of LabelMe or the
VGG Image Annotator. What comes back is described in ``taudis.labeling.toollabels``.
"""

from __future__ import annotations

import io
import json
import os
import re
import zipfile
import zlib
from typing import Any

from taudis import storage
from taudis.labeling.coco import is_preannotations, read_coco, refuse_preannotations
from taudis.labeling.cvat import ANNOTATIONS_MEMBER, is_cvat_coco, read_cvat_archive, read_cvat_coco
from taudis.labeling.cvat_xml import is_cvat_xml, read_cvat_xml
from taudis.labeling.labelstudio import is_labelstudio_coco, read_labelstudio_coco, read_labelstudio_json
from taudis.labeling.toollabels import ToolLabels, unreadable

ZIP_MAGIC = b"PK\x03\x04"
# Label Studio's COCO zips: at the root, or in one folder (a browser unpacked the download, and
# the folder was zipped again)
LABEL_STUDIO_COCO_MEMBER = re.compile(r"^(?:[^/]+/)?result\.json$")
LABEL_STUDIO_BRUSH_COCO_MEMBER = re.compile(r"^(?:[^/]+/)?result_coco\.json$")
LABEL_STUDIO_CONVERTER = "Label Studio Converter"  # info.contributor of its BRUSH_TO_COCO export
# CVAT for images / for video 1.1, zipped: at the root, or in a folder (an unpacked export zipped again)
CVAT_XML_MEMBER = re.compile(r"^(?:.*/)?annotations\.xml$")
# Label Studio's BRUSH_TO_PNG export: task-<task>-annotation-<annotation>-by-<user>-<from_name>-<labels>-<n>.png
LABEL_STUDIO_PNG_MEMBER = re.compile(r"^(?:.*/)?task-\d+-annotation-\d+-by-.+-\d+\.png$", re.IGNORECASE)
USE_JSON = "export the project as JSON instead (taudis labelstudio pull does)"


def read_labels(uri: str | os.PathLike[str]) -> ToolLabels:
    """Read a labelling tool's export (local path or ``gs://`` URI), whichever tool wrote it.

    Returns:
        The file's images, instances and every format-level problem (see
        ``taudis.labeling.toollabels`` for the contract). A file that cannot be parsed gives one
        problem (format ``coco`` when nothing tells the format).

    Raises:
        taudis.storage.StorageError: the file cannot be read at all (missing, no access).
    """
    return read_label_bytes(storage.read_bytes(str(uri)), str(uri))


# What a file that cannot be decoded raises on the way: a damaged or truncated zip (BadZipFile,
# zlib.error, EOFError), one of a compression zipfile lacks (NotImplementedError: Deflate64), JSON
# nested past the parser's depth (RecursionError); an encrypted zip raises a RuntimeError that
# says so. Any other error is taudis's, and must not quarantine a good file: it propagates.
UNDECODABLE = (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RecursionError, RuntimeError)


def read_label_bytes(data: bytes, uri: str) -> ToolLabels:
    """:func:`read_labels` of bytes already read from ``uri`` (ingest reads each file once).

    A file that cannot be decoded at all gives one problem naming why, so that ingest quarantines
    it rather than failing on it at every run.
    """
    try:
        return _read_bytes(data, uri)
    except UNDECODABLE as err:
        if isinstance(err, RecursionError):
            what = "nested too deeply to parse"
        elif type(err) is RuntimeError and ("encrypted" in str(err) or "password" in str(err)):
            what = f"an encrypted zip ({err}): export it without a password"
        elif type(err) is RuntimeError:
            raise
        else:
            what = f"{type(err).__name__}: {err}"
        return unreadable(uri, "coco", f"cannot be decoded: {what}")


def _read_bytes(data: bytes, uri: str) -> ToolLabels:
    if data.startswith(ZIP_MAGIC):
        return _read_zip(data, uri)
    if is_cvat_xml(data):
        return read_cvat_xml(data, uri)
    try:
        doc = json.loads(data.decode("utf-8-sig"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        if _is_labelstudio_table(data):
            return unreadable(uri, "labelstudio-json", f"Label Studio's CSV (or TSV) export is not read: {USE_JSON}")
        return unreadable(uri, "coco", f"neither JSON nor a zip archive: {err}")
    return read_document(doc, uri)


def read_document(doc: Any, uri: str) -> ToolLabels:
    """Read an already parsed JSON export (the dispatch of ``read_labels`` for JSON files)."""
    if is_preannotations(doc):
        return refuse_preannotations(uri, "coco")
    if _is_labelstudio_task(doc):
        doc = [doc]  # one task (its "source" in the labelling screen, or the API's GET /api/tasks/<id>)
    if isinstance(doc, list):
        if doc and all(isinstance(t, dict) and "data" not in t and "annotation_id" in t for t in doc):
            return unreadable(uri, "labelstudio-json", f"Label Studio's JSON_MIN export has no task data: {USE_JSON}")
        return read_labelstudio_json(doc, uri)
    if is_labelstudio_coco(doc):
        return read_labelstudio_coco(doc, uri)
    info = doc.get("info") if isinstance(doc, dict) else None
    if isinstance(info, dict) and info.get("contributor") == LABEL_STUDIO_CONVERTER:
        return _brush_to_coco(uri)
    if is_cvat_coco(doc):
        return read_cvat_coco(doc, uri)
    other = _other_tool(doc)
    if other is not None:
        return unreadable(uri, "coco", f"{other}, not an export taudis reads: convert it to COCO instances first")
    return read_coco(doc, uri)


def _is_labelstudio_task(doc: Any) -> bool:
    """Whether a JSON object is one Label Studio task: its data and annotations, no COCO images."""
    return isinstance(doc, dict) and isinstance(doc.get("data"), dict) and "annotations" in doc and "images" not in doc


# Columns of every row of Label Studio's CSV and TSV exports, whatever the labelling config.
LABEL_STUDIO_TABLE_COLUMNS = {"annotation_id", "annotator", "id", "created_at", "updated_at", "lead_time"}


def _is_labelstudio_table(data: bytes) -> bool:
    """Whether the bytes are Label Studio's CSV or TSV export: its header names its own columns."""
    header = data[:4096].decode("utf-8-sig", "replace").splitlines()[:1]
    columns = {c.strip().strip('"') for c in re.split(r"[,\t]", header[0])} if header else set()
    return columns >= LABEL_STUDIO_TABLE_COLUMNS


def _other_tool(doc: Any) -> str | None:
    """What a JSON document that is no COCO file looks like, when another tool's format tells (else None)."""
    if not isinstance(doc, dict) or "images" in doc:
        return None
    if "shapes" in doc and "imagePath" in doc:
        return "a LabelMe file (one image's shapes)"
    metadata = doc.get("_via_img_metadata", doc)  # a VIA 2 project file, or its bare export
    images = metadata.values() if isinstance(metadata, dict) else ()
    if images and all(isinstance(v, dict) and "filename" in v and "regions" in v for v in images):
        return "a VGG Image Annotator (VIA) export"
    return None


def _brush_to_coco(uri: str) -> ToolLabels:
    return unreadable(
        uri,
        "labelstudio-coco",
        "Label Studio's BRUSH_TO_COCO export splits a brush region into one polygon per part, fills its holes "
        f"and leaves out images labelled empty: {USE_JSON}",
    )


def _read_zip(data: bytes, uri: str) -> ToolLabels:
    try:
        names = set(zipfile.ZipFile(io.BytesIO(data)).namelist())
    except zipfile.BadZipFile as err:
        return unreadable(uri, "coco", f"not a readable zip archive: {err}")
    if any("\\" in name for name in names):
        data = _with_slashes(data)
        names = set(zipfile.ZipFile(io.BytesIO(data)).namelist())
    names = {name for name in names if not name.startswith(MAC_METADATA)}
    results = sorted(name for name in names if LABEL_STUDIO_COCO_MEMBER.match(name))
    if len(results) > 1:
        return unreadable(uri, "labelstudio-coco", f"several Label Studio exports {results}: one export a zip")
    if results:
        try:
            doc = json.loads(zipfile.ZipFile(io.BytesIO(data)).read(results[0]))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            return unreadable(uri, "labelstudio-coco", f"{results[0]}: not valid JSON: {err}")
        return read_labelstudio_coco(doc, uri)
    if any(LABEL_STUDIO_BRUSH_COCO_MEMBER.match(name) for name in names):
        return _brush_to_coco(uri)
    xml_members = sorted(name for name in names if CVAT_XML_MEMBER.match(name))
    if len(xml_members) > 1:
        return unreadable(uri, "cvat-xml", f"several CVAT XML files {xml_members}: put each export in its own zip")
    if xml_members:
        return read_cvat_xml(zipfile.ZipFile(io.BytesIO(data)).read(xml_members[0]), uri)
    if not any(ANNOTATIONS_MEMBER.match(name) for name in names):
        return unreadable(uri, "coco", _unread_archive(names))
    return read_cvat_archive(data, uri)


MAC_METADATA = "__MACOSX/"  # what macOS's Finder adds to a zip it makes: resource forks, never an export


def _with_slashes(data: bytes) -> bytes:
    """The zip with ``/`` for ``\\`` in its member names: Windows PowerShell 5.1's Compress-Archive
    writes backslashes, which every zip reader but Windows's takes as part of a file's name."""
    source, out = zipfile.ZipFile(io.BytesIO(data)), io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as target:
        for info in source.infolist():
            target.writestr(info.filename.replace("\\", "/"), source.read(info))
    return out.getvalue()


# Archives of exports that hold masks but not as taudis reads them, told by their members.
UNREAD_ARCHIVES = (
    (("SegmentationObject/", "SegmentationClass/"), "CVAT's 'Segmentation mask 1.1' export (Pascal VOC masks)"),
    (("labels/", "obj_train_data/"), "a YOLO export"),
)


def _unread_archive(names: set[str]) -> str:
    """Why a zip holds no export taudis reads, naming what it looks like and what to export instead."""
    instead = (
        "export JSON from Label Studio (taudis labelstudio pull does), or 'COCO 1.0' or 'CVAT for images 1.1' from CVAT"
    )
    for prefixes, what in UNREAD_ARCHIVES:
        if any(name.startswith(prefixes) for name in names):
            return f"{what} is not read: {instead}"
    if any(LABEL_STUDIO_PNG_MEMBER.match(name) for name in names):
        return f"Label Studio's PNG export (one mask image per region, no image names) is not read: {instead}"
    listed = ", ".join(sorted(names)[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return (
        f"a zip with no export taudis reads (no result.json, annotations.xml or annotations/instances_*.json; "
        f"it holds {listed or 'nothing'}): {instead}"
    )
