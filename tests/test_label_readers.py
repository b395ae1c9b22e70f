"""read_labels on real exports captured from the tools (tests/data/labeling), and on malformed input.

The captured files come from tests/test_labelstudio.py and tests/test_cvat_datumaro.py run with
TAUDIS_CAPTURE_FIXTURES=tests/data/labeling (Label Studio 1.23.2; datumaro 1.13.12 exporting as
CVAT does): one round of 8 tasks (synthetic instance table, seed 0) of which the annotators
accepted the predictions of 5 images (one of them with its last instance deleted), submitted one
image empty (tile 001), skipped one (tile 008) and left one alone (tile 005). ``sent-*.json``
holds what each finished image's instances must decode to.
"""

from __future__ import annotations

import base64
import copy
import io
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from campaign_fixtures import zip_bytes
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from pycocotools import mask as mask_utils

from taudis import storage
from taudis.data.labels import LabelValidationError
from taudis.data.masks import decode_rle, encode_rle
from taudis.labeling import ToolLabels, read_labels
from taudis.labeling.cvat import read_cvat_archive
from taudis.labeling.labelstudio import normalise_ref, prediction_results
from taudis.labeling.labelstudio_rle import BrushRLEError, decode_brush_rle, encode_brush_rle
from taudis.labeling.predictions import Prediction
from taudis.labeling.read import read_document, read_label_bytes

DATA = Path(__file__).parent / "data" / "labeling"
FINISHED = [0, 2, 3, 1, 4, 6]  # task order; tile 001 was submitted empty, tile 006 lost its last instance
POOL_PATH = "pool/images/"


def _sent(name: str) -> dict[int, list[tuple[str, np.ndarray]]]:
    doc = json.loads((DATA / name).read_text())
    return {int(k): [(c, decode_rle(rle)) for c, rle in v] for k, v in doc.items()}


def _masks(labels: ToolLabels, position: int) -> list[tuple[str, np.ndarray]]:
    out = []
    for ann in labels.annotations:
        if ann.image == position:
            seg: Any = ann.segmentation
            if isinstance(seg, list):
                image = labels.images[position]
                rle = mask_utils.merge(mask_utils.frPyObjects(seg, image.height, image.width))
                seg = {"size": rle["size"], "counts": rle["counts"].decode()}
            out.append((ann.category, decode_rle(seg)))
    return out


def _tile(ref: str) -> int:
    return int(ref.rsplit("tile ", 1)[1][:3])


# ------------------------------------------------------------------------------- Label Studio JSON


@pytest.mark.parametrize(
    ("name", "sent"), [("ls-brush.json", "sent-brush.json"), ("ls-polygons.json", "sent-polygons.json")]
)
def test_label_studio_json_export_gives_the_finished_images_and_their_instances(name: str, sent: str) -> None:
    labels = read_labels(str(DATA / name))
    truth = _sent(sent)
    assert labels.format == "labelstudio-json" and labels.problems == ()
    assert [image.pool_id for image in labels.images] == FINISHED  # not the skipped, not the untouched
    assert [image.ref for image in labels.images] == [f"{POOL_PATH}tiles/tile {i:03d}.png" for i in FINISHED]
    assert [image.index for image in labels.images] == [0, 2, 3, 4, 5, 6]  # positions in the file: task 1 skipped
    assert all(not image.ids_are_pool_ids and image.record == f"task {image.tool_id}" for image in labels.images)
    # The empty submission has no region, so no size: the pool knows it.
    assert [(image.height, image.width) for image in labels.images if image.pool_id == 1] == [(None, None)]
    for position, image in enumerate(labels.images):
        got = _masks(labels, position)
        assert len(got) == len(truth[image.pool_id])  # one instance per instance, parts grouped
        for (category, mask), (want_category, want) in zip(got, truth[image.pool_id], strict=True):
            assert category == want_category and np.array_equal(mask, want)
    assert all(a.bbox is None and a.iscrowd == 0 for a in labels.annotations)


def _task(task_id: int, results: list[Any], **annotation: Any) -> dict[str, Any]:
    return {
        "id": task_id,
        "data": {"image": f"/data/local-files/?d=img/{task_id}.png", "image_id": task_id},
        "annotations": [{"id": 100 + task_id, "result": results, "was_cancelled": False, **annotation}],
    }


def _brush(rid: str, mask: np.ndarray, label: str = "house", **value: Any) -> dict[str, Any]:
    height, width = mask.shape
    return {
        "id": rid, "type": "brushlabels", "from_name": "label", "to_name": "image",
        "original_height": height, "original_width": width, "image_rotation": 0,
        "value": {"format": "rle", "rle": encode_brush_rle(mask), "brushlabels": [label], **value},
    }  # fmt: skip


def _polygon(rid: str, points: list[list[float]], label: str = "house", size: int = 10) -> dict[str, Any]:
    return {
        "id": rid, "type": "polygonlabels", "original_height": size, "original_width": size,
        "value": {"points": points, "polygonlabels": [label], "closed": True},
    }  # fmt: skip


SQUARE = [[10, 10], [50, 10], [50, 50], [10, 50]]


def test_label_studio_json_rules_for_annotations() -> None:
    mask = np.zeros((10, 10), bool)
    mask[2:5, 2:5] = True
    doc = [
        {**_task(1, [_brush("a", mask)]), "drafts": [{"result": [_brush("d", mask)]}]},  # a draft is not read
        _task(2, [_brush("b", mask)], was_cancelled=True),  # skipped: no image
        {"id": 3, "data": {"image": "x.png"}, "annotations": []},  # not labelled yet: no image
        {  # several annotators: the ground truth one counts
            **_task(4, []),
            "annotations": [
                {"id": 1, "result": [_brush("e", mask, "car")], "ground_truth": False},
                {"id": 2, "result": [_brush("f", mask, "boat")], "ground_truth": True},
                {"id": 3, "result": [], "was_cancelled": True},
            ],
        },
        _task(
            5,
            [
                _polygon("taudis-0-0", SQUARE),
                _polygon("taudis-0-1", [[60, 60], [90, 60], [90, 90]]),
                _polygon("other", SQUARE),
                _polygon("taudis-1-0", SQUARE, "car"),
                {"id": "c", "type": "choices", "value": {"choices": ["sunny"]}},
            ],
        ),
    ]
    labels = read_document(doc, "mem.json")
    assert labels.problems == ()
    assert [image.tool_id for image in labels.images] == [1, 4, 5]
    assert [image.ref for image in labels.images] == ["img/1.png", "img/4.png", "img/5.png"]
    assert [(a.image, a.category) for a in labels.annotations] == [
        (0, "house"),
        (1, "boat"),
        (2, "house"),
        (2, "house"),
        (2, "car"),
    ]
    grouped = labels.annotations[2].segmentation
    assert isinstance(grouped, list) and len(grouped) == 2  # the two parts of exported instance 0
    assert grouped[0] == [1.0, 1.0, 5.0, 1.0, 5.0, 5.0, 1.0, 5.0]  # percent -> pixels
    assert np.array_equal(decode_rle(labels.annotations[0].segmentation), mask)  # type: ignore[arg-type]


def test_label_studio_json_lists_every_problem() -> None:
    mask = np.zeros((10, 10), bool)
    mask[2:5, 2:5] = True
    bad_rle = _brush("r2", mask)
    bad_rle["value"]["rle"] = bad_rle["value"]["rle"][:9]
    doc = [
        "not a task",
        {"id": 2, "annotations": []},
        {"id": 3, "data": {}, "annotations": "nope"},
        {**_task(4, []), "annotations": [{"id": 1, "result": []}, {"id": 2, "result": []}]},
        {"id": 5, "data": {"image_id": "five"}, "annotations": [{"id": 9, "result": []}]},
        _task(6, [_brush("r1", mask), _brush("r1b", np.zeros((12, 10), bool))]),
        _task(7, [
            bad_rle,
            _brush("r3", np.zeros((10, 10), bool)),
            _brush("r4", mask, format="png"),
            {**_brush("r5", mask), "value": {"format": "rle", "rle": encode_brush_rle(mask), "brushlabels": []}},
            {**_brush("r6", mask), "image_rotation": 90},
            {"id": "r7", "type": "rectanglelabels", "value": {"x": 1, "y": 1, "width": 5, "height": 5}},
            {**_brush("r8", mask), "value": 7},
            "not a result",
            {**_brush("r9", mask), "type": "brush"},
        ]),
        _task(8, [
            _polygon("p1", [[1, 1], [2, 2]]),
            _polygon("p2", [[1, 1], [200, 2], [3, 4]]),
            _polygon("p3", [[1, "a"], [2, 2], [3, 4]]),
            {**_polygon("p4", SQUARE), "value": {"points": SQUARE, "polygonlabels": ["house"], "closed": False}},
            _polygon("taudis-3-0", SQUARE), _polygon("taudis-3-1", SQUARE, "car"),
        ]),
        {**_task(9, []), "annotations": [{"id": 1, "result": {"a": 1}}]},
    ]  # fmt: skip
    doc[5]["annotations"][0]["result"][0]["original_height"] = None  # type: ignore[index]
    labels = read_document(doc, "tasks.json")
    found = [(p.record, p.field) for p in labels.problems]
    assert found == [
        ("task index 0", "data"),
        ("task 2", "data"),
        ("task 3", "annotations"),
        ("task 4", "annotations"),
        ("task 5", "data.image"),
        ("task 5", "data.image_id"),
        ("task 6, annotation 106, result 'r1' (index 0)", "original_height"),
        ("task 7, annotation 107, result 'r2' (index 0)", "value.rle"),
        ("task 7, annotation 107, result 'r3' (index 1)", "value.rle"),
        ("task 7, annotation 107, result 'r4' (index 2)", "value.format"),
        ("task 7, annotation 107, result 'r5' (index 3)", "value.brushlabels"),
        ("task 7, annotation 107, result 'r6' (index 4)", "image_rotation"),
        ("task 7, annotation 107, result 'r7' (index 5)", "type"),
        ("task 7, annotation 107, result 'r8' (index 6)", "value"),
        ("task 7, annotation 107, result None (index 7)", "result"),
        ("task 7, annotation 107, result 'r9' (index 8)", "type"),
        ("task 8, annotation 108, result 'p1' (index 0)", "value.points"),
        ("task 8, annotation 108, result 'p2' (index 1)", "value.points"),
        ("task 8, annotation 108, result 'p3' (index 2)", "value.points"),
        ("task 8, annotation 108, result 'p4' (index 3)", "value.closed"),
        ("task 8, annotation 108, result 'taudis-3-1' (index 5)", "value.polygonlabels"),
        ("task 9, annotation 1", "result"),
    ]
    assert all(p.file == "tasks.json" and p.message for p in labels.problems)
    messages = {p.record.rsplit("'", 2)[-2] if "'" in p.record else p.record: p.message for p in labels.problems}
    assert "mark exactly one as ground truth" in messages["task 4"]
    assert "decodes to" in messages["r2"] or "ends" in messages["r2"]
    assert "empty" in messages["r3"] and "has no mask" in messages["r7"]
    assert "taudis-3-* as the parts of one predicted instance" in messages["taudis-3-1"]
    with pytest.raises(LabelValidationError, match="22 problem"):
        labels.raise_for_problems()


def _bitmask(rid: str, mask: np.ndarray, label: str = "house", *, mode: str = "RGBA") -> dict[str, Any]:
    """A BitmaskLabels result as Label Studio 1.23's frontend serializes it: black pixels on a
    transparent canvas of the image's natural size, as a PNG data URL."""
    from PIL import Image

    height, width = mask.shape
    rgba = np.zeros((height, width, 4), np.uint8)
    rgba[mask, 3] = 255
    buffer = io.BytesIO()
    Image.fromarray(rgba, "RGBA").convert(mode).save(buffer, "PNG")
    url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    return {
        "id": rid, "type": "bitmasklabels", "from_name": "label", "to_name": "image",
        "original_height": height, "original_width": width, "image_rotation": 0,
        "value": {"imageDataURL": url, "bitmasklabels": [label]},
    }  # fmt: skip


def test_bitmask_regions_are_read_pixel_for_pixel() -> None:
    mask = np.zeros((12, 10), bool)
    mask[2:5, 3:9] = True
    mask[8, 1] = True  # a second part
    other = np.zeros((12, 10), bool)
    other[6:10, 4:6] = True
    wrapped = _bitmask("b", other, "car")
    url = wrapped["value"]["imageDataURL"]
    head, data = url.split(",", 1)
    wrapped["value"]["imageDataURL"] = head + "," + "\n".join(data[i : i + 76] for i in range(0, len(data), 76))
    labels = read_document([_task(1, [_bitmask("a", mask), wrapped, _brush("c", mask)])], "t.json")
    assert labels.problems == ()
    assert (labels.images[0].height, labels.images[0].width) == (12, 10)
    assert [a.category for a in labels.annotations] == ["house", "car", "house"]
    assert np.array_equal(decode_rle(labels.annotations[0].segmentation), mask)  # type: ignore[arg-type]
    assert np.array_equal(decode_rle(labels.annotations[1].segmentation), other)  # type: ignore[arg-type]


def test_bitmask_problems_and_regions_taudis_does_not_read_are_refused() -> None:
    mask = np.zeros((10, 10), bool)
    mask[2:5, 2:5] = True
    wrong_size = _bitmask("b2", np.pad(mask, 1))
    wrong_size["original_height"] = wrong_size["original_width"] = 10
    not_png = _bitmask("b3", mask)
    not_png["value"]["imageDataURL"] = "data:image/png;base64,bm90IGEgcG5n"
    doc = [
        _task(1, [
            _bitmask("b1", np.zeros((10, 10), bool)),
            wrong_size,
            not_png,
            _bitmask("b4", mask, mode="RGB"),
            {**_bitmask("b5", mask), "type": "bitmask"},
            {"id": "v1", "type": "vectorlabels", "value": {"vertices": [{"x": 1, "y": 1}], "vectorlabels": ["house"]}},
            {"id": "l1", "type": "labels", "value": {"format": "rle", "rle": [1, 2], "labels": ["house"]}},
            _brush("ok", mask),
            {"id": "ok", "type": "choices", "value": {"format": "rle", "rle": [1, 2], "choices": ["occluded"]}},
            {"id": "c1", "type": "choices", "value": {"choices": ["sunny"]}},
            {"id": ["odd"], "type": "choices", "value": {"x": 3, "choices": ["occluded"]}},
        ]),
    ]  # fmt: skip
    labels = read_document(doc, "tasks.json")
    found = [(p.record.rsplit(", ", 1)[1], p.field) for p in labels.problems]
    assert found == [
        ("result 'b1' (index 0)", "value.imageDataURL"),
        ("result 'b2' (index 1)", "value.imageDataURL"),
        ("result 'b3' (index 2)", "value.imageDataURL"),
        ("result 'b4' (index 3)", "value.imageDataURL"),
        ("result 'b5' (index 4)", "type"),
        ("result 'v1' (index 5)", "type"),
        ("result 'l1' (index 6)", "type"),
        ("result ['odd'] (index 10)", "type"),  # an id of any JSON kind, named as it is
    ], "a per-region attribute of a read region and an image-level answer are no problem"
    messages = [p.message for p in labels.problems]
    assert "empty" in messages[0] and "12x12, the image 10x10" in messages[1] and "PNG" in messages[2]
    assert "no alpha" in messages[3] and "value.vertices" in messages[5] and "'labels'" in messages[6]


def test_a_task_whose_results_disagree_on_the_size_is_refused() -> None:
    mask = np.zeros((10, 10), bool)
    mask[1, 1] = True
    labels = read_document([_task(1, [_brush("a", mask), _brush("b", np.pad(mask, 1))])], "t.json")
    assert [(p.record, p.field) for p in labels.problems] == [("task 1, annotation 101", "original_height")]
    assert labels.images == ()


def test_the_image_is_found_under_whatever_data_key_the_label_config_reads() -> None:
    polygon = _polygon("r1", [[10, 10], [30, 10], [30, 30]])
    task = _task(5, [polygon])
    task["data"] = {"img": "/data/local-files/?d=img/5.png", "caption": "north field"}  # <Image value="$img"/>
    labels = read_document([task], "t.json")
    assert labels.problems == () and [image.ref for image in labels.images] == ["img/5.png"]
    task["data"]["thumbnail"] = "gs://bucket/thumbs/5.jpg"
    (problem,) = read_document([task], "t.json").problems
    assert "several keys" in problem.message and "'img'" in problem.message and "'thumbnail'" in problem.message
    task["data"] = {"caption": "north field"}
    (problem,) = read_document([task], "t.json").problems
    assert problem.record == "task 5" and "its keys: ['caption']" in problem.message


def test_polygon_points_within_the_percent_tolerance_land_inside_even_a_large_image() -> None:
    # 0.3% past the edge of a 4000-pixel image is 12 pixels: onto the edge, not past it
    polygon = _polygon("r1", [[90, 10], [100.3, 10], [100.3, 30], [-0.2, 30]], size=4000)
    labels = read_document([_task(5, [polygon])], "t.json")
    (annotation,) = labels.annotations
    xs = annotation.segmentation[0][0::2]  # type: ignore[index]
    assert labels.problems == () and min(xs) == 0.0 and max(xs) == 4000.0


# ------------------------------------------------------------------------------ Label Studio COCO


def test_label_studio_coco_export_is_read_by_file_and_category_name() -> None:
    labels = read_labels(str(DATA / "ls-polygons-coco.zip"))
    truth = _sent("sent-polygons.json")
    assert labels.format == "labelstudio-coco"
    # the one image labelled empty: the export cannot tell it from a brush-only image (whose masks it drops)
    (problem,) = labels.problems
    empty = next(image for image in labels.images if image.record == problem.record)
    assert (
        truth[_tile(empty.ref)] == []
        and problem.field == "annotations"
        and "export the project as JSON" in problem.message
    )
    # renumbered: images 0..N-1 in its own order, so neither id is the pool's
    assert [image.tool_id for image in labels.images] == list(range(6))
    assert all(not image.ids_are_pool_ids and image.pool_id is None for image in labels.images)
    assert sorted(_tile(image.ref) for image in labels.images) == sorted(FINISHED)
    assert all(image.ref.endswith(f"{POOL_PATH}tiles/tile {_tile(image.ref):03d}.png") for image in labels.images)
    for position, image in enumerate(labels.images):
        # one annotation per polygon: the parts of an instance come apart, but cover the same pixels
        got = _masks(labels, position)
        assert sorted({c for c, _ in got}) == sorted({c for c, _ in truth[_tile(image.ref)]})
        union = np.logical_or.reduce([m for _, m in got]) if got else np.zeros((256, 256), bool)
        want = np.logical_or.reduce([m for _, m in truth[_tile(image.ref)]]) if truth[_tile(image.ref)] else union
        assert np.array_equal(union, want)
    assert len(labels.annotations) == 31 and sum(len(v) for v in truth.values()) == 29


def test_label_studio_coco_exports_that_lose_regions_are_refused() -> None:
    brush = read_labels(str(DATA / "ls-brush-coco.zip"))  # a brush project: Label Studio drops every region
    assert brush.images and {(p.field, "brush regions" in p.message) for p in brush.problems} == {("annotations", True)}
    assert sorted(p.record for p in brush.problems) == sorted(image.record for image in brush.images)
    converted = read_labels(str(DATA / "ls-brush-to-coco.zip"))  # BRUSH_TO_COCO: polygons, holes filled
    assert converted.format == "labelstudio-coco" and converted.images == ()
    assert ["BRUSH_TO_COCO" in p.message for p in converted.problems] == [True]


def _ls_coco(images: list[dict[str, Any]], annotations: list[dict[str, Any]]) -> dict[str, Any]:
    """Label Studio's COCO export as its converter writes it (info, renumbered ids, categories of the config)."""
    return {
        "images": images,
        "categories": [{"id": 0, "name": "house"}],
        "annotations": annotations,
        "info": {"year": 2026, "version": "1.0", "description": "", "contributor": "Label Studio", "url": ""},
    }


def test_label_studio_coco_images_without_instances_are_refused_whatever_their_size_says() -> None:
    polygon = {"id": 0, "image_id": 0, "category_id": 0, "segmentation": [[1, 1, 5, 1, 5, 5]], "bbox": [1, 1, 4, 4],
               "ignore": 0, "iscrowd": 0, "area": 8}  # fmt: skip
    images = [
        {"width": 10, "height": 10, "id": 0, "file_name": "gs://bucket/pool/img1.png"},
        # submitted empty, or brush strokes only: the converter could not open a cloud image, so no size
        {"width": None, "height": None, "id": 1, "file_name": "gs://bucket/pool/img4.png"},
        {"width": 10, "height": 10, "id": 2, "file_name": "images/1a2b3c4d__img2.png"},  # brush strokes only
    ]
    labels = read_document(_ls_coco(images, [polygon]), "ls.json")
    assert [(p.record, p.field) for p in labels.problems] == [
        ("image id 1 (index 1)", "annotations"),
        ("image id 2 (index 2)", "annotations"),
    ]
    assert all("export the project as JSON" in p.message for p in labels.problems)
    # a brush-only project of cloud images: the converter writes no image at all
    (problem,) = read_document(_ls_coco([], []), "ls.json").problems
    assert problem.field == "images" and "no image" in problem.message


CVAT_XML = b"""<?xml version="1.0" encoding="utf-8"?>
<annotations>
  <version>1.1</version>
  <meta><task><name>round 0</name></task></meta>
  <image id="0" name="cat/001.png" subset="default" task_id="3" width="20" height="10">
    <tag label="cloudy" source="manual"></tag>
    <polygon label="car" source="manual" occluded="0" points="1.00,1.00;5.00,1.00;5.00,5.00" z_order="0">
      <attribute name="score">0.9</attribute>
    </polygon>
    <mask label="house" source="manual" occluded="1" rle="2, 3, 17, 3" left="3" top="2" width="5" height="5"
      z_order="1">
    </mask>
  </image>
  <image id="1" name="cat/002.png" subset="default" task_id="3" width="20" height="10"></image>
</annotations>
"""


@pytest.mark.parametrize("zipped", [False, True])
def test_cvat_for_images_xml_gives_polygons_and_masks_by_name(tmp_path: Path, zipped: bool) -> None:
    path = tmp_path / ("task.zip" if zipped else "annotations.xml")
    if zipped:
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("annotations.xml", CVAT_XML)
    else:
        path.write_bytes(CVAT_XML)
    labels = read_labels(str(path))
    assert labels.format == "cvat-xml" and labels.problems == ()
    assert [(im.ref, im.tool_id, im.ids_are_pool_ids, im.height, im.width) for im in labels.images] == [
        ("cat/001.png", 0, False, 10, 20),
        ("cat/002.png", 1, False, 10, 20),  # no shape: labelled empty
    ]
    polygon, mask = labels.annotations
    assert (polygon.image, polygon.category, polygon.segmentation) == (0, "car", [[1.0, 1.0, 5.0, 1.0, 5.0, 5.0]])
    want = np.zeros((10, 20), bool)
    want[2, 5:8] = True  # runs over the 5x5 box at (3, 2), row by row: 2 background, 3 mask,
    want[6, 5:8] = True  # 17 background (rows 1 to 3 of the box, two pixels of row 4), 3 mask
    assert (mask.image, mask.category, mask.iscrowd) == (0, "house", 0)
    np.testing.assert_array_equal(decode_rle(mask.segmentation), want)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("edit", "field", "words"),
    [
        (
            (b'<tag label="cloudy" source="manual"></tag>', b'<box label="car" xtl="1" ytl="1" xbr="4" ybr="4"/>'),
            "box",
            "outlines no mask",
        ),
        ((b'rle="2, 3, 17, 3"', b'rle="2, 3, 17, 2"'), "rle", "cover the 5x5 box"),
        ((b'left="3"', b'left="17"'), "left/top/width/height", "past the 20x10 image"),
        ((b'points="1.00,1.00;5.00,1.00;5.00,5.00"', b'points="1.00,1.00;5.00"'), "points", "expected 'x,y;x,y"),
        ((b'points="1.00,1.00;5.00,1.00;5.00,5.00"', b'points="1,1;5,1"'), "segmentation[0]", "needs"),
        ((b'<polygon label="car"', b'<polygon label=""'), "label", "no label"),
    ],
)
def test_cvat_xml_problems_name_the_image_the_shape_and_the_field(
    edit: tuple[bytes, bytes], field: str, words: str
) -> None:
    labels = read_document_bytes(CVAT_XML.replace(*edit))
    (problem,) = labels.problems
    assert problem.record.startswith("image id 0 ('cat/001.png'), <") and problem.field == field
    assert words in problem.message


def test_cvat_for_video_xml_is_refused_naming_what_to_export() -> None:
    video = b"<annotations><version>1.1</version><track id='0' label='car'></track></annotations>"
    (problem,) = read_document_bytes(video).problems
    assert "CVAT for video" in problem.message and "'CVAT for images 1.1'" in problem.message
    (problem,) = read_document_bytes(b"<annotations><image id='0'").problems
    assert "not well-formed XML" in problem.message


def read_document_bytes(data: bytes) -> ToolLabels:
    from taudis.labeling.cvat_xml import read_cvat_xml

    return read_cvat_xml(data, "annotations.xml")


# ------------------------------------------------------------------------------------------- CVAT


def _check_cvat(labels: ToolLabels) -> None:
    truth = _sent("sent-cvat.json")
    assert labels.format == "cvat-coco" and labels.problems == ()
    assert sorted(_tile(image.ref) for image in labels.images) == sorted(truth)
    assert all(image.ref == f"tiles/tile {_tile(image.ref):03d}.png" for image in labels.images)
    assert all(not image.ids_are_pool_ids for image in labels.images)
    for position, image in enumerate(labels.images):
        got = sorted((c, m.tobytes()) for c, m in _masks(labels, position))
        assert got == sorted((c, m.tobytes()) for c, m in truth[_tile(image.ref)])
    assert {a.iscrowd for a in labels.annotations} == {0}  # CVAT's masks are iscrowd 1 RLE: instances


def test_cvat_export_archive_and_bare_json(tmp_path: Path) -> None:
    _check_cvat(read_labels(str(DATA / "cvat-coco.zip")))
    bare = tmp_path / "instances_default.json"
    bare.write_bytes(zipfile.ZipFile(DATA / "cvat-coco.zip").read("annotations/instances_default.json"))
    _check_cvat(read_labels(str(bare)))


def test_cvat_archive_with_two_subsets_and_a_broken_member() -> None:
    doc = json.loads(zipfile.ZipFile(DATA / "cvat-coco.zip").read("annotations/instances_default.json"))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("annotations/instances_train.json", json.dumps(doc))
        archive.writestr("annotations/instances_default.json", json.dumps(doc))
        archive.writestr("annotations/instances_val.json", "{not json")
    labels = read_cvat_archive(buffer.getvalue(), "archive.zip")
    assert len(labels.images) == 16 and len(labels.annotations) == 72
    assert labels.images[8].record.startswith("annotations/instances_train.json: ")
    assert max(a.image for a in labels.annotations) == 15  # the second subset's images are shifted
    assert [p.record for p in labels.problems] == ["document"] and "instances_val.json" in labels.problems[0].message


# ------------------------------------------------------------------------------------ plain COCO


COCO: dict[str, Any] = {
    "images": [
        {"id": 5, "file_name": "a.png", "height": 10, "width": 12},
        {"id": 6, "file_name": "b.png", "height": 10, "width": 12},
    ],
    "categories": [{"id": 1, "name": "house"}, {"id": 2, "name": "car"}],
    "annotations": [
        {"id": 1, "image_id": 5, "category_id": 2, "segmentation": [[1, 1, 6, 1, 6, 6]], "bbox": [1, 1, 5, 5]},
        {"id": 2, "image_id": 6, "category_id": 1, "iscrowd": 1,
         "segmentation": {"size": [10, 12], "counts": [30, 5, 85]}},
    ],
}  # fmt: skip


def test_plain_coco_ids_are_the_pools_and_rle_comes_back_compressed() -> None:
    labels = read_document(copy.deepcopy(COCO), "labels.json")
    assert labels.format == "coco" and labels.problems == ()
    assert [(i.tool_id, i.ref, i.ids_are_pool_ids, i.pool_id, i.height, i.width) for i in labels.images] == [
        (5, "a.png", True, None, 10, 12),
        (6, "b.png", True, None, 10, 12),
    ]
    first, second = labels.annotations
    assert (first.image, first.category, first.bbox, first.iscrowd) == (0, "car", [1.0, 1.0, 5.0, 5.0], 0)
    assert (second.image, second.category, second.bbox, second.iscrowd) == (1, "house", None, 1)
    assert isinstance(second.segmentation, dict) and isinstance(second.segmentation["counts"], str)
    assert decode_rle(second.segmentation).sum() == 5


def test_coco_lists_every_problem() -> None:
    doc = copy.deepcopy(COCO)
    doc["categories"] += [{"id": 1, "name": "tree"}, {"id": 3, "name": "car"}, {"id": 4, "name": ""}, "x"]
    doc["images"] += [
        {"id": 5, "file_name": "c.png", "height": 10, "width": 12},
        {"id": 7, "height": 0, "width": 12},
        {"id": "8", "file_name": "d.png"},
    ]
    doc["annotations"] += [
        {"id": 3, "image_id": 99, "category_id": 1, "segmentation": [[1, 1, 2, 2, 3, 1]]},
        {"id": 4, "image_id": 6, "category_id": 9, "segmentation": [[1, 1, 2, 2, 3, 1]], "iscrowd": 2},
        {"id": 5, "image_id": 6, "category_id": 1, "segmentation": {"size": [9, 12], "counts": "PP"}},
        {"id": 6, "image_id": 6, "category_id": 1, "segmentation": [], "bbox": [1, 1, 3, 3]},
        {"id": 7, "image_id": 6, "category_id": 1, "segmentation": [[1, 1, 2, 2]], "bbox": [1, 1, 300, 3]},
        "x",
    ]
    labels = read_document(doc, "bad.json")
    assert [(p.record, p.field) for p in labels.problems] == [
        ("category id 1 (index 2)", "id"),
        ("category id 3 (index 3)", "name"),
        ("category id 4 (index 4)", "name"),
        ("category id ? (index 5)", "id"),
        ("image id 5 (index 2)", "id"),
        ("image id 7 (index 3)", "file_name"),
        ("image id 7 (index 3)", "height"),
        ("image id 8 (index 4)", "id"),
        ("annotation id 1 (index 0)", "image_id"),  # image 5 is listed twice: it names no image for sure
        ("annotation id 3 (index 2)", "image_id"),
        ("annotation id 4 (index 3)", "category_id"),
        ("annotation id 4 (index 3)", "iscrowd"),
        ("annotation id 5 (index 4)", "segmentation.size"),
        ("annotation id 6 (index 5)", "segmentation"),
        ("annotation id 7 (index 6)", "segmentation[0]"),
        ("annotation id 7 (index 6)", "bbox"),
        ("annotation id ? (index 7)", "annotation"),
    ]
    assert [a.record for a in labels.annotations] == ["annotation id 2 (index 1)"]
    missing = read_document({"images": []}, "half.json")
    assert [(p.record, p.field) for p in missing.problems] == [("document", "annotations"), ("document", "categories")]


# --------------------------------------------------------------------------------- files, dispatch


def test_files_that_cannot_be_parsed_give_one_problem(tmp_path: Path) -> None:
    cases = {
        "text.json": b"{nope",
        "binary.json": b"\xff\xfe\x00",
        "empty.zip": zip_bytes({}),
        "lscoco.zip": zip_bytes({"result.json": b"{broken"}),
        "other.zip": zip_bytes({"readme.txt": b"hello"}),
        "badzip.zip": b"PK\x03\x04 not really",
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        labels = read_labels(str(tmp_path / name))
        assert len(labels.problems) == 1 and labels.images == () and labels.problems[0].record == "document", name
    unread = {
        "Segmentation mask 1.1": zip_bytes({"SegmentationObject/a.png": b"", "labelmap.txt": b"background:0,0,0::"}),
        "YOLO": zip_bytes({"obj_train_data/a.txt": b"0 0.1 0.1 0.2 0.2", "obj.names": b"car"}),
        "Label Studio's PNG": zip_bytes({"task-3-annotation-4-by-1-tag-car-0.png": b""}),
        "readme.txt": zip_bytes({"readme.txt": b"hello"}),
    }
    for what, data in unread.items():
        (tmp_path / "unread.zip").write_bytes(data)
        (problem,) = read_labels(str(tmp_path / "unread.zip")).problems
        assert what in problem.message and "'COCO 1.0'" in problem.message, what
    labelme = {"shapes": [{"label": "car", "points": [[1, 1], [5, 1], [5, 5]]}], "imagePath": "a.png"}
    via = {"a.png12": {"filename": "a.png", "size": 12, "regions": []}}
    for what, doc in (("LabelMe", labelme), ("VIA", via), ("VIA", {"_via_img_metadata": via, "_via_settings": {}})):
        (problem,) = read_document(doc, "other.json").problems
        assert what in problem.message and "convert it to COCO" in problem.message
    assert read_document({"_via_img_metadata": 3}, "x.json").problems[0].field == "images", "read as COCO"
    minimal = [{"id": 1, "image": "/data/local-files/?d=a.png", "label": [], "annotation_id": 3}]
    assert "JSON_MIN" in read_document(minimal, "min.json").problems[0].message
    assert read_document([], "empty.json").format == "labelstudio-json"
    with pytest.raises(storage.NotFoundError):
        read_labels(str(tmp_path / "missing.json"))


def test_read_labels_through_gcs(gcs_bucket: str) -> None:
    uri = f"{gcs_bucket}/campaign/incoming/tasks.json"
    storage.write_bytes(uri, (DATA / "ls-brush.json").read_bytes())
    labels = read_labels(uri)
    assert labels.uri == uri and len(labels.images) == 6 and labels.problems == ()


@pytest.mark.parametrize(
    ("ref", "normal"),
    [
        ("/data/local-files/?d=pool/images/tiles/tile%20000.png", "pool/images/tiles/tile 000.png"),
        ("http://ls:8080/data/local-files/?d=a/b%2Bc.png", "a/b+c.png"),
        ("/data/upload/3/1a2b3c4d-t%201.png", "t 1.png"),
        ("upload/3/1a2b3c4d-t1.png", "t1.png"),
        ("/storage-data/uploaded/?filepath=upload/3/1a2b3c4d-t1.png", "t1.png"),
        ("images/0a1b2c3d__t1.png", "t1.png"),
        ("gs://bucket/pool/x%20y.png", "gs://bucket/pool/x y.png"),
        ("https://img.example/pool/t%201.png", "https://img.example/pool/t 1.png"),
        ("../srv/pool/images/tiles/t.png", "../srv/pool/images/tiles/t.png"),
        ("tiles/1a2b3c4d-t.png", "tiles/1a2b3c4d-t.png"),  # not an upload folder: kept
        ("images/e9f1c4c2__8f3a2b1c-t1.png", "8f3a2b1c-t1.png"),  # maybe an upload: ingest tries t1.png too
        # a bucket's UUID-named object the COCO export fetched: no upload prefix to take off
        ("images/e9f1c4c2__8f3a2b1c-1d2e-4f5a-9b8c-0123456789ab.png", "8f3a2b1c-1d2e-4f5a-9b8c-0123456789ab.png"),
        ("..\\..\\media\\upload\\1\\8f3a2b1c-t1.png", "t1.png"),  # the COCO export written on Windows
        ("images\\e9f1c4c2__t1.png", "t1.png"),
    ],
)
def test_normalise_ref(ref: str, normal: str) -> None:
    assert normalise_ref(ref) == normal


# -------------------------------------------------------------------------------------- brush RLE


def test_brush_rle_bytes_are_label_studio_sdks() -> None:
    """Captured from label_studio_sdk.converter.brush (Label Studio 1.23.2's own library)."""
    for name, case in json.loads((DATA / "sdk-brush-rle.json").read_text()).items():
        mask = decode_rle(case["mask"])
        assert encode_brush_rle(mask) == case["rle"], name
        assert np.array_equal(decode_brush_rle(case["rle"], *case["shape"]), mask), name


@settings(max_examples=60, deadline=None)
@given(arrays(np.bool_, st.tuples(st.integers(1, 40), st.integers(1, 40))))
def test_brush_rle_round_trip(mask: np.ndarray) -> None:
    assert np.array_equal(decode_brush_rle(encode_brush_rle(mask), *mask.shape), mask)


def test_brush_rle_malformed() -> None:
    rle = encode_brush_rle(np.eye(6, dtype=bool))
    for bad, match in (
        ([*rle[:-3]], "ends"),
        ([300, *rle[1:]], "0..255"),
        ("abc", "list of integers"),
        ([1, 2], "header"),
    ):
        with pytest.raises(BrushRLEError, match=match):
            decode_brush_rle(bad, 6, 6)  # type: ignore[arg-type]
    with pytest.raises(BrushRLEError, match="RGBA has 100"):
        decode_brush_rle(rle, 5, 5)


def test_one_brush_region_per_instance_keeps_parts_and_holes() -> None:
    donut = np.zeros((20, 30), bool)
    donut[2:14, 2:14] = True
    donut[5:9, 5:9] = False  # a hole
    donut[15:19, 20:28] = True  # a second part
    prediction = Prediction(7, 3, 0, 5, "house", 0.75, (2, 2, 28, 19), encode_rle(donut), int(donut.sum()))
    (brush,) = prediction_results(prediction, 20, 30)
    assert brush["id"] == "taudis-3" and brush["score"] == 0.75
    assert np.array_equal(decode_brush_rle(brush["value"]["rle"], 20, 30), donut)
    polygons = prediction_results(prediction, 20, 30, regions="polygons")
    assert [p["id"] for p in polygons] == ["taudis-3-0", "taudis-3-1"]  # grouped parts; the hole is filled
    labels = read_document([_task(1, polygons)], "t.json")
    (instance,) = labels.annotations
    assert isinstance(instance.segmentation, list) and len(instance.segmentation) == 2


# ------------------------------------------------------------------------- odd files, first contact


def _refs_resolved(labels: ToolLabels, pool: dict[str, Any]) -> dict[int, int]:
    from taudis.campaign.ingest import PoolIndex, resolve

    resolved = resolve(labels, PoolIndex.of(pool))
    assert resolved.problems == []
    return resolved.images


ODD_POOL = {
    "images": [{"id": 1, "file_name": "pool/a.png", "height": 30, "width": 40}],
    "annotations": [],
    "categories": [{"id": 1, "name": "house"}],
}


def test_a_fetched_name_that_may_be_an_upload_is_matched_by_either_reading_never_the_wrong_one() -> None:
    """images/<md5>__20230115-0001.png: a bucket's file named by date, or the upload 0001.png."""
    from taudis.campaign.ingest import PoolIndex, resolve

    polygon = {"id": 0, "image_id": 0, "category_id": 0, "segmentation": [[1, 1, 9, 1, 9, 9]], "bbox": [1, 1, 8, 8],
               "iscrowd": 0, "area": 32}  # fmt: skip
    doc = _ls_coco([{"id": 0, "file_name": "images/1a2b3c4d__20230115-0001.png", "width": 40, "height": 30}], [polygon])
    labels = read_document(doc, "ls.json")

    def pool_of(*names: str) -> PoolIndex:
        images = [{"id": i + 1, "file_name": n, "height": 30, "width": 40} for i, n in enumerate(names)]
        return PoolIndex.of({"images": images, "annotations": [], "categories": [{"id": 1, "name": "house"}]})

    assert resolve(labels, pool_of("tiles/20230115-0001.png", "x.png")).images == {0: 1}  # the file
    assert resolve(labels, pool_of("x.png", "other/0001.png")).images == {0: 2}  # the upload
    both = resolve(labels, pool_of("tiles/20230115-0001.png", "other/0001.png"))
    assert both.images == {} and "rename one of them apart" in both.problems[0].message


def test_a_label_studio_coco_zip_zipped_again_in_its_folder_is_read() -> None:
    """A browser unpacks the download (Safari does), the team zips the folder again (Finder adds __MACOSX)."""
    polygon = {"id": 0, "image_id": 0, "category_id": 0, "segmentation": [[1, 1, 9, 1, 9, 9]], "bbox": [1, 1, 8, 8],
               "iscrowd": 0, "area": 32}  # fmt: skip
    doc = _ls_coco([{"id": 0, "file_name": "/data/upload/1/8f3a2b1c-a.png", "width": 40, "height": 30}], [polygon])
    data = zip_bytes(
        {
            "project-3-at-2026-12-01-10-00-abcdef12/result.json": json.dumps(doc).encode(),
            "__MACOSX/project-3-at-2026-12-01-10-00-abcdef12/._result.json": b"\x00\x05\x16\x07",
        }
    )
    labels = read_label_bytes(data, "ls.zip")
    assert labels.format == "labelstudio-coco" and labels.problems == ()
    assert _refs_resolved(labels, ODD_POOL) == {0: 1}
    two = zip_bytes({"a/result.json": json.dumps(doc).encode(), "b/result.json": json.dumps(doc).encode()})
    (problem,) = read_label_bytes(two, "two.zip").problems
    assert "several Label Studio exports" in problem.message


def test_a_zip_whose_member_names_hold_backslashes_is_read() -> None:
    """Windows PowerShell 5.1's Compress-Archive writes member names with backslashes."""
    xml = (
        '<annotations><version>1.1</version><image id="0" name="pool/a.png" width="40" height="30">'
        '<polygon label="house" points="1,1;10,1;10,10"/></image></annotations>'
    )
    labels = read_label_bytes(zip_bytes({"task_3\\annotations.xml": xml.encode()}), "ps.zip")
    assert labels.format == "cvat-xml" and labels.problems == () and len(labels.annotations) == 1
    assert _refs_resolved(labels, ODD_POOL) == {0: 1}


def test_one_label_studio_task_is_read_as_a_file_of_one_task() -> None:
    """What the labelling screen shows as the task's source, and the API's GET /api/tasks/<id>."""
    task = _task(1, [_polygon("p", SQUARE)])
    task["data"] = {"image": "/data/upload/1/8f3a2b1c-a.png"}
    labels = read_label_bytes(json.dumps(task).encode(), "task.json")
    assert labels.format == "labelstudio-json" and labels.problems == () and len(labels.annotations) == 1
    assert _refs_resolved(labels, {**ODD_POOL, "images": [{**ODD_POOL["images"][0], "height": 10, "width": 10}]}) == {
        0: 1
    }


def test_a_file_of_drafts_and_skipped_tasks_says_so() -> None:
    skipped = _task(1, [], was_cancelled=True)
    drafted = {**_task(2, []), "annotations": [], "drafts": [{"result": [_polygon("p", SQUARE)]}]}
    (problem,) = read_document([skipped, drafted], "drafts.json").problems
    assert "none of the file's 2 tasks has a submitted annotation (1 skipped, 1 with drafts only)" in problem.message


def test_a_smart_tools_prompt_left_beside_the_masks_is_named_as_such() -> None:
    prompt = {"id": "kp", "type": "keypointlabels", "original_width": 10, "original_height": 10,
              "value": {"x": 50, "y": 50, "width": 0.5, "keypointlabels": ["house"]}}  # fmt: skip
    (problem,) = read_document([_task(1, [prompt, _polygon("p", SQUARE)])], "sam.json").problems
    assert problem.field == "type" and "smart tool's prompt" in problem.message
    (alone,) = read_document([_task(1, [prompt])], "points.json").problems
    assert "prompt" not in alone.message and "has no mask" in alone.message


ODD_VALUES = [None, True, 0, -1, 2.5, "", "x", [], [None], [[]], {}, {"a": [1]}]


def _paths(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value in a JSON document, the document's own included."""
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    return [path] + [p for key, child in children for p in _paths(child, (*path, key))]


def _replaced(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    out = copy.deepcopy(doc)
    node = out
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return out


@pytest.mark.parametrize("kind", ["labelstudio-json", "labelstudio-coco", "coco"])
def test_any_field_of_an_export_of_any_type_gives_problems_never_an_error(kind: str) -> None:
    """A hand-edited file must be quarantined with a reason: an error would fail every ingest run
    and hold every other file back."""
    mask = np.zeros((10, 10), bool)
    mask[2:6, 3:8] = True
    polygon = {"id": 0, "image_id": 0, "category_id": 0, "segmentation": [[1, 1, 9, 1, 9, 9]], "bbox": [1, 1, 8, 8],
               "iscrowd": 0, "area": 32}  # fmt: skip
    rle = {**polygon, "id": 2, "segmentation": {"size": [10, 10], "counts": [20, 5, 75]}}
    doc: Any = (
        [_task(1, [_brush("b", mask), _polygon("p", SQUARE), {"type": "choices", "value": {"choices": ["x"]}}])]
        if kind == "labelstudio-json"
        else {
            "images": [{"id": 1, "file_name": "a.png", "width": 10, "height": 10}],
            "annotations": [{**polygon, "image_id": 1, "category_id": 1}, {**rle, "image_id": 1, "category_id": 1}],
            "categories": [{"id": 1, "name": "house", "supercategory": ""}],
        }
        if kind == "coco"
        else _ls_coco(
            [
                {"id": 0, "file_name": "/data/upload/1/8f3a2b1c-a.png", "width": 10, "height": 10},
                {"id": 1, "file_name": "gs://bucket/pool/c.png", "width": 10, "height": 10},
            ],
            [polygon, {**polygon, "id": 1, "image_id": 1}],
        )
    )
    for path in _paths(doc):
        for value in ODD_VALUES:
            labels = read_document(_replaced(doc, path, value), "odd.json")
            assert isinstance(labels, ToolLabels), (path, value)
