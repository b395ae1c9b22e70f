"""Labelling exports: COCO pre-annotations, Label Studio tasks, CVAT COCO 1.0 archive, manifest."""

from __future__ import annotations

import io
import json
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from taudis import storage
from taudis.data.instances import write_shard
from taudis.data.masks import binary_mask, decode_rle
from taudis.labeling import ExportError, export_for_labeling, mask_polygons
from taudis.labeling.cli import main
from taudis.labeling.labelstudio import image_url
from taudis.labeling.labelstudio_rle import decode_brush_rle

CLASSES = ["house", "pool"]
CATEGORIES = [{"id": 5, "name": "house"}, {"id": 7, "name": "pool"}]  # ids differ from class indices on purpose
SIZES = {10: (32, 40), 11: (24, 30), 12: (32, 40), 13: (20, 20)}  # image id -> (height, width)


def _blob(rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:28, 0:28]
    cy, cx, r = rng.uniform(9, 19), rng.uniform(9, 19), rng.uniform(5, 9)
    return (1 / (1 + np.exp((np.hypot(yy - cy, xx - cx) - r) * 1.5))).astype(np.float16)


def _write_shards(root: Path) -> dict[str, Any]:
    """Two shards: images 10, 11 (11 without instances) and 12, 13."""
    rng = np.random.default_rng(3)
    truth: dict[str, Any] = {}
    for shard_name, image_ids, counts in (("shard-000", [10, 11], [3, 0]), ("shard-001", [12, 13], [2, 1])):
        inst_image, inst_index, classes, probs, boxes, masks = [], [], [], [], [], []
        for image_id, count in zip(image_ids, counts, strict=True):
            height, width = SIZES[image_id]
            for index in range(count):
                x0, y0 = rng.uniform(0, width / 2), rng.uniform(0, height / 2)
                box = [x0, y0, min(width, x0 + rng.uniform(6, width / 2)), min(height, y0 + rng.uniform(6, height / 2))]
                p = rng.dirichlet([1, 1, 1]).astype(np.float32)
                inst_image.append(image_id)
                inst_index.append(index)
                classes.append(int(np.argmax(p[:2])))
                probs.append(p)
                boxes.append(box)
                masks.append(_blob(rng))
        n = len(inst_image)
        emb = rng.normal(size=(n, 8)).astype(np.float32)
        emb /= np.linalg.norm(emb, axis=1, keepdims=True) if n else 1
        write_shard(
            root / shard_name,
            image_ids=image_ids,
            image_sizes=[SIZES[i] for i in image_ids],
            instance_image=np.array(inst_image, dtype=np.int64),
            instance_index=np.array(inst_index, dtype=np.int32),
            classes=np.array(classes, dtype=np.int32),
            class_probs=np.array(probs, dtype=np.float32).reshape(n, 3),
            boxes=np.array(boxes, dtype=np.float32).reshape(n, 4),
            mask_probs=np.array(masks, dtype=np.float16).reshape(n, 28, 28),
            embeddings=emb.reshape(n, 8),
            class_names=CLASSES,
            model_id="model-r1",
        )
        for row in range(n):
            truth.setdefault(inst_image[row], []).append(
                {
                    "instance": inst_index[row],
                    "class": classes[row],
                    "score": float(np.float32(probs[row][classes[row]])),
                    "box": np.float32(boxes[row]).astype(float).tolist(),
                    "mask_probs": masks[row],
                }
            )
    return truth


def _selection(ids: list[int]) -> dict[str, Any]:
    return {
        "schema": "taudis.selection",
        "version": 1,
        "strategy": "taudis",
        "params": {"alpha": 2.5},
        "budget": len(ids),
        "images": [
            {"image_id": i, "rank": r, "votes": 3 - r, "uncertainty": 0.5 - r / 10, "filled": i == 11, "reason": "r"}
            for r, i in enumerate(ids)
        ],
        "instances": [{"image_id": 12, "instance": 1, "uncertainty": 0.9}],
        "notes": [],
        "stats": {},
    }


@pytest.fixture
def inputs(storage_root: str, tmp_path: Path) -> dict[str, Any]:
    shards = tmp_path / "instances"
    truth = _write_shards(shards)
    instances = str(shards)
    if storage.is_gcs(storage_root):
        instances = storage.join(storage_root, "instances")
        storage.upload_tree(shards, instances)
    image_root = storage.join(storage_root, "images")
    pool = {
        "images": [{"id": i, "file_name": f"tiles/t{i}.png", "height": h, "width": w} for i, (h, w) in SIZES.items()],
        "annotations": [],
        "categories": CATEGORIES,
    }
    for i, (h, w) in SIZES.items():
        buffer = io.BytesIO()
        Image.fromarray(np.full((h, w, 3), i, dtype=np.uint8)).save(buffer, format="PNG")
        storage.write_bytes(storage.join(image_root, f"tiles/t{i}.png"), buffer.getvalue())
    pool_uri = storage.join(storage_root, "pool.json")
    storage.write_json(pool_uri, pool)
    selection_uri = storage.join(storage_root, "selection.json")
    order = [12, 11, 10]  # selection order, not id order; 13 not chosen
    storage.write_json(selection_uri, _selection(order))
    return {
        "truth": truth,
        "instances": instances,
        "pool": pool_uri,
        "image_root": image_root,
        "selection": selection_uri,
        "order": order,
        "out": storage.join(storage_root, "export"),
    }


def _export(inputs: dict[str, Any]) -> dict[str, str]:
    return export_for_labeling(
        inputs["selection"], inputs["instances"], inputs["pool"], inputs["image_root"], inputs["out"]
    )


def test_coco_preannotations_round_trip(inputs: dict[str, Any], tmp_path: Path) -> None:
    written = _export(inputs)
    assert set(written) == {"preannotations", "labelstudio_tasks", "labelstudio_config", "cvat_archive", "manifest"}
    assert all(storage.exists(uri) for uri in written.values())
    local = storage.download_file(written["preannotations"], tmp_path / "pre.json")
    coco = COCO(str(local))
    assert [im["id"] for im in coco.dataset["images"]] == inputs["order"]
    assert coco.loadImgs(12)[0]["coco_url"] == storage.join(inputs["image_root"], "tiles/t12.png")
    assert coco.getAnnIds(imgIds=[11]) == []  # no instance predicted: no annotation
    assert coco.getAnnIds(imgIds=[13]) == []  # not chosen
    for image_id in (10, 12):
        height, width = SIZES[image_id]
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))
        expected = inputs["truth"][image_id]
        assert len(anns) == len(expected)
        for ann, truth in zip(sorted(anns, key=lambda a: a["attributes"]["instance"]), expected, strict=True):
            want_mask = binary_mask(truth["mask_probs"], truth["box"], height, width)
            assert np.array_equal(coco.annToMask(ann).astype(bool), want_mask)
            assert np.array_equal(decode_rle(ann["segmentation"]), want_mask)
            x0, y0, x1, y1 = truth["box"]
            assert ann["bbox"] == pytest.approx([x0, y0, x1 - x0, y1 - y0], abs=1e-4)
            assert ann["score"] == pytest.approx(truth["score"], abs=1e-6)
            assert ann["category_id"] == CATEGORIES[truth["class"]]["id"]
            assert ann["area"] == want_mask.sum()
    # they load as detection results too (what an evaluation of the pre-annotations would do)
    results = coco.loadRes(coco.dataset["annotations"])
    assert len(results.getAnnIds()) == len(coco.dataset["annotations"])


@pytest.mark.parametrize("regions", ["brush", "polygons"])
def test_label_studio_tasks_match_the_import_format(inputs: dict[str, Any], regions: str) -> None:
    written = export_for_labeling(
        inputs["selection"], inputs["instances"], inputs["pool"], inputs["image_root"], inputs["out"],
        labelstudio_regions=regions,
    )  # fmt: skip
    tasks = storage.read_json(written["labelstudio_tasks"])
    config = ET.fromstring(storage.read_text(written["labelstudio_config"]))
    image_tag = config.find("Image")
    control = config.find("BrushLabels" if regions == "brush" else "PolygonLabels")
    assert image_tag is not None and control is not None and len(config) == 2
    label_values = {label.get("value") for label in control.findall("Label")}
    assert label_values == {"house", "pool"}
    assert isinstance(tasks, list) and [t["data"]["image_id"] for t in tasks] == inputs["order"]
    for task in tasks:
        image_id = task["data"]["image_id"]
        height, width = SIZES[image_id]
        assert task["data"]["file_name"] == f"tiles/t{image_id}.png"
        # the Image tag reads the task's data key named by its value="$key"; no prefix: the image's URI
        assert task["data"][image_tag.get("value").lstrip("$")] == storage.join(
            inputs["image_root"], f"tiles/t{image_id}.png"
        )
        (prediction,) = task["predictions"]
        assert set(prediction) == {"model_version", "score", "result"}
        assert prediction["model_version"] == "model-r1"  # the shards' model id
        truth = inputs["truth"].get(image_id, [])
        assert prediction["score"] == pytest.approx(np.mean([t["score"] for t in truth]) if truth else 0.0, abs=1e-6)
        drawn: dict[int, np.ndarray] = {}
        for result in prediction["result"]:
            assert result["type"] == ("brushlabels" if regions == "brush" else "polygonlabels")
            assert result["from_name"] == control.get("name") and result["to_name"] == control.get("toName")
            assert result["to_name"] == image_tag.get("name")
            assert (result["original_width"], result["original_height"], result["image_rotation"]) == (width, height, 0)
            assert result["value"][result["type"]][0] in label_values
            instance = int(result["id"].split("-")[1])
            t = next(t for t in truth if t["instance"] == instance)
            assert result["value"][result["type"]] == [CLASSES[t["class"]]]
            assert result["score"] == pytest.approx(t["score"], abs=1e-6)
            if regions == "brush":
                assert instance not in drawn, "one brush region per instance"
                assert result["value"]["format"] == "rle"
                drawn[instance] = decode_brush_rle(result["value"]["rle"], height, width)
            else:
                assert result["value"]["closed"] is True
                points = np.array(result["value"]["points"])
                assert points.shape[1] == 2 and len(points) >= 3
                assert points.min() >= 0 and points.max() <= 100  # percent of the image size
                pixels = (points * [width / 100, height / 100]).ravel().tolist()
                part = mask_utils.decode(mask_utils.frPyObjects([pixels], height, width)).max(axis=2).astype(bool)
                drawn[instance] = drawn.get(instance, np.zeros_like(part)) | part
        assert sorted(drawn) == sorted(t["instance"] for t in truth)  # every instance, once
        for t in truth:
            want = binary_mask(t["mask_probs"], t["box"], height, width)
            if regions == "brush":
                assert np.array_equal(drawn[t["instance"]], want)  # exact: parts and holes
            else:
                assert (drawn[t["instance"]] & want).sum() / (drawn[t["instance"]] | want).sum() > 0.95


def test_label_studio_image_urls_take_a_prefix(inputs: dict[str, Any]) -> None:
    written = export_for_labeling(
        inputs["selection"], inputs["instances"], inputs["pool"], inputs["image_root"], inputs["out"],
        labelstudio_url_prefix="/data/local-files/?d=pool/images/",
    )  # fmt: skip
    tasks = storage.read_json(written["labelstudio_tasks"])
    assert [t["data"]["image"] for t in tasks] == [
        f"/data/local-files/?d=pool/images/tiles/t{i}.png" for i in inputs["order"]
    ]
    with pytest.raises(ExportError, match="labelstudio_regions"):
        export_for_labeling(
            inputs["selection"], inputs["instances"], inputs["pool"], inputs["image_root"], inputs["out"],
            labelstudio_regions="boxes",
        )  # fmt: skip


def test_image_url_quotes_the_file_name() -> None:
    assert image_url("gs://b/p/a b.png", "a b.png", None) == "gs://b/p/a b.png"
    assert (
        image_url("x", "dir/a b#1.png", "/data/local-files/?d=root/") == "/data/local-files/?d=root/dir/a%20b%231.png"
    )
    assert image_url("x", "t.png", "https://img.example/pool/") == "https://img.example/pool/t.png"


def test_cvat_archive_has_what_coco_1_0_import_expects(inputs: dict[str, Any], tmp_path: Path) -> None:
    written = _export(inputs)
    archive = zipfile.ZipFile(io.BytesIO(storage.read_bytes(written["cvat_archive"])))
    names = set(archive.namelist())
    assert names == {"annotations/instances_default.json"} | {f"images/tiles/t{i}.png" for i in inputs["order"]}
    doc = json.loads(archive.read("annotations/instances_default.json"))
    assert {"images", "annotations", "categories"} <= set(doc)
    assert doc["categories"] == CATEGORIES
    for image in doc["images"]:
        assert set(image) == {"id", "file_name", "height", "width"}
        png = Image.open(io.BytesIO(archive.read(f"images/{image['file_name']}")))
        assert png.size == (image["width"], image["height"])
    for ann in doc["annotations"]:
        assert ann["iscrowd"] == 0 and isinstance(ann["segmentation"]["counts"], str)
        assert ann["attributes"]["occluded"] is False
    local = tmp_path / "cvat.json"
    local.write_bytes(archive.read("annotations/instances_default.json"))
    assert len(COCO(str(local)).getAnnIds()) == sum(len(inputs["truth"].get(i, [])) for i in inputs["order"])


def test_manifest_lines(inputs: dict[str, Any]) -> None:
    written = _export(inputs)
    lines = [json.loads(line) for line in storage.read_text(written["manifest"]).splitlines()]
    assert [line["image_id"] for line in lines] == inputs["order"]
    for rank, line in enumerate(lines):
        truth = inputs["truth"].get(line["image_id"], [])
        assert line["uri"] == storage.join(inputs["image_root"], f"tiles/t{line['image_id']}.png")
        assert line["rank"] == rank and line["reason"] == "r" and line["strategy"] == "taudis"
        assert line["num_predictions"] == len(truth)
        assert line["scores"] == pytest.approx([t["score"] for t in truth], abs=1e-5)
        assert line["filled"] == (line["image_id"] == 11)
    assert lines[0]["chosen_instances"] == [{"instance": 1, "uncertainty": 0.9}]


def test_mask_polygons_outer_contours_only() -> None:
    mask = np.zeros((30, 30), dtype=bool)
    mask[2:12, 2:12] = True
    mask[5:8, 5:8] = False  # a hole: not a polygon of its own
    mask[20:26, 18:28] = True
    polygons = mask_polygons(mask)
    assert len(polygons) == 2
    drawn = np.zeros_like(mask)
    for polygon in polygons:
        drawn |= mask_utils.decode(mask_utils.frPyObjects([polygon.ravel().tolist()], 30, 30))[:, :, 0].astype(bool)
    filled = mask.copy()
    filled[5:8, 5:8] = True  # holes are dropped: the outline covers them
    assert (drawn & filled).sum() / (drawn | filled).sum() > 0.9
    assert mask_polygons(np.zeros((4, 4), dtype=bool)) == []


def test_bad_inputs_name_file_and_field(inputs: dict[str, Any]) -> None:
    selection = storage.read_json(inputs["selection"])
    selection["images"].append({"image_id": 99, "rank": 3})
    storage.write_json(inputs["selection"], selection)
    with pytest.raises(ExportError, match=r"selection\.json: images\[3\], field 'image_id': image 99"):
        _export(inputs)
    storage.write_json(inputs["selection"], {**selection, "schema": "other"})
    with pytest.raises(ExportError, match="field 'schema'"):
        _export(inputs)
    storage.write_json(inputs["selection"], _selection([10]))
    pool = storage.read_json(inputs["pool"])
    storage.write_json(inputs["pool"], {**pool, "categories": [{"id": 5, "name": "house"}]})
    with pytest.raises(ExportError, match=r"field 'categories': model classes \['pool'\]"):
        _export(inputs)
    pool["images"][0]["height"] = 31
    storage.write_json(inputs["pool"], pool)
    with pytest.raises(ExportError, match=r"field 'image_sizes', image 10"):
        _export(inputs)


def test_cli(inputs: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--selection", inputs["selection"], "--instances", inputs["instances"], "--pool-annotations",
            inputs["pool"], "--image-root", inputs["image_root"], "--labelstudio-url-prefix", "/data/local-files/?d=",
            "--labelstudio-regions", "polygons", "--out", inputs["out"], "--no-images"]  # fmt: skip
    assert main(args) == 0
    written = json.loads(capsys.readouterr().out)
    names = zipfile.ZipFile(io.BytesIO(storage.read_bytes(written["cvat_archive"]))).namelist()
    assert names == ["annotations/instances_default.json"]
    tasks = storage.read_json(written["labelstudio_tasks"])
    assert tasks[0]["data"]["image"] == f"/data/local-files/?d=tiles/t{inputs['order'][0]}.png"
    assert "PolygonLabels" in storage.read_text(written["labelstudio_config"])
    assert main([*args[:-1], "--threshold", "0.5", "--selection", storage.join(inputs["out"], "nope.json")]) == 1


def test_gcs_export_fetches_only_the_shards_it_needs(gcs_bucket: str, tmp_path: Path) -> None:
    from taudis.labeling.tasks import fetch_shards_with_images

    _write_shards(tmp_path / "instances")
    storage.upload_tree(tmp_path / "instances", f"{gcs_bucket}/instances")
    fetched = fetch_shards_with_images(f"{gcs_bucket}/instances", {13}, str(tmp_path / "local"))
    assert fetched == [f"{gcs_bucket}/instances/shard-001"]
    assert sorted(p.name for p in (tmp_path / "local").iterdir()) == ["shard-001"]
    # a single shard at the folder itself
    storage.upload_tree(tmp_path / "instances" / "shard-000", f"{gcs_bucket}/one")
    assert fetch_shards_with_images(f"{gcs_bucket}/one", {10}, str(tmp_path / "one")) == [f"{gcs_bucket}/one"]
    assert (tmp_path / "one" / "header.json").is_file()


def test_every_export_reads_back_as_the_predictions(inputs: dict[str, Any], tmp_path: Path) -> None:
    """Labels out -> annotators accept the predictions as they are -> read_labels gives them back.

    The files as taudis wrote them are refused (the model's predictions are no labels); the same
    documents as a tool exports them again, with its own description, read back."""
    from taudis.labeling import read_labels

    written = _export(inputs)
    expected = {i: len(inputs["truth"].get(i, [])) for i in inputs["order"]}
    for key, fmt in (("preannotations", "coco"), ("cvat_archive", "cvat-coco")):
        (refused,) = read_labels(written[key]).problems
        assert "taudis's own pre-annotations" in refused.message
        labels = read_labels(_as_a_tool_exports_it(written[key], tmp_path / f"{key}-{Path(written[key]).name}"))
        assert labels.format == fmt and labels.problems == ()
        assert [image.ref for image in labels.images] == [f"tiles/t{i}.png" for i in inputs["order"]]
        assert [image.tool_id for image in labels.images] == inputs["order"]
        assert all(image.ids_are_pool_ids == (fmt == "coco") for image in labels.images)
        counts = {i: sum(a.image == k for a in labels.annotations) for k, i in enumerate(inputs["order"])}
        assert counts == expected
        for ann in labels.annotations:
            image_id = inputs["order"][ann.image]
            assert ann.category in CLASSES
            assert isinstance(ann.segmentation, dict) and ann.segmentation["size"] == list(SIZES[image_id])


def _as_a_tool_exports_it(uri: str, local: Path) -> str:
    """A copy of a COCO file or a zip of COCO files with the tool's description instead of taudis's."""

    def retold(data: bytes) -> bytes:
        doc = json.loads(data)
        return json.dumps({**doc, "info": {**doc.get("info", {}), "description": ""}}).encode()

    data = storage.read_bytes(uri)
    if not zipfile.is_zipfile(io.BytesIO(data)):
        local.write_bytes(retold(data))
        return str(local)
    with zipfile.ZipFile(io.BytesIO(data)) as source, zipfile.ZipFile(local, "w") as copy:
        for member in source.infolist():
            body = source.read(member)
            copy.writestr(member, retold(body) if member.filename.endswith(".json") else body)
    return str(local)


# ----------------------------------------------------------------- the selection stages' input


def test_gather_shards_links_every_shard_and_refuses_two_of_one_name(tmp_path: Path) -> None:
    from taudis.campaign.steps import gather_shards
    from taudis.data.instances import InstanceTableError

    _write_shards(tmp_path / "a")  # shard-000, shard-001
    _write_shards(tmp_path / "b" / "x")
    gathered = Path(gather_shards([str(tmp_path / "a" / "shard-000"), str(tmp_path / "a" / "shard-001")]))
    assert sorted(p.name for p in gathered.iterdir()) == ["shard-000", "shard-001"]
    assert (gathered / "shard-001").resolve() == (tmp_path / "a" / "shard-001").resolve()
    # Two inference outputs whose shards share a name: linking only the first would drop images.
    with pytest.raises(InstanceTableError, match="same name"):
        gather_shards([str(tmp_path / "a"), str(tmp_path / "b" / "x")])
