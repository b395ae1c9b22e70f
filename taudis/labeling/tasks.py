"""export_for_labeling: everything annotators need for one round's chosen images."""

from __future__ import annotations

import io
import json
import os
import tempfile
from collections.abc import Mapping
from typing import Any

import numpy as np

from taudis import storage
from taudis.data.instances import HEADER, list_shards
from taudis.data.masks import MASK_THRESHOLD
from taudis.labeling.coco import build_preannotations
from taudis.labeling.cvat import build_cvat_archive
from taudis.labeling.labelstudio import REGIONS, build_tasks, image_url, label_config
from taudis.labeling.manifest import build_manifest
from taudis.labeling.predictions import ExportError, read_predictions

SELECTION_SCHEMA = "taudis.selection"
SELECTION_VERSION = 1

PREANNOTATIONS = "preannotations.json"
LABELSTUDIO_TASKS = "labelstudio/tasks.json"
LABELSTUDIO_CONFIG = "labelstudio/label_config.xml"
CVAT_ARCHIVE = "cvat/coco_1.0.zip"
MANIFEST = "manifest.jsonl"


def read_selection(uri: str) -> dict[str, Any]:
    """Read and check a selection file (schema ``taudis.selection`` version 1).

    Raises:
        ExportError: naming the file, the record and the field.
    """
    doc = storage.read_json(uri)
    if not isinstance(doc, dict) or doc.get("schema") != SELECTION_SCHEMA:
        raise ExportError(f"{uri}: field 'schema': not a {SELECTION_SCHEMA} document")
    if doc.get("version") != SELECTION_VERSION:
        raise ExportError(f"{uri}: field 'version': unknown version {doc.get('version')!r}")
    if not isinstance(doc.get("images"), list):
        raise ExportError(f"{uri}: field 'images': missing or not a list")
    seen: set[int] = set()
    for index, item in enumerate(doc["images"]):
        image_id = item.get("image_id") if isinstance(item, dict) else None
        if not isinstance(image_id, int) or isinstance(image_id, bool):
            raise ExportError(f"{uri}: images[{index}], field 'image_id': expected an integer, got {image_id!r}")
        if image_id in seen:
            raise ExportError(f"{uri}: images[{index}], field 'image_id': image {image_id} chosen twice")
        seen.add(image_id)
    return doc


def _pool_images(pool: Mapping[str, Any], ids: list[int], selection_uri: str, pool_uri: str) -> list[dict[str, Any]]:
    by_id = {int(im["id"]): im for im in pool.get("images", [])}
    images = []
    for index, image_id in enumerate(ids):
        if image_id not in by_id:
            raise ExportError(
                f"{selection_uri}: images[{index}], field 'image_id': image {image_id} is not in {pool_uri}"
            )
        image = by_id[image_id]
        images.append(
            {
                "id": image_id,
                "file_name": image["file_name"],
                "height": int(image["height"]),
                "width": int(image["width"]),
            }
        )
    return images


def export_for_labeling(
    selection_path: str | os.PathLike[str],
    instances_dir: str | os.PathLike[str],
    pool_annotations: str | os.PathLike[str],
    image_root_uri: str,
    out_uri: str | os.PathLike[str],
    *,
    include_images: bool = True,
    threshold: float = MASK_THRESHOLD,
    labelstudio_url_prefix: str | None = None,
    labelstudio_regions: str = "brush",
) -> dict[str, str]:
    """Write the labelling tasks of a selection's chosen images.

    Layout under ``out_uri``::

        preannotations.json           COCO instances of the predictions (RLE masks, boxes, scores)
        labelstudio/tasks.json        Label Studio task list: image URL, our ids, predictions (one region
                                      per instance, with scores); see taudis.labeling.labelstudio
        labelstudio/label_config.xml  the matching Label Studio labelling configuration
        cvat/coco_1.0.zip             CVAT "COCO 1.0" archive: annotations/instances_default.json (+ images/)
        manifest.jsonl                one line per chosen image: uri, scores, why chosen

    Args:
        selection_path: the selection JSON (``taudis.selection``, images in selection order).
        instances_dir: the instance shards of the pool (gs:// or local; downloaded if gs://).
        pool_annotations: the pool's COCO JSON (images with id, file_name, height, width;
            categories whose names match the model's class names).
        image_root_uri: images are at ``join(image_root_uri, file_name)``.
        out_uri: the folder to write into.
        include_images: put the image files into the CVAT archive (read from their URIs).
        threshold: mask probability threshold.
        labelstudio_url_prefix: how Label Studio tasks name their images. None: the image's URI
            (``gs://...`` for a project with a GCS source storage of that bucket, or an http(s)
            URL); else the prefix followed by the URL-quoted file name, e.g.
            ``/data/local-files/?d=pool/images/`` for a local-files storage (the path relative to
            Label Studio's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT) or ``https://host/images/``.
        labelstudio_regions: ``brush`` (one brush region per instance: parts and holes kept) or
            ``polygons`` (an instance's outer contours, grouped; holes filled).

    Returns:
        What was written: key -> URI (keys preannotations, labelstudio_tasks, labelstudio_config,
        cvat_archive, manifest).

    Raises:
        ExportError: inputs that disagree (unknown image, size mismatch, unknown class), named,
            or an unknown ``labelstudio_regions``.
    """
    if labelstudio_regions not in REGIONS:
        raise ExportError(f"labelstudio_regions must be one of {REGIONS}, not {labelstudio_regions!r}")
    selection_uri, pool_uri, out = str(selection_path), str(pool_annotations), str(out_uri)
    selection = read_selection(selection_uri)
    pool = storage.read_json(pool_uri)
    ids = [int(item["image_id"]) for item in selection["images"]]
    images = _pool_images(pool, ids, selection_uri, pool_uri)
    by_id = {image["id"]: image for image in images}
    categories = list(pool.get("categories", []))
    with tempfile.TemporaryDirectory(prefix="taudis-export-") as tmp:
        shards = str(instances_dir)
        if storage.is_gcs(shards):
            fetch_shards_with_images(shards, set(by_id), tmp)
            shards = tmp
        predictions = read_predictions(shards, by_id, categories, pool_source=pool_uri, threshold=threshold)
        model_version = _model_version(shards, str(instances_dir))
    uris = {image["id"]: storage.join(image_root_uri, image["file_name"]) for image in images}
    coco = build_preannotations([{**image, "coco_url": uris[image["id"]]} for image in images], categories, predictions)
    items = {int(item["image_id"]): item for item in selection["images"]}
    urls = {i: image_url(uris[i], by_id[i]["file_name"], labelstudio_url_prefix) for i in uris}
    tasks = build_tasks(images, urls, predictions, items, model_version=model_version, regions=labelstudio_regions)
    image_bytes = (
        {image["file_name"]: storage.read_bytes(uris[image["id"]]) for image in images} if include_images else None
    )
    written = {
        "preannotations": storage.join(out, PREANNOTATIONS),
        "labelstudio_tasks": storage.join(out, LABELSTUDIO_TASKS),
        "labelstudio_config": storage.join(out, LABELSTUDIO_CONFIG),
        "cvat_archive": storage.join(out, CVAT_ARCHIVE),
        "manifest": storage.join(out, MANIFEST),
    }
    storage.write_json(written["preannotations"], coco)
    storage.write_json(written["labelstudio_tasks"], tasks)
    names = [str(c["name"]) for c in categories]
    storage.write_text(written["labelstudio_config"], label_config(names, regions=labelstudio_regions))
    cvat_coco = {**coco, "images": [dict(image) for image in images]}
    storage.write_bytes(
        written["cvat_archive"], build_cvat_archive(cvat_coco, image_bytes), content_type="application/zip"
    )
    storage.write_text(written["manifest"], build_manifest(selection, by_id, uris, predictions))
    return written


def fetch_shards_with_images(instances_uri: str, image_ids: set[int], local_dir: str) -> list[str]:
    """Download only the shards (under a gs:// folder) that hold one of ``image_ids``.

    A shard's small ``image_ids.npy`` is read first; its mask and embedding columns are fetched
    only if it covers a chosen image, so an export reads a few shards, not the pool's masks.
    Layout kept: ``<instances_uri>/<shard>/...`` -> ``<local_dir>/<shard>/...`` (a single shard at
    the folder itself lands at ``<local_dir>``).

    Returns:
        The shard folders fetched.
    """
    folder = instances_uri.rstrip("/") + "/"
    shards: dict[str, list[str]] = {}
    for uri in storage.list_uris(folder):
        relative = uri[len(folder) :]
        shard, _, name = relative.rpartition("/")
        shards.setdefault(shard, []).append(name)
    fetched = []
    for shard, names in sorted(shards.items()):
        if HEADER not in names or "image_ids.npy" not in names:
            continue
        base = storage.join(folder, shard) if shard else folder.rstrip("/")
        ids = np.load(io.BytesIO(storage.read_bytes(storage.join(base, "image_ids.npy"))), allow_pickle=False)
        if not image_ids & {int(i) for i in ids}:
            continue
        for name in names:
            storage.download_file(storage.join(base, name), os.path.join(local_dir, shard, name))
        fetched.append(base)
    return fetched


def _model_version(shards_dir: str, instances_uri: str) -> str:
    """The model id the shards were inferred with (their header's model_id), else the shards' URI."""
    for path in list_shards(shards_dir):
        model_id = json.loads((path / HEADER).read_text()).get("model_id")
        if model_id:
            return str(model_id)
    return instances_uri


def summary(written: Mapping[str, str]) -> str:
    """One JSON line of what was written (for CLI output and KFP logs)."""
    return json.dumps(dict(written))
