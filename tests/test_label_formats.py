"""read_labels on what the tools write that the probe of December found misread (built here, in the tools' formats).

- taudis's own pre-annotations given back as labels (``build_preannotations``, ``build_cvat_archive``);
- Label Studio regions drawn on an ``<Image>`` other than ``data.image`` (each result's ``to_name``);
- CVAT for images 1.1: shapes grouped with a polygon or mask (``group_id``), one instance in CVAT;
- Label Studio brush pixels of any alpha above 0 (its converter's and exports' rule);
- ``/data/local-files?d=`` without the slash; the names of Label Studio's CSV and PNG exports and
  of a CVAT XML export zipped inside a folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from campaign_fixtures import zip_bytes
from pycocotools import mask as mask_utils

from taudis.data.masks import decode_rle, encode_rle
from taudis.labeling import ToolLabels, build_cvat_archive, build_preannotations, read_labels
from taudis.labeling.cvat_xml import read_cvat_xml
from taudis.labeling.labelstudio import normalise_ref
from taudis.labeling.labelstudio_rle import decode_brush_rle
from taudis.labeling.predictions import Prediction
from taudis.labeling.read import read_document

# ------------------------------------------------------------------------ taudis's own pre-annotations

IMAGES = [
    {"id": 6, "file_name": "c.png", "height": 30, "width": 40},
    {"id": 7, "file_name": "d.png", "height": 30, "width": 40},
]
CATEGORIES = [{"id": 1, "name": "car"}]


def _preannotations() -> dict[str, Any]:
    mask = np.zeros((30, 40), bool)
    mask[5:15, 5:20] = True
    predictions = {
        image["id"]: [Prediction(image["id"], 0, 0, 1, "car", 0.31, (5, 5, 20, 15), encode_rle(mask), int(mask.sum()))]
        for image in IMAGES
    }
    return build_preannotations(
        [{**im, "coco_url": f"gs://b/pool/{im['file_name']}"} for im in IMAGES], CATEGORIES, predictions
    )


def _own(labels: ToolLabels) -> None:
    (problem,) = labels.problems
    assert labels.images == () and labels.annotations == () and problem.record == "document"
    assert "taudis's own pre-annotations" in problem.message and "not labels" in problem.message
    assert "Label Studio's JSON" in problem.message and "'COCO 1.0'" in problem.message  # what to export instead


def test_taudis_own_preannotations_are_refused_bare_and_in_the_cvat_archive(tmp_path: Path) -> None:
    coco = _preannotations()
    bare = tmp_path / "preannotations.json"
    bare.write_text(json.dumps(coco))
    _own(read_labels(str(bare)))
    archive = tmp_path / "coco_1.0.zip"
    archive.write_bytes(build_cvat_archive(coco))
    labels = read_labels(str(archive))
    _own(labels)
    assert labels.problems[0].message.startswith("annotations/instances_default.json is ")


def test_labels_with_scores_that_are_not_taudis_preannotations_are_still_read() -> None:
    coco = _preannotations()
    # CVAT's export of corrected pre-annotations: datumaro writes the score attribute back as "score"
    cvat = {**coco, "info": {k: "" for k in ("contributor", "date_created", "description", "url", "version", "year")}}
    cvat["licenses"] = [{"name": "", "id": 0, "url": ""}]
    labels = read_document(cvat, "instances_default.json")
    assert labels.format == "cvat-coco" and labels.problems == () and len(labels.annotations) == 2
    dataset = {**coco, "info": {"description": "taudis labelled dataset"}}  # a campaign's own labels
    assert read_document(dataset, "labels.json").problems == ()


# ------------------------------------------------------------------------- Label Studio: which image


def _polygon(rid: str, to_name: str | None) -> dict[str, Any]:
    result: dict[str, Any] = {
        "id": rid, "type": "polygonlabels", "from_name": "poly", "original_width": 40, "original_height": 30,
        "image_rotation": 0,
        "value": {"points": [[10, 10], [50, 10], [50, 60]], "closed": True, "polygonlabels": ["car"]},
    }  # fmt: skip
    if to_name is not None:
        result["to_name"] = to_name
    return result


def _task(data: dict[str, Any], results: list[dict[str, Any]]) -> dict[str, Any]:
    return {"id": 22, "data": data, "annotations": [{"id": 25, "result": results, "was_cancelled": False}]}


A = "/data/local-files/?d=pool/images/a.png"
B = "/data/local-files/?d=pool/images/b.png"
C = "/data/local-files/?d=pool/images/c.png"


def test_regions_land_on_the_image_their_image_tag_reads() -> None:
    # <Image name="before" value="$image"/><Image name="after" value="$after"/>, drawn on "after"
    labels = read_document([_task({"image": A, "after": C}, [_polygon("p", "after")])], "t.json")
    assert labels.problems == () and [im.ref for im in labels.images] == ["pool/images/c.png"]
    assert [a.image for a in labels.annotations] == [0]
    # one image in the data: whatever the tag is called, the regions are on it
    labels = read_document([_task({"photo": C, "caption": "north"}, [_polygon("p", "img")])], "t.json")
    assert labels.problems == () and [im.ref for im in labels.images] == ["pool/images/c.png"]


def test_regions_whose_image_cannot_be_told_are_refused_naming_task_to_name_and_keys() -> None:
    # <Image name="photo" value="$before"/>: nothing in the export says that photo reads data.before
    labels = read_document([_task({"before": A, "after": C}, [_polygon("p", "photo")])], "t.json")
    (problem,) = labels.problems
    assert labels.images == () and labels.annotations == ()
    assert (problem.record, problem.field) == ("task 22, annotation 25", "to_name")
    assert "'photo'" in problem.message and "['before', 'after']" in problem.message
    # an empty submission on a task of two images, in a file whose regions name no data key either
    drawn = _task({"before": A, "after": C}, [_polygon("p", "photo")])
    problems = read_document([drawn, {**_task({"before": B, "after": C}, []), "id": 23}], "t.json").problems
    assert len(problems) == 2 and all(p.field == "to_name" and "['before', 'after']" in p.message for p in problems)


def test_a_tag_named_for_no_data_key_is_never_guessed_between_two_urls() -> None:
    """<Image name="img" value="$image"/> beside a thumbnail: the export cannot tell which the tag
    reads, and a suffix would pick the thumbnail over a signed URL without one: refused, loudly.
    An upload beside a bare web page is the one image Label Studio serves itself; a file without
    any region goes by Label Studio's default $image."""
    signed = "https://storage.example.org/obj?X-Goog-Signature=abc"
    thumb = "https://cdn.example.org/thumbs/b.jpg"
    (problem,) = read_document([_task({"image": signed, "thumb": thumb}, [_polygon("p", "img")])], "t").problems
    assert problem.field == "to_name" and "'img'" in problem.message
    empty = read_document([_task({"image": signed, "thumb": thumb}, [])], "t.json")
    assert empty.problems == () and [im.ref for im in empty.images] == [signed]
    page = read_document([_task({"image": A, "source": "https://example.org/s/42"}, [_polygon("p", "img")])], "t")
    assert page.problems == () and [im.ref for im in page.images] == ["pool/images/a.png"]
    links = read_document([_task({"image": A, "links": ["https://wiki.example.org/page"]}, [])], "t.json")
    assert links.problems == () and [im.ref for im in links.images] == ["pool/images/a.png"]  # a list, no pages


def test_an_extra_url_beside_the_image_does_not_hide_which_image_a_task_labels() -> None:
    """A thumbnail or a source web page beside the image (a common import): regions name their tag,
    an empty submission goes by the tag the file's regions name, or Label Studio's default."""
    thumb = "https://cdn.example.org/thumbs/a_small.jpg"
    tasks = [
        _task({"image": A, "thumbnail": thumb}, [_polygon("p", "image")]),
        {**_task({"image": B, "thumbnail": thumb}, []), "id": 23},
    ]
    labels = read_document(tasks, "t.json")
    assert labels.problems == () and [im.ref for im in labels.images] == ["pool/images/a.png", "pool/images/b.png"]
    alone = read_document([_task({"image": B, "thumbnail": thumb}, [])], "t.json")  # no region in the file
    assert alone.problems == () and [im.ref for im in alone.images] == ["pool/images/b.png"]
    page = read_document([_task({"image": A, "source": "https://example.org/survey/42"}, [_polygon("p", "img")])], "t")
    assert page.problems == () and [im.ref for im in page.images] == ["pool/images/a.png"]


def test_a_task_of_several_images_is_refused_not_put_on_one_of_them() -> None:
    """<Image valueList="$pages">: a region carries the index of the page it was drawn on."""
    region = {**_polygon("p", "pages"), "item_index": 1}
    labels = read_document([_task({"pages": [A, C], "cover": B}, [region])], "t.json")
    (problem,) = labels.problems
    assert labels.images == () and "several images" in problem.message


def test_regions_of_one_annotation_on_two_images_are_not_merged_onto_one() -> None:
    results = [_polygon("p", "image"), _polygon("q", "after")]
    labels = read_document([_task({"image": A, "after": C}, results)], "t.json")
    (problem,) = labels.problems
    assert labels.images == () and problem.field == "to_name" and "['image', 'after']" in problem.message


def test_taudis_tasks_keep_their_pool_id_and_their_file_name_is_no_image() -> None:
    data = {"image": A, "image_id": 1, "file_name": "a.png", "rank": 0, "reason": "uncertain"}
    labels = read_document([_task(data, [])], "t.json")  # submitted empty: no to_name to tell
    assert labels.problems == () and [(im.ref, im.pool_id) for im in labels.images] == [("pool/images/a.png", 1)]
    labels = read_document([_task({**data, "after": C}, [_polygon("p", "after")])], "t.json")
    # image_id is data.image's pool id, not the other image's
    assert labels.problems == () and [(im.ref, im.pool_id) for im in labels.images] == [("pool/images/c.png", None)]


# ---------------------------------------------------------------------------- CVAT XML: grouped shapes


def _cvat_xml(*shapes: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n<annotations><version>1.1</version>'
        f'<image id="0" name="a.png" width="40" height="30">{"".join(shapes)}</image></annotations>'
    ).encode()


POLY_1 = '<polygon label="car" occluded="0" points="2,2;10,2;10,10;2,10" z_order="0" group_id="5"></polygon>'
POLY_2 = '<polygon label="car" occluded="0" points="20,15;30,15;30,25;20,25" z_order="1" group_id="5"></polygon>'
# a 6x6 mask at (2, 2), runs row by row over its box
MASK = '<mask label="car" rle="0, 36" left="2" top="2" width="6" height="6" z_order="0" group_id="5"></mask>'


def _pixels(segmentation: Any, height: int = 30, width: int = 40) -> np.ndarray:
    if isinstance(segmentation, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
        return mask_utils.decode(rle).astype(bool)
    return decode_rle(segmentation)


def test_grouped_polygons_and_masks_are_one_instance_their_union() -> None:
    labels = read_cvat_xml(_cvat_xml(POLY_1, POLY_2), "annotations.xml")
    (instance,) = labels.annotations  # CVAT's COCO export writes this group as one annotation too
    assert (
        labels.problems == ()
        and instance.category == "car"
        and instance.record.startswith("image id 0 ('a.png'), group 5")
    )
    want = _pixels([[2, 2, 10, 2, 10, 10, 2, 10]]) | _pixels([[20, 15, 30, 15, 30, 25, 20, 25]])
    np.testing.assert_array_equal(_pixels(instance.segmentation), want)
    labels = read_cvat_xml(_cvat_xml(MASK, POLY_2), "annotations.xml")
    (instance,) = labels.annotations
    want = np.zeros((30, 40), bool)
    want[2:8, 2:8] = True
    np.testing.assert_array_equal(_pixels(instance.segmentation), want | _pixels([[20, 15, 30, 15, 30, 25, 20, 25]]))
    box = '<box label="car" xtl="2" ytl="2" xbr="30" ybr="25" group_id="5"></box>'
    ungrouped = POLY_1.replace(' group_id="5"', "")
    labels = read_cvat_xml(_cvat_xml(ungrouped, POLY_2, box, POLY_1), "annotations.xml")
    assert labels.problems == () and len(labels.annotations) == 2  # the box is the group's: no instance


def test_grouped_shapes_that_outline_no_mask_or_disagree_are_refused() -> None:
    ellipse = '<ellipse label="car" cx="30" cy="20" rx="5" ry="4" group_id="5"></ellipse>'
    polyline = '<polyline label="car" points="1,1;30,20" group_id="5"></polyline>'
    points = '<points label="car" points="1,1" group_id="5"></points>'
    box = '<box label="tree" xtl="0" ytl="0" xbr="10" ybr="10" group_id="5"></box>'
    tree = POLY_2.replace('label="car"', 'label="tree"')
    cases = [
        ((POLY_1, ellipse), "group 5, <ellipse> #1", "ellipse"),
        ((POLY_1, polyline), "group 5, <polyline> #1", "polyline"),
        ((points, MASK), "group 5, <points> #0", "points"),
        ((MASK, box), "group 5, <box> #1", "label"),
        ((POLY_1, tree), "group 5", "label"),
    ]
    for shapes, record, field in cases:
        labels = read_cvat_xml(_cvat_xml(*shapes), "annotations.xml")
        (problem,) = labels.problems
        assert labels.annotations == (), shapes
        assert (problem.record, problem.field) == (f"image id 0 ('a.png'), {record}", field), shapes


# ------------------------------------------------------------------------------------ brush alpha


def _rgba_rle(values: np.ndarray) -> list[int]:
    """Label Studio's rle-pack of RGBA bytes, written the plain way: one repeat chunk per value."""
    bits = f"{len(values):032b}{7:05b}" + "".join(f"{b - 1:04b}" for b in (3, 4, 8, 16))
    bits += "".join(f"100000{int(v):08b}" for v in values)  # repeat, 3-bit field, length 1, the value
    bits += "0" * (-len(bits) % 8)
    return [int(bits[i : i + 8], 2) for i in range(0, len(bits), 8)]


def test_brush_pixels_of_any_alpha_above_zero_are_the_mask() -> None:
    alpha = np.zeros((4, 5), np.uint8)
    alpha[1, 1:4] = [1, 100, 127]  # anti-aliased edges, and contour2rle's alpha 100
    alpha[2, 2] = 255
    rgba = np.zeros((4, 5, 4), np.uint8)
    rgba[..., 3] = alpha
    np.testing.assert_array_equal(decode_brush_rle(_rgba_rle(rgba.ravel()), 4, 5), alpha > 0)


# ------------------------------------------------------------------------------ references, messages


def test_local_files_url_without_the_slash_before_the_query() -> None:
    assert normalise_ref("/data/local-files?d=pool/images/a%20b.png") == "pool/images/a b.png"
    assert normalise_ref("http://ls:8080/data/local-files?d=pool/images/a.png") == "pool/images/a.png"


def test_a_cvat_xml_export_zipped_in_a_folder_is_read(tmp_path: Path) -> None:
    path = tmp_path / "task.zip"
    path.write_bytes(zip_bytes({"task_7_export/": b"", "task_7_export/annotations.xml": _cvat_xml(POLY_1)}))
    labels = read_labels(str(path))
    assert labels.format == "cvat-xml" and labels.problems == () and len(labels.annotations) == 1
    path.write_bytes(zip_bytes({"a/annotations.xml": _cvat_xml(POLY_1), "b/annotations.xml": _cvat_xml(POLY_2)}))
    (problem,) = read_labels(str(path)).problems
    assert "several CVAT XML files" in problem.message


def test_label_studio_png_and_csv_exports_are_named(tmp_path: Path) -> None:
    png = tmp_path / "png.zip"  # BRUSH_TO_PNG: task-<t>-annotation-<a>-by-<user>-<from_name>-<labels>-<n>.png
    png.write_bytes(
        zip_bytes({"task-1-annotation-1-by-1-brush-tree-0.png": b"", "task-5-annotation-5-by-1-brush-car-0.png": b""})
    )
    (problem,) = read_labels(str(png)).problems
    assert "Label Studio's PNG export" in problem.message
    csv = tmp_path / "export.csv"
    csv.write_text(
        '"annotation_id","annotator","brush","created_at","id","image","lead_time","updated_at"\n'
        '1,"1","[{""format"":""rle""}]","2026-12-07T17:43:00Z",1,"/data/local-files/?d=a.png",3.2,"2026-12-07T17:43:00Z"\n'
    )
    (problem,) = read_labels(str(csv)).problems
    assert "Label Studio's CSV" in problem.message and "JSON" in problem.message
    tsv = tmp_path / "export.tsv"
    tsv.write_text(csv.read_text().replace(",", "\t"))
    assert "Label Studio's CSV" in read_labels(str(tsv)).problems[0].message


# ------------------------------------------------------------------------- several annotators


def test_two_ground_truth_annotations_are_named_as_such() -> None:
    task = _task({"image": A}, [])
    task["annotations"] = [
        {"id": 14, "result": [], "ground_truth": True},
        {"id": 15, "result": [], "ground_truth": True},
    ]
    (problem,) = read_document([task], "t.json").problems
    assert (problem.record, problem.field) == ("task 22", "annotations")
    assert "2 of them [14, 15] ground truth" in problem.message and "mark exactly one" in problem.message


def test_label_studio_coco_with_one_image_entry_per_annotation_names_the_cause() -> None:
    polygon = [[2.0, 2.0, 10.0, 2.0, 10.0, 10.0]]
    doc = {
        "info": {"year": 2026, "version": "1.0", "description": "", "contributor": "Label Studio", "url": ""},
        "images": [
            {"width": 40, "height": 30, "id": 0, "file_name": "../pool/images/d.png"},
            {"width": 40, "height": 30, "id": 1, "file_name": "../pool/images/d.png"},  # the task's second annotation
        ],
        "categories": [{"id": 0, "name": "car"}],
        "annotations": [
            {"id": k, "image_id": k, "category_id": 0, "segmentation": polygon, "bbox": [2, 2, 8, 8], "iscrowd": 0}
            for k in (0, 1)
        ],
    }
    labels = read_document(doc, "result.json")
    (problem,) = labels.problems
    assert (problem.record, problem.field) == ("image id 1 (index 1)", "file_name")
    assert "also image id 0 (index 0)" in problem.message and "two submitted annotations" in problem.message
    assert "mark one annotation of the task as ground truth" in problem.message
