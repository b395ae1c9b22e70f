"""Tier 6: the CVAT COCO 1.0 archive as CVAT reads it (datumaro 1.13, its COCO importer), and CVAT's export back.

CVAT imports and exports COCO through datumaro (``coco_instances``); the CVAT server itself needs
Docker, which these machines lack. datumaro pins its own pandas and Pillow, so it runs in its own
cached venv (tests/tool_venv.py; about 1 minute and 600 MB the first time). Required when
CI=true; elsewhere it runs when datumaro can be installed and says why it skips when not
(TAUDIS_DATUMARO=skip skips it on purpose outside CI).

1. datumaro imports the archive: every image, pixel for pixel, and every mask, pixel for pixel,
   with its label, as the export sent them.
2. The export CVAT would write from those annotations (datumaro's ``coco_instances`` exporter as
   CVAT calls it: masks without an ``is_crowd`` attribute, ``merge_images=False``) reads back
   through read_labels as ``cvat-coco`` with the same masks; so does datumaro's "CVAT for images
   1.1" XML export of them, as ``cvat-xml``.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from taudis.data.masks import decode_rle, encode_rle
from taudis.labeling import read_labels
from tests import tool_venv
from tests.labeling_round import CHOSEN, Round, make_round

pytestmark = pytest.mark.labeltools

VENV = "datumaro-1.13"
REQUIREMENTS = ("datumaro==1.13.12",)

IMPORT_AND_EXPORT = """
import json, sys
import numpy as np
import datumaro as dm

source, out = sys.argv[1], sys.argv[2]
dataset = dm.Dataset.import_from(source, "coco_instances")
names = [c.name for c in dataset.categories()[dm.AnnotationType.label]]
arrays, items = {}, []
for k, item in enumerate(sorted(dataset, key=lambda i: i.id)):
    masks = [a for a in item.annotations if a.type == dm.AnnotationType.mask]
    arrays[f"image{k}"] = np.asarray(item.media.data)
    for m, mask in enumerate(masks):
        arrays[f"mask{k}_{m}"] = np.asarray(mask.image, dtype=bool)
    items.append({"id": item.id, "subset": item.subset, "size": list(item.media.size),
                  "labels": [names[mask.label] for mask in masks],
                  "instances": [mask.attributes.get("instance") for mask in masks]})
    # CVAT keeps no is_crowd attribute on its mask shapes
    for mask in masks:
        mask.attributes.pop("is_crowd", None)
np.savez(out + "/arrays.npz", **arrays)
(dataset.export(out + "/cvat", "coco_instances", save_media=False, merge_images=False))
dataset.export(out + "/cvat-xml", "cvat", save_media=False)  # "CVAT for images 1.1"
print(json.dumps(items))
"""


def _required() -> bool:
    return os.environ.get("CI", "").lower() == "true"


@pytest.fixture(scope="module")
def datumaro_python() -> Iterator[str]:
    if os.environ.get("TAUDIS_DATUMARO") == "skip" and not _required():
        pytest.skip("TAUDIS_DATUMARO=skip: the datumaro tier was skipped on purpose")
    try:
        venv = tool_venv.ensure_venv(VENV, REQUIREMENTS)
    except tool_venv.InstallError as err:
        if _required():
            pytest.fail(f"CI=true and {REQUIREMENTS[0]} could not be installed: {err}")
        pytest.skip(f"{REQUIREMENTS[0]} could not be installed here ({err}); CI=true requires it")
    yield str(venv / "bin" / "python")


@pytest.fixture(scope="module")
def imported(datumaro_python: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Round, list, dict, Path]:
    root = tmp_path_factory.mktemp("cvat")
    round_ = make_round(root, root / "documents", url_prefix=None)
    archive = root / "archive"
    zipfile.ZipFile(round_.written["cvat_archive"]).extractall(archive)
    out = root / "datumaro"
    out.mkdir()
    done = subprocess.run(
        [datumaro_python, "-c", IMPORT_AND_EXPORT, str(archive), str(out)], capture_output=True, timeout=300
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-3000:]
    items = json.loads(done.stdout.decode().strip().splitlines()[-1])
    arrays = dict(np.load(out / "arrays.npz"))
    return round_, items, arrays, out


def test_datumaro_imports_every_image_and_mask_exactly(imported: tuple[Round, list, dict, Path]) -> None:
    round_, items, arrays, _ = imported
    assert sorted(item["id"] for item in items) == sorted(round_.file_name(i)[: -len(".png")] for i in CHOSEN)
    by_id = {round_.file_name(i)[: -len(".png")]: i for i in CHOSEN}
    masks_seen = 0
    for k, item in enumerate(items):
        image_id = by_id[item["id"]]
        assert item["subset"] == "default" and item["size"] == [256, 256]
        pixels = np.asarray(Image.open(round_.image_root / round_.file_name(image_id)).convert("RGB"))
        read = arrays[f"image{k}"]
        assert np.array_equal(read[..., ::-1].astype(np.uint8), pixels)  # datumaro reads BGR (OpenCV)
        sent = round_.sent[image_id]
        assert sorted(item["instances"]) == list(range(len(sent)))  # the export's instance attribute
        for m, instance in enumerate(item["instances"]):
            category, mask = sent[instance]
            assert item["labels"][m] == category
            assert np.array_equal(arrays[f"mask{k}_{m}"], mask), (item["id"], instance)
            masks_seen += 1
    assert masks_seen == sum(len(v) for v in round_.sent.values())
    print(f"\ndatumaro: {len(items)} images, {masks_seen} masks, all identical")


def test_cvat_export_reads_back_with_the_same_masks(imported: tuple[Round, list, dict, Path]) -> None:
    round_, _, _, out = imported
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted((out / "cvat").rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(out / "cvat").as_posix())
    export = out / "cvat-export.zip"
    export.write_bytes(buffer.getvalue())
    if os.environ.get("TAUDIS_CAPTURE_FIXTURES"):
        folder = Path(os.environ["TAUDIS_CAPTURE_FIXTURES"])
        (folder / "cvat-coco.zip").write_bytes(buffer.getvalue())
        sent = {str(i): [[c, encode_rle(m)] for c, m in round_.sent[i]] for i in CHOSEN}
        (folder / "sent-cvat.json").write_text(json.dumps(sent))
    doc = json.loads(zipfile.ZipFile(export).read("annotations/instances_default.json"))
    assert {a["iscrowd"] for a in doc["annotations"]} == {1}  # how datumaro writes CVAT's masks
    labels = read_labels(str(export))
    assert labels.format == "cvat-coco" and labels.problems == ()
    assert sorted(im.ref for im in labels.images) == sorted(round_.file_name(i) for i in CHOSEN)
    for position, image in enumerate(labels.images):
        image_id = next(i for i in CHOSEN if round_.file_name(i) == image.ref)
        got = [a for a in labels.annotations if a.image == position]
        assert all(a.iscrowd == 0 and isinstance(a.segmentation, dict) for a in got)
        # same masks with the same categories, whatever the order CVAT lists them in
        back = sorted((a.category, decode_rle(a.segmentation).tobytes()) for a in got)  # type: ignore[arg-type]
        assert back == sorted((c, mask.tobytes()) for c, mask in round_.sent[image_id])


def test_cvat_for_images_xml_export_reads_back_with_the_same_masks(imported: tuple[Round, list, dict, Path]) -> None:
    round_, _, _, out = imported
    (xml,) = sorted((out / "cvat-xml").rglob("*.xml"))
    labels = read_labels(str(xml))
    assert labels.format == "cvat-xml" and labels.problems == ()
    assert sorted(im.ref for im in labels.images) == sorted(round_.file_name(i) for i in CHOSEN)
    for position, image in enumerate(labels.images):
        image_id = next(i for i in CHOSEN if round_.file_name(i) == image.ref)
        back = sorted(
            (a.category, decode_rle(a.segmentation).tobytes()) for a in labels.annotations if a.image == position
        )  # type: ignore[arg-type]
        assert back == sorted((c, mask.tobytes()) for c, mask in round_.sent[image_id])


GROUPED = """
import sys
import numpy as np
import datumaro as dm
from datumaro.components.annotation import Mask, Polygon
from datumaro.components.media import Image

out = sys.argv[1]
labels = dm.LabelCategories.from_iterable(["car", "tree"])
mask = np.zeros((30, 40), np.uint8)
mask[2:8, 2:8] = 1
shapes = {  # one object in parts: CVAT gives its shapes one group id
    "polygons": [Polygon([2, 2, 10, 2, 10, 10, 2, 10], label=0, group=5),
                 Polygon([20, 15, 30, 15, 30, 25, 20, 25], label=0, group=5, z_order=1)],
    "mask-and-polygon": [Mask(mask, label=1, group=3), Polygon([20, 15, 30, 15, 30, 25, 20, 25], label=1, group=3)],
}
items = [dm.DatasetItem(id=name, subset="default", media=Image.from_numpy(np.zeros((30, 40, 3), np.uint8), ext=".png"),
                        annotations=anns) for name, anns in shapes.items()]
dataset = dm.Dataset.from_iterable(items, categories={dm.AnnotationType.label: labels})
dataset.export(out + "/coco", "coco_instances", save_media=False, merge_images=False)
dataset.export(out + "/xml", "cvat", save_media=False)
"""


def test_grouped_shapes_are_one_instance_in_both_cvat_exports(datumaro_python: str, tmp_path: Path) -> None:
    """CVAT's COCO export merges a group's polygons and masks into one instance: its XML export reads the same."""
    done = subprocess.run([datumaro_python, "-c", GROUPED, str(tmp_path)], capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-3000:]
    (coco,) = sorted((tmp_path / "coco").rglob("instances_*.json"))
    (xml,) = sorted((tmp_path / "xml").rglob("*.xml"))
    instances = {}
    for path in (coco, xml):
        labels = read_labels(str(path))
        assert labels.problems == (), path
        instances[path] = sorted(
            (labels.images[a.image].ref, a.category, _pixels(a.segmentation, 30, 40).tobytes())
            for a in labels.annotations
        )
    assert [(ref, category) for ref, category, _ in instances[xml]] == [
        ("mask-and-polygon.png", "tree"),
        ("polygons.png", "car"),
    ]
    assert instances[xml] == instances[coco]


def _pixels(segmentation: Any, height: int, width: int) -> np.ndarray:
    if isinstance(segmentation, list):
        return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))).astype(bool)
    return decode_rle(segmentation)


CROWD = """
import sys
import numpy as np
import datumaro as dm
from datumaro.components.annotation import Mask, Polygon
from datumaro.components.media import Image

labels = dm.LabelCategories(attributes={"is_crowd"})
labels.add("cell")
region = np.zeros((30, 40), np.uint8)
region[10:20, 5:25] = 1
shapes = [  # what an annotator marks with the label's is_crowd attribute: a crowd, not one object
    Polygon([2, 2, 10, 2, 10, 10, 2, 10], label=0),
    Mask(region, label=0, attributes={"is_crowd": True}),
    Polygon([30, 2, 38, 2, 38, 8, 30, 8], label=0, attributes={"is_crowd": False}),
    Polygon([30, 20, 38, 20, 38, 28, 30, 28], label=0, group=2, attributes={"is_crowd": True}),
    Polygon([20, 22, 26, 22, 26, 28, 20, 28], label=0, group=2),
]
item = dm.DatasetItem(id="field", subset="default", media=Image.from_numpy(np.zeros((30, 40, 3), np.uint8), ext=".png"),
                      annotations=shapes)
dataset = dm.Dataset.from_iterable([item], categories={dm.AnnotationType.label: labels})
dataset.export(sys.argv[1], "cvat", save_media=False)
"""


def test_a_shape_marked_is_crowd_in_cvat_xml_is_a_crowd_region(datumaro_python: str, tmp_path: Path) -> None:
    done = subprocess.run([datumaro_python, "-c", CROWD, str(tmp_path)], capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-3000:]
    (xml,) = sorted(tmp_path.rglob("*.xml"))
    labels = read_labels(str(xml))
    assert labels.format == "cvat-xml" and labels.problems == ()
    # in shape order: the plain polygon, the crowd mask, the polygon marked false, the group with a crowd part
    assert [a.iscrowd for a in labels.annotations] == [0, 1, 0, 1]
    crowd = labels.annotations[1]
    assert _pixels(crowd.segmentation, 30, 40).sum() == 200  # the region itself, where it was drawn
