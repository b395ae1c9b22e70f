"""Label Studio, both ways: a task list with the model's predictions out, its JSON and COCO exports in.

Out: Label Studio imports a JSON list of tasks; each task's ``data`` names the image (the URL the
Label Studio frontend loads) and carries taudis's own ids; its ``predictions`` hold the model's
instances ("Label Studio JSON format" with a ``predictions`` key). Each predicted instance is ONE
region, with its score:

- ``brush`` (default): a ``brushlabels`` result whose ``value.rle`` is the mask in Label Studio's
  own RLE (``taudis.labeling.labelstudio_rle``); parts and holes are kept exactly.
- ``polygons``: a ``polygonlabels`` result per outer contour, ids ``taudis-<instance>-<part>`` so
  that the parts of one instance come back as one instance. Label Studio's polygons cannot have
  holes: holes are filled. Points are in percent of the image size (0-100).

In: :func:`read_labelstudio_json` reads the project's JSON export (a list of tasks, each with its
``annotations``); :func:`read_labelstudio_coco` its COCO export (the zip's ``result.json``, or the
JSON alone), which renumbers images 0..N-1 and categories 0-based in alphabetical order: only
file names and category names survive it. Both return :class:`~taudis.labeling.toollabels.ToolLabels`.
The JSON export's regions are read from BrushLabels (Label Studio's RLE), BitmaskLabels (a PNG of
the whole image, the region where it is not transparent) and PolygonLabels; any other result that
outlines a region is refused, so that no drawn instance is passed over.
"""

from __future__ import annotations

import base64
import binascii
import html
import io
import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any, TypeGuard
from urllib.parse import parse_qs, quote, unquote, urlsplit

import contourpy
import numpy as np
from PIL import Image

from taudis.data.labels import LabelProblem
from taudis.data.masks import decode_rle, encode_rle
from taudis.labeling.labelstudio_rle import BrushRLEError, decode_brush_rle, encode_brush_rle
from taudis.labeling.predictions import Prediction
from taudis.labeling.toollabels import Problems, ToolAnnotation, ToolImage, ToolLabels

FROM_NAME = "label"  # the labels control's name in label_config()
TO_NAME = "image"  # the Image object's name, and the task data key holding the image URL
REGIONS = ("brush", "polygons")
RESULT_TYPES = {"brush": "brushlabels", "polygons": "polygonlabels"}
GROUP_ID = re.compile(r"^taudis-(\d+)-\d+$")  # polygon parts of one exported instance
LOCAL_FILES_PATH = "/data/local-files"  # Label Studio serves it with and without a slash before ?d=
STORAGE_DATA_PATH = "/storage-data/uploaded"
UPLOAD_PATH = re.compile(r"(?:^|/)upload/\d+/[0-9a-f]{8}-(?P<name>[^/]+)$")
DOWNLOAD_CACHE_PATH = re.compile(r"(?:^|/)images/[0-9a-f]{8}__(?P<name>[^/]+)$")
UPLOAD_NAME = re.compile(r"[0-9a-f]{8}-(?P<name>.+)")  # an upload's stored name: 8 hex, "-", the file's name
UUID_NAME = re.compile(r"[0-9a-f]{8}(?:-[0-9a-f]{4}){3}-[0-9a-f]{12}(?:\.[^./]*)?")
POINT_TOLERANCE = 0.5  # percent: polygon points may stray this far past the image's edge

# ---------------------------------------------------------------------------------- export


def mask_polygons(mask: np.ndarray) -> list[np.ndarray]:
    """Outer contours of a binary mask as closed polygons in pixel coordinates.

    Each polygon is an (N, 2) array of (x, y), N >= 3, without the repeated first point, on the
    0.5 iso-line between pixel centres (pixel (r, c) covers [c, c+1) x [r, r+1)). Collinear
    points are dropped.
    """
    if not mask.any():
        return []
    padded = np.pad(mask.astype(np.float64), 1)
    generator = contourpy.contour_generator(z=padded, line_type=contourpy.LineType.Separate)
    polygons = []
    for line in generator.lines(0.5):
        points = np.asarray(line, dtype=np.float64)[:-1] - 0.5  # padding shifts by 1, pixel centres by 0.5
        x, y = points[:, 0], points[:, 1]
        signed_area = 0.5 * float(np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y))
        if signed_area <= 0:  # holes run the other way round
            continue
        points = _drop_collinear(points)
        if len(points) >= 3:
            polygons.append(points)
    return polygons


def _drop_collinear(points: np.ndarray) -> np.ndarray:
    before = np.roll(points, 1, axis=0)
    after = np.roll(points, -1, axis=0)
    cross = (points[:, 0] - before[:, 0]) * (after[:, 1] - points[:, 1]) - (points[:, 1] - before[:, 1]) * (
        after[:, 0] - points[:, 0]
    )
    return points[np.abs(cross) > 1e-9]


def _result(prediction: Prediction, result_id: str, kind: str, value: dict[str, Any], height: int, width: int):
    label_key = RESULT_TYPES[kind]
    return {
        "id": result_id,
        "from_name": FROM_NAME,
        "to_name": TO_NAME,
        "type": label_key,
        "original_width": width,
        "original_height": height,
        "image_rotation": 0,
        "value": {**value, label_key: [prediction.category_name]},
        "score": prediction.score,
    }


def prediction_results(
    prediction: Prediction, height: int, width: int, *, regions: str = "brush"
) -> list[dict[str, Any]]:
    """The Label Studio results of one predicted instance: one brush region, or its polygon parts."""
    mask = decode_rle(prediction.rle)
    prefix = f"taudis-{prediction.instance}"
    if regions == "brush":
        value: dict[str, Any] = {"format": "rle", "rle": encode_brush_rle(mask)}
        return [_result(prediction, prefix, "brush", value, height, width)]
    results = []
    for part, polygon in enumerate(mask_polygons(mask)):
        percent = np.stack([polygon[:, 0] / width * 100.0, polygon[:, 1] / height * 100.0], axis=1)
        value = {"points": np.round(percent, 4).tolist(), "closed": True}
        results.append(_result(prediction, f"{prefix}-{part}", "polygons", value, height, width))
    return results


def image_url(image_uri: str, file_name: str, url_prefix: str | None) -> str:
    """What a task's ``data.image`` holds: the image's URI, or ``url_prefix`` + its file name.

    Without a prefix the task names the image's storage URI, which Label Studio opens when the
    project has a source storage of that bucket (``gs://``) or the URI is an http(s) URL. With
    one, e.g. ``/data/local-files/?d=pool/images/`` (a local-files storage under
    ``LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT``) or ``https://host/images/``, the file name is
    appended URL-quoted.
    """
    if url_prefix is None:
        return image_uri
    return url_prefix + quote(file_name, safe="/")


def build_tasks(
    images: Sequence[Mapping[str, Any]],
    urls: Mapping[int, str],
    predictions: Mapping[int, Sequence[Prediction]],
    selection_items: Mapping[int, Mapping[str, Any]],
    *,
    model_version: str = "",
    regions: str = "brush",
) -> list[dict[str, Any]]:
    """The task list, one task per image in selection order.

    Layout of a task::

        {"data": {"image": <image URL>, "image_id" (the pool's), "file_name" (the pool's), "rank", "reason"},
         "predictions": [{"model_version", "score" (mean instance score, 0 without instances),
                          "result": [one brush result per instance, or its polygons]}]}

    Raises:
        ValueError: an unknown ``regions``.
    """
    if regions not in REGIONS:
        raise ValueError(f"regions must be one of {REGIONS}, not {regions!r}")
    tasks = []
    for image in images:
        image_id = int(image["id"])
        height, width = int(image["height"]), int(image["width"])
        instances = list(predictions.get(image_id, ()))
        results = [r for p in instances for r in prediction_results(p, height, width, regions=regions)]
        item = selection_items.get(image_id, {})
        tasks.append(
            {
                "data": {
                    TO_NAME: urls[image_id],
                    "image_id": image_id,
                    "file_name": image["file_name"],
                    "rank": item.get("rank"),
                    "reason": item.get("reason"),
                },
                "predictions": [
                    {
                        "model_version": model_version,
                        "score": float(np.mean([p.score for p in instances])) if instances else 0.0,
                        "result": results,
                    }
                ],
            }
        )
    return tasks


def label_config(category_names: Sequence[str], *, regions: str = "brush") -> str:
    """The labelling configuration (XML) whose names and region type match the tasks' results."""
    if regions not in REGIONS:
        raise ValueError(f"regions must be one of {REGIONS}, not {regions!r}")
    labels = "\n".join(f'    <Label value="{html.escape(name, quote=True)}"/>' for name in category_names)
    control = (
        f'  <BrushLabels name="{FROM_NAME}" toName="{TO_NAME}">\n{labels}\n  </BrushLabels>\n'
        if regions == "brush"
        else f'  <PolygonLabels name="{FROM_NAME}" toName="{TO_NAME}" strokeWidth="2" pointSize="small">\n'
        f"{labels}\n  </PolygonLabels>\n"
    )
    return f'<View>\n  <Image name="{TO_NAME}" value="${TO_NAME}" zoom="true"/>\n{control}</View>\n'


# ----------------------------------------------------------------------------- references


def normalise_ref(ref: str) -> str:
    """A Label Studio image reference as a path to match against the pool's file names.

    - URL-decoded (``%20`` is a space);
    - ``/data/local-files/?d=PATH`` (with or without a host, with or without the slash before
      ``?``) gives ``PATH``;
    - an uploaded file, ``/data/upload/<project>/<8 hex>-NAME`` (also ``upload/...``,
      ``media/upload/...`` and ``/storage-data/uploaded/?filepath=upload/...``), gives ``NAME``;
    - a file that Label Studio's COCO export downloaded, ``images/<8 hex>__NAME``, gives ``NAME``,
      and an upload it downloaded (through ``/storage-data/uploaded``: every snapshot export, and
      any server whose media live in a bucket), ``images/<8 hex>__<8 hex>-NAME``, gives
      ``<8 hex>-NAME``, which ingest also tries as the upload ``NAME`` (see :func:`_parse_ref`);
    - a path written on Windows (``..\\media\\upload\\1\\...``) reads as the same path with slashes;
    - ``gs://``, ``s3://`` and other http(s) URLs, and plain paths, are kept whole.
    """
    return _parse_ref(ref)[0]


def _parse_ref(ref: str) -> tuple[str, bool, str | None]:
    """(:func:`normalise_ref` of ``ref``, whether it names a file uploaded to Label Studio, and the
    upload's stored name where the reference may be one without saying so).

    A file the COCO export fetched, ``images/<8 hex>__NAME``, is an upload when NAME begins with an
    upload's 8 hex digits and "-", or a bucket's or disk's file whose name merely begins so (a
    date, ``20230115-0001.png``): its name is kept whole, and the upload it may be comes third,
    for ingest to try both (taudis.campaign.ingest.match_image).
    """
    text = ref.strip()
    if "\\" in text and "://" not in text:  # Label Studio's COCO export written on Windows (os.path.relpath)
        text = text.replace("\\", "/")
    parts = urlsplit(text)
    query = parse_qs(parts.query)
    if parts.path.rstrip("/").endswith(LOCAL_FILES_PATH) and query.get("d"):
        return query["d"][0], False, None
    if parts.path.rstrip("/").endswith(STORAGE_DATA_PATH) and query.get("filepath"):
        text = query["filepath"][0]
        parts = urlsplit(text)
    path = unquote(parts.path)
    if parts.scheme in ("", "http", "https"):
        for pattern in (UPLOAD_PATH, DOWNLOAD_CACHE_PATH):
            found = pattern.search(path)
            if found and pattern is DOWNLOAD_CACHE_PATH:
                upload = UPLOAD_NAME.fullmatch(found["name"])
                maybe = upload["name"] if upload and not UUID_NAME.fullmatch(found["name"]) else None
                return found["name"], False, maybe
            if found:
                return found["name"], True, None
    return unquote(text), False, None


def upload_file_name(name: str) -> str:
    """The name Label Studio stores an uploaded file under, after its 8-hex prefix.

    Django's ``get_valid_filename`` rewrites it: spaces become underscores, and every character
    but letters, digits (any script's), ``-``, ``_`` and ``.`` is dropped, so ``tile 3 (copy).png``
    comes back as ``tile_3_copy.png``.
    """
    return re.sub(r"[^-\w.]", "", name.strip().replace(" ", "_"))


# -------------------------------------------------------------------------------- JSON in


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _finished_annotation(task: Mapping[str, Any], record: str, problems: Problems) -> Mapping[str, Any] | None:
    """The task's one submitted annotation (None: not labelled yet, or a problem was reported).

    Cancelled (skipped) annotations do not count; drafts live under the task's ``drafts`` and
    are never read. Several submitted annotations count only if exactly one is ground truth.
    """
    annotations = task.get("annotations", [])
    if not isinstance(annotations, list):
        problems.add(record, "annotations", "expected a list")
        return None
    finished = [a for a in annotations if isinstance(a, dict) and not a.get("was_cancelled")]
    if len(finished) > 1:
        truth = [a for a in finished if a.get("ground_truth")]
        if len(truth) != 1:
            ids = [a.get("id") for a in finished]
            marked = f", {len(truth)} of them {[a.get('id') for a in truth]} ground truth" if truth else ""
            message = f"{len(finished)} submitted annotations {ids}{marked}: mark exactly one as ground truth"
            problems.add(record, "annotations", message)
            return None
        finished = truth
    if finished and not isinstance(finished[0].get("result"), list):
        problems.add(f"{record}, annotation {finished[0].get('id')}", "result", "expected a list")
        return None
    return finished[0] if finished else None


def _image_key(
    data: Mapping[str, Any], results: Sequence[Any], file_names: Sequence[str] = ()
) -> tuple[str | None, str, str]:
    """The data key of the image the annotation's regions were drawn on: (key, "", ""), or (None, field, why).

    Each result names its Image tag (``to_name``), but which data key that tag reads (``$img``
    reads ``data["img"]``) is in the label config, not in the export. So, in order: the key named
    like the regions' tag (an annotation without regions: like the tag the file's other regions
    name, ``file_names``); the one value of the data that may be an image; for regions whose tag
    names no key, the one value in a form Label Studio serves itself (a source web page or a CDN
    thumbnail beside an upload); in a file without any region, ``image`` (Label Studio's default
    ``<Image value="$image">``, and taudis's own tasks), then that one value, then the one value
    that names an image file. Anything else would be a guess that may put regions on another
    image, so it is refused, and so are regions drawn on several of a task's images and tasks of
    several images (``<Image valueList>``): one image per task.
    """
    names = list(
        dict.fromkeys(r["to_name"] for r in results if isinstance(r, dict) and isinstance(r.get("to_name"), str))
    )
    told = [n for n in (names or dict.fromkeys(file_names)) if isinstance(n, str) and n in data]
    pages = [r.get("item_index") for r in results if isinstance(r, dict) and r.get("item_index") not in (None, 0)]
    if pages or any(isinstance(data[n], list) for n in told):
        field = "item_index" if pages else f"data.{told[0]}"
        return None, field, "a task of several images (<Image valueList>): taudis labels one image per task"
    if len(told) > 1:
        return None, "to_name", f"regions drawn on several of the task's images ({told}): label one image per task"
    if told and isinstance(data[told[0]], str):
        return told[0], "", ""
    candidates = _image_candidates(data, ())
    own = [k for k in candidates if _in_label_studio(str(data[k]))]
    # With regions whose tag names no key, only the one value Label Studio serves itself is safe
    # (a CDN thumbnail or a signed URL may be either); without any region in the file, its
    # default $image, then the one value that names an image file.
    guesses = [own] if names else [[TO_NAME] if TO_NAME in candidates else [], own, _image_files(data, candidates)]
    for chosen in ([candidates] if len(candidates) == 1 else []) + guesses:
        if len(chosen) == 1:
            return chosen[0], "", ""
    if not candidates:
        return None, f"data.{TO_NAME}", f"no image URL in the task's data (its keys: {sorted(map(str, data))})"
    said = f"its regions' to_name {names[0]!r} is none of them" if names else "no region says which"
    return (
        None,
        "to_name",
        f"several keys of the task's data name an image ({candidates}) and {said}: which one the regions "
        "belong to is in the label config, not in the export; give the Image tag the name of the data key "
        'it reads (<Image name="img" value="$img"/>), or keep one image per task',
    )


# Keys that taudis's own tasks carry beside the image (build_tasks): the pool's file name names no
# image that Label Studio shows.
TASK_METADATA = ("image_id", "file_name", "rank", "reason")


def _image_candidates(data: Mapping[str, Any], names: Sequence[Any]) -> list[str]:
    """The data keys that may hold the task's image: a value that looks like one, or a key a result names."""
    metadata = TASK_METADATA if "image_id" in data else ()
    return [
        str(key)
        for key, value in data.items()
        if isinstance(value, str) and key not in metadata and (key in names or _looks_like_image(value))
    ]


def _in_label_studio(value: str) -> bool:
    """A reference in one of the forms Label Studio serves itself: an upload, local files, or an
    object of a connected storage."""
    text = value.strip()
    return text.startswith("/data/") or text.split("://", 1)[0].lower() in ("s3", "gs", "gcs", "azure-blob")


def _image_files(data: Mapping[str, Any], keys: Sequence[str]) -> list[str]:
    """The keys whose value names an image file (an image suffix or Label Studio's own forms), not merely a URL."""
    found = []
    for key in keys:
        text = str(data[key]).strip()
        parts = urlsplit(text)
        named = unquote(parts.path).lower().endswith(IMAGE_SUFFIXES) or unquote(parts.query).lower().endswith(
            IMAGE_SUFFIXES
        )
        if named or _in_label_studio(text):
            found.append(key)
    return found


IMAGE_SUFFIXES = (
    ".png", ".jpg", ".jpeg", ".jfif", ".tif", ".tiff", ".bmp", ".webp", ".gif", ".jp2", ".heic", ".heif", ".avif",
)  # fmt: skip


def _looks_like_image(value: str) -> bool:
    path = urlsplit(value.strip()).path.lower()
    return "://" in value or value.startswith("/data/") or path.endswith(IMAGE_SUFFIXES)


MASK_TYPES = ("brushlabels", "polygonlabels", "bitmasklabels")
UNMASKED_REGION_TYPES = {"rectanglelabels", "ellipselabels", "keypointlabels", "rectangle", "ellipse", "keypoint"}
UNLABELLED_REGION_TYPES = {"brush", "polygon", "bitmask"}  # a Brush, Polygon or Bitmask tag without labels
# What in a result's value outlines a region on the image. A result of another type that carries
# one is a region taudis does not read (a newer tool, a <Labels> tag beside a shape tag): refused,
# not passed over, unless a region read under the same id holds it (per-region attributes).
REGION_KEYS = ("rle", "points", "imageDataURL", "x", "vertices")
PNG_DATA_URL = re.compile(r"^data:image/png;base64,(?P<data>.+)$", re.DOTALL)


def _image_size(results: Sequence[Any], record: str, problems: Problems) -> tuple[int, int] | None:
    sizes = set()
    for index, result in enumerate(results):
        if not isinstance(result, dict) or result.get("type") not in MASK_TYPES:
            continue
        height, width = result.get("original_height"), result.get("original_width")
        if not (_is_int(height) and _is_int(width) and height > 0 and width > 0):
            where = f"{record}, result {result.get('id')!r} (index {index})"
            problems.add(where, "original_height", f"expected positive integer sizes, got {height!r} x {width!r}")
            continue
        sizes.add((int(height), int(width)))
    if len(sizes) > 1:
        problems.add(record, "original_height", f"results disagree on the image size: {sorted(sizes)}")
        return None
    return next(iter(sizes)) if sizes else None


def _label(value: Mapping[str, Any], key: str, where: str, problems: Problems) -> str | None:
    labels = value.get(key)
    if not (isinstance(labels, list) and len(labels) == 1 and isinstance(labels[0], str) and labels[0]):
        problems.add(where, f"value.{key}", f"expected exactly one label name, got {labels!r}")
        return None
    return str(labels[0])


def _brush_segmentation(value: Mapping[str, Any], height: int, width: int, where: str, problems: Problems):
    if value.get("format", "rle") != "rle":
        problems.add(where, "value.format", f"unknown brush format {value.get('format')!r} (expected 'rle')")
        return None
    try:
        mask = decode_brush_rle(value.get("rle"), height, width)  # type: ignore[arg-type]
    except BrushRLEError as err:
        problems.add(where, "value.rle", f"malformed brush RLE: {err}")
        return None
    if not mask.any():
        problems.add(where, "value.rle", "the brush mask is empty")
        return None
    return encode_rle(mask)


def _bitmask_segmentation(value: Mapping[str, Any], height: int, width: int, where: str, problems: Problems):
    """A BitmaskLabels region: a PNG data URL over the whole image, the region where alpha > 0.

    Label Studio 1.23's frontend draws a region on a canvas of the image's natural size and exports
    it black where drawn, transparent elsewhere (``getImageSnapshotCanvas`` in its bundle).
    """
    import taudis.model.images  # noqa: F401  PIL's size limit is the model reader's: a bitmask as big as its image

    url = value.get("imageDataURL")
    match = PNG_DATA_URL.match(url) if isinstance(url, str) else None
    if match is None:
        got = f"{url[:40]!r}..." if isinstance(url, str) else repr(url)
        problems.add(where, "value.imageDataURL", f"expected a data:image/png;base64 URL, got {got}")
        return None
    try:
        encoded = re.sub(r"\s+", "", match["data"])  # base64 may be wrapped across lines
        with Image.open(io.BytesIO(base64.b64decode(encoded, validate=True))) as png:
            png.load()
            size, has_alpha = png.size, "A" in png.getbands() or "transparency" in png.info
            alpha = np.asarray(png.convert("RGBA"))[:, :, 3] > 0 if has_alpha else None
    except (binascii.Error, OSError, ValueError, Image.DecompressionBombError) as err:
        problems.add(where, "value.imageDataURL", f"not a readable PNG: {type(err).__name__}: {err}")
        return None
    if size != (width, height):
        problems.add(where, "value.imageDataURL", f"the bitmask is {size[0]}x{size[1]}, the image {width}x{height}")
        return None
    if alpha is None:
        problems.add(where, "value.imageDataURL", "the bitmask has no alpha channel: its region cannot be told")
        return None
    if not alpha.any():
        problems.add(where, "value.imageDataURL", "the bitmask is empty")
        return None
    return encode_rle(alpha)


def _polygon(value: Mapping[str, Any], height: int, width: int, where: str, problems: Problems):
    points = value.get("points")
    ok = isinstance(points, list) and all(
        isinstance(p, list)
        and len(p) == 2
        and all(isinstance(v, int | float) and not isinstance(v, bool) and np.isfinite(v) for v in p)
        for p in points
    )
    if not ok:
        problems.add(where, "value.points", "expected a list of [x, y] numbers (percent of the image size)")
        return None
    if len(points) < 3:  # type: ignore[arg-type]
        problems.add(where, "value.points", f"a polygon needs at least 3 points, got {len(points)}")  # type: ignore[arg-type]
        return None
    array = np.asarray(points, dtype=np.float64)
    if array.min() < -POINT_TOLERANCE or array.max() > 100 + POINT_TOLERANCE:
        problems.add(where, "value.points", f"points outside 0..100 percent: {array.min():g}..{array.max():g}")
        return None
    if value.get("closed") is False:
        problems.add(where, "value.closed", "an open polygon outlines no area")
        return None
    # Onto the edge: the tolerance is in percent, and 0.5% of a large image is many pixels more
    # than the ingest's pixel tolerance (taudis.data.labels.EDGE_TOLERANCE).
    array = np.clip(array, 0.0, 100.0)
    return (array * [width / 100.0, height / 100.0]).ravel().tolist()


def _task_annotations(
    results: Sequence[Any], size: tuple[int, int] | None, image: int, record: str, problems: Problems
) -> list[ToolAnnotation]:
    """One ToolAnnotation per brush or bitmask region, per polygon, or per exported polygon group, in
    result order."""
    found: dict[str, tuple[str, str, list[Any]]] = {}  # group key -> (record, category, segmentation parts)
    read_ids = {str(r.get("id")) for r in results if isinstance(r, dict) and r.get("type") in MASK_TYPES}
    for index, result in enumerate(results):
        where = f"{record}, result {result.get('id') if isinstance(result, dict) else None!r} (index {index})"
        if not isinstance(result, dict):
            problems.add(where, "result", "not an object")
            continue
        kind = result.get("type")
        if not isinstance(kind, str) or not isinstance(result.get("to_name", ""), str):
            field = "type" if not isinstance(kind, str) else "to_name"
            problems.add(where, field, f"expected a string, got {result.get(field)!r}")
            continue
        if kind in UNMASKED_REGION_TYPES:
            problems.add(where, "type", _unmasked(kind, results))
            continue
        if kind in UNLABELLED_REGION_TYPES:
            problems.add(
                where, "type", f"a {kind} region has no category: use BrushLabels, BitmaskLabels or PolygonLabels"
            )
            continue
        value = result.get("value")
        if kind not in MASK_TYPES:
            region = [k for k in REGION_KEYS if isinstance(value, dict) and k in value]
            if region and str(result.get("id")) not in read_ids:
                problems.add(
                    where,
                    "type",
                    f"a {kind!r} result outlines a region (value.{region[0]}) that taudis does not read: draw "
                    "instances with BrushLabels, BitmaskLabels or PolygonLabels",
                )
            continue  # image-level answers (choices, text), relations, per-region attributes: no instance
        if size is None:
            continue
        if result.get("image_rotation", 0) not in (0, None):
            problems.add(where, "image_rotation", "regions drawn on a rotated image are not supported")
            continue
        if not isinstance(value, dict):
            problems.add(where, "value", "expected an object")
            continue
        category = _label(value, str(kind), where, problems)
        if kind in ("brushlabels", "bitmasklabels"):
            decode = _brush_segmentation if kind == "brushlabels" else _bitmask_segmentation
            mask = decode(value, *size, where, problems)
            if category is not None and mask is not None:
                found[f"result {index}"] = (where, category, [mask])
            continue
        polygon = _polygon(value, *size, where, problems)
        group = GROUP_ID.match(str(result.get("id", "")))
        key = f"group {group.group(1)}" if group else f"result {index}"
        if category is None or polygon is None:
            continue
        if key in found and found[key][1] != category:
            message = (
                f"{category!r} differs from its instance's {found[key][1]!r}: taudis exported regions "
                f"taudis-{group.group(1) if group else '?'}-* as the parts of one predicted instance; to label "
                "a part apart, delete it and draw it again (a region of its own id)"
            )
            problems.add(where, f"value.{kind}", message)
            continue
        found.setdefault(key, (where, category, []))[2].append(polygon)
    return [
        ToolAnnotation(image, where, category, parts[0] if isinstance(parts[0], dict) else parts, None, 0)
        for where, category, parts in found.values()
    ]


def _unmasked(kind: str, results: Sequence[Any]) -> str:
    """Why a region without a mask is refused, with the likely cause where the annotation also has masks."""
    message = f"a {kind} region has no mask: draw instances with the brush or polygons"
    if any(isinstance(r, dict) and r.get("type") in MASK_TYPES for r in results):
        message += (
            "; beside the annotation's masks it is likely a smart tool's prompt (SAM's key point or box, kept when "
            "auto-accept is off): delete it in Label Studio and submit again"
        )
    return message


def _listed(value: Any) -> list[Any]:
    """A list field of an export, or no items where it is something else (a problem reported elsewhere)."""
    return value if isinstance(value, list) else []


def _region_tags(tasks: Sequence[Any]) -> list[str]:
    """The Image tags (``to_name``) the regions of a file's tasks name, in order of first use."""
    names = (
        r.get("to_name")
        for t in tasks
        if isinstance(t, dict)
        for a in _listed(t.get("annotations"))
        if isinstance(a, dict)
        for r in _listed(a.get("result"))
        if isinstance(r, dict)
    )
    return list(dict.fromkeys(n for n in names if isinstance(n, str)))


def read_labelstudio_json(doc: Any, uri: str) -> ToolLabels:
    """Read Label Studio's JSON export (a list of tasks with their annotations).

    A task yields an image only when it has a submitted annotation (see ``_finished_annotation``);
    an annotation with no region is an image labelled with no instance. Every brush region is one
    instance; every polygon is one, except the parts of an instance this module exported
    (ids ``taudis-<instance>-<part>``), which stay one instance. Rectangles, ellipses and key
    points are problems (no mask), and so are brush or polygon regions without a label; choices,
    text answers and relations are ignored (they describe no instance).
    """
    problems = Problems(uri)
    if not isinstance(doc, list):
        problems.add("document", "", "expected a list of tasks (Label Studio JSON export)")
        return ToolLabels(uri, "labelstudio-json", (), (), tuple(problems.items))
    images: list[ToolImage] = []
    annotations: list[ToolAnnotation] = []
    file_names = _region_tags(doc)
    for index, task in enumerate(doc):
        has_id = isinstance(task, dict) and _is_int(task.get("id"))
        record = f"task {task['id']}" if has_id else f"task index {index}"
        if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
            problems.add(record, "data", "a task must be an object with a data object")
            continue
        annotation = _finished_annotation(task, record, problems)
        if annotation is None:
            continue
        results = annotation["result"]
        where = f"{record}, annotation {annotation.get('id')}"
        key, field, why = _image_key(task["data"], results, file_names)
        pool_id = task["data"].get("image_id")
        count = len(problems.items)
        if key is None:
            problems.add(where if field == "to_name" else record, field, why)
        if pool_id is not None and not _is_int(pool_id):
            problems.add(record, "data.image_id", f"expected an integer pool image id, got {pool_id!r}")
        size = _image_size(results, where, problems)
        if len(problems.items) > count:
            continue
        height, width = size if size is not None else (None, None)
        tool_id = task["id"] if _is_int(task.get("id")) else None
        name, uploaded, upload = _parse_ref(str(task["data"].get(key or "")))
        renamed = upload_file_name if uploaded or upload else None
        pool_id = pool_id if key == TO_NAME else None  # taudis's tasks carry the pool id of data.image only
        images.append(ToolImage(index, record, name, tool_id, pool_id, False, height, width, renamed, upload))
        annotations += _task_annotations(results, size, len(images) - 1, where, problems)
    if doc and not images and not problems.items:
        problems.add("document", "annotations", _none_submitted(doc))
    return ToolLabels(uri, "labelstudio-json", tuple(images), tuple(annotations), tuple(problems.items))


def _none_submitted(tasks: Sequence[Mapping[str, Any]]) -> str:
    """Why a file of tasks gives no image: none has a submitted annotation, and what they have instead."""
    skipped = sum(
        any(isinstance(a, dict) and a.get("was_cancelled") for a in t.get("annotations") or []) for t in tasks
    )
    drafts = sum(bool(t.get("drafts")) and not t.get("annotations") for t in tasks)
    said = [f"{skipped} skipped" if skipped else "", f"{drafts} with drafts only" if drafts else ""]
    told = f" ({', '.join(x for x in said if x)})" if skipped or drafts else ""
    return (
        f"none of the file's {len(tasks)} tasks has a submitted annotation{told}: nothing to ingest until "
        "annotators submit them in Label Studio (a draft or a skip labels nothing)"
    )


# -------------------------------------------------------------------------------- COCO in

LABEL_STUDIO_CONTRIBUTOR = "Label Studio"

LOST_BRUSH = (
    "Label Studio's COCO export leaves brush regions (and bitmask regions) out, and images it cannot open "
    "whose regions were all brush strokes, so nothing here tells an image labelled empty from one whose "
    "masks were lost; export the project as JSON instead (taudis labelstudio pull does)"
)


def is_labelstudio_coco(doc: Any) -> bool:
    """Whether a COCO document was written by Label Studio's COCO export (its ``info`` says so)."""
    info = doc.get("info") if isinstance(doc, dict) else None
    return isinstance(info, dict) and info.get("contributor") == LABEL_STUDIO_CONTRIBUTOR


def read_labelstudio_coco(doc: Any, uri: str) -> ToolLabels:
    """Read Label Studio's COCO export: images and categories renumbered, so neither id is the pool's.

    File names are normalised with :func:`normalise_ref`. Label Studio writes polygons one
    annotation each (the parts of one instance come apart) and leaves brush and bitmask regions
    out without a word: an image whose only regions were brush strokes comes out with no
    instance, or not at all when Label Studio could not open it (a cloud URL). So an image without instances here
    cannot be told from one whose masks were lost, and each is refused, as is a file of no image;
    the JSON export keeps both (taudis labelstudio pull reads it).
    """
    from taudis.labeling.coco import read_coco_document

    labels = read_coco_document(
        doc, uri, fmt="labelstudio-coco", ids_are_pool_ids=False, ref=normalise_ref, sizes_optional=True
    )
    records = doc.get("images") if labels.images else None  # read and valid when it gave images
    refs = {
        r["id"]: _parse_ref(str(r.get("file_name")))
        for r in records or ()
        if isinstance(r, dict) and _is_int(r.get("id"))
    }
    images = tuple(
        replace(im, renamed=upload_file_name, upload=refs[im.tool_id][2])
        if im.tool_id in refs and (refs[im.tool_id][1] or refs[im.tool_id][2])
        else im
        for im in labels.images
    )
    labels = replace(labels, images=images)
    repeated = _repeated_images(labels.images, uri)
    masked = {annotation.image for annotation in labels.annotations}
    lost = [
        LabelProblem(uri, image.record, "annotations", f"no instance: {LOST_BRUSH}")
        for position, image in enumerate(labels.images)
        if position not in masked
    ]
    if not labels.images and not labels.problems:
        lost.append(LabelProblem(uri, "document", "images", f"no image: {LOST_BRUSH}"))
    lost += repeated
    return replace(labels, problems=(*labels.problems, *lost)) if lost else labels


def _repeated_images(images: Sequence[ToolImage], uri: str) -> list[LabelProblem]:
    """A problem per image entry whose file another entry names: the COCO export's sign of two annotations of a task."""
    first: dict[str, ToolImage] = {}
    problems = []
    for image in images:
        if image.ref in first:
            message = (
                f"the file is also {first[image.ref].record}: Label Studio's COCO export writes one image entry per "
                "annotation, so a task has two submitted annotations (several annotators); export the project as "
                "JSON and mark one annotation of the task as ground truth"
            )
            problems.append(LabelProblem(uri, image.record, "file_name", message))
        first.setdefault(image.ref, image)
    return problems
