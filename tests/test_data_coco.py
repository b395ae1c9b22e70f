"""COCO loading: validation errors name the file and the record; write, subset, detectron2 dicts."""

from __future__ import annotations

import copy
import json
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from taudis.data.coco import (
    CocoFormatError,
    annotation_warnings,
    check_image_files,
    class_names,
    inspect_image_files,
    load_coco,
    subset_coco,
    to_detectron2_dicts,
    unlabelled_categories,
    validate_coco,
    write_coco,
)


def _rle(height: int, width: int) -> dict[str, Any]:
    mask = np.zeros((height, width), np.uint8)
    mask[2:6, 3:9] = 1
    rle = mask_utils.encode(np.asfortranarray(mask))
    return {"size": [height, width], "counts": rle["counts"].decode()}


def _valid() -> dict[str, Any]:
    return {
        "images": [
            {"id": 1, "file_name": "a.png", "height": 10, "width": 12},
            {"id": 2, "file_name": "b.png", "height": 10, "width": 12},
        ],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 3, "bbox": [3, 2, 6, 4], "segmentation": _rle(10, 12)},
            {
                "id": 11,
                "image_id": 2,
                "category_id": 5,
                "bbox": [1, 1, 4, 4],
                "segmentation": [[1, 1, 5, 1, 5, 5, 1, 5]],
            },
        ],
        "categories": [{"id": 5, "name": "tree"}, {"id": 3, "name": "car"}],
    }


def _write(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "labels.json"
    path.write_text(json.dumps(data))
    return path


def test_valid_file_loads(tmp_path: Path) -> None:
    data = load_coco(_write(tmp_path, _valid()))
    assert class_names(data) == ["car", "tree"]


def test_a_dataset_in_a_bucket_loads_and_a_missing_one_is_named(gcs_bucket: str, tmp_path: Path) -> None:
    from taudis import storage

    uri = storage.join(gcs_bucket, "data", "pool.json")
    storage.upload_file(_write(tmp_path, _valid()), uri)
    assert load_coco(uri) == load_coco(_write(tmp_path, _valid()))
    missing = storage.join(gcs_bucket, "data", "nope.json")
    with pytest.raises(CocoFormatError, match=f"{missing}: cannot read"):
        load_coco(missing)


def _set(path: tuple[Any, ...], value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(data: dict[str, Any]) -> None:
        target = data
        for key in path[:-1]:
            target = target[key]
        if value is KeyError:
            del target[path[-1]]
        else:
            target[path[-1]] = value

    return edit


SEG0 = ("annotations", 0, "segmentation")


@pytest.mark.parametrize(
    ("edit", "record", "field", "words"),
    [
        (_set(("annotations", 0, "bbox"), KeyError), "annotation #0", "bbox", "missing key"),
        (_set(("annotations", 1, "image_id"), 99), "annotation id 11", "image_id", "unknown image id 99"),
        (_set(("annotations", 0, "category_id"), 4), "annotation id 10", "category_id", "unknown category id 4"),
        (_set(("annotations", 0, "bbox"), [3, 2, -6, 4]), "annotation id 10", "bbox", "negative"),
        (_set(("annotations", 0, "bbox"), [3, 2, 60, 4]), "annotation id 10", "bbox", "outside the image"),
        (_set(("annotations", 0, "bbox"), [3, 2, 6]), "annotation id 10", "bbox", "[x, y, width, height]"),
        (_set(("annotations", 1, "bbox"), [6, 5, 4, 4]), "annotation id 11", "bbox", "not its mask's"),
        (_set((*SEG0, "size"), [10, 13]), "annotation id 10", "segmentation.size", "differs"),
        (_set((*SEG0, "counts"), 7), "annotation id 10", "segmentation.counts", "string or a list"),
        (_set((*SEG0, "counts"), [5, 3]), "annotation id 10", "segmentation.counts", "runs cover 8 pixels"),
        (_set(("annotations", 1, "segmentation"), [[1, 1, 5, 1, 5]]), "annotation id 11", "segmentation[0]", "needs"),
        (
            _set(("annotations", 1, "segmentation"), []),
            "annotation id 11",
            "segmentation",
            "empty polygon list (a box-only",
        ),
        (
            _set(("annotations", 1, "segmentation"), KeyError),
            "annotation #1",
            "segmentation",
            "missing key (a box-only",
        ),
        (_set(("annotations", 1, "segmentation"), "x"), "annotation id 11", "segmentation", "polygons (list) or RLE"),
        (_set(("annotations", 1, "id"), 10), "annotation id 10 (#1)", "id", "duplicate annotation id 10"),
        (_set(("images", 1, "id"), 1), "image #1", "id", "duplicate image id 1"),
        (_set(("images", 0, "height"), 0), "image id 1", "height", "positive integer"),
        (_set(("images", 0, "width"), 640.0), "image id 1", "width", "got 640.0 (write it as 640"),
        (
            _set(("annotations",), [{"image_id": 1, "file_name": "a.png", "segments_info": []}]),
            "annotation #0",
            "segments_info",
            "a COCO panoptic file",
        ),
        (_set(("categories", 0, "name"), KeyError), "category #0", "name", "missing key"),
        (_set(("categories",), KeyError), None, "categories", "missing"),
        (_set(("images", 1, "file_name"), "./a.png"), "image id 2", "file_name", "also image id 1"),
        (_set(("images", 1, "file_name"), "sub/../a.png"), "image id 2", "file_name", "also image id 1"),
        (_set(("categories", 1, "name"), "tree "), "category id 3", "name", "also category id 5"),
        (_set(("categories", 1, "name"), 7), "category id 3", "name", "non-empty string"),
        (_set(("images", 1, "id"), 2**63), "image #1", "id", "64-bit"),
        (_set(("images", 1, "id"), "2"), "image #1", "id", "must be an integer"),
        (_set(("annotations", 0, "id"), 1.0), "annotation id 1.0", "id", "must be an integer"),
        # References by value: 1.0, True and "3" are no ids, whatever a lookup by value says of them.
        (_set(("annotations", 0, "image_id"), 1.0), "annotation id 10", "image_id", "must be an integer, got 1.0"),
        (_set(("annotations", 0, "image_id"), True), "annotation id 10", "image_id", "must be an integer, got True"),
        (_set(("annotations", 0, "category_id"), "3"), "annotation id 10", "category_id", "must be an integer"),
        (_set(("annotations", 0, "category_id"), 3.0), "annotation id 10", "category_id", "must be an integer"),
        # A crowd flag that crashed the detectron2 dicts or COCOeval, or that no tool writes.
        (_set(("annotations", 0, "iscrowd"), None), "annotation id 10", "iscrowd", "must be 0 or 1"),
        (_set(("annotations", 0, "iscrowd"), "false"), "annotation id 10", "iscrowd", "must be 0 or 1"),
        (_set(("annotations", 0, "iscrowd"), 2), "annotation id 10", "iscrowd", "must be 0 or 1"),
        # COCOeval sorts objects into size ranges by area: a string crashes it, a negative one is never scored.
        (_set(("annotations", 1, "area"), "16"), "annotation id 11", "area", "finite non-negative number"),
        (_set(("annotations", 1, "area"), -1), "annotation id 11", "area", "finite non-negative number"),
        (_set(("annotations", 1, "area"), float("nan")), "annotation id 11", "area", "finite non-negative number"),
        (_set((*SEG0, "size"), [12, 10]), "annotation id 10", "segmentation.size", "as [height, width]"),
    ],
)
def test_validation_errors_name_file_record_and_field(
    tmp_path: Path, edit: Callable[[dict[str, Any]], None], record: str | None, field: str, words: str
) -> None:
    data = copy.deepcopy(_valid())
    edit(data)
    path = _write(tmp_path, data)
    with pytest.raises(CocoFormatError) as caught:
        load_coco(path)
    message = str(caught.value)
    assert str(path) in message and words in message and f"field {field!r}" in message
    if record is not None:
        assert record in message
    assert "unknown" not in message or "unknown" in words


def test_crowd_flags_and_areas_that_tools_write_load() -> None:
    data = _valid()
    for flag in (0, 1, True, False, 0.0):
        data["annotations"][0]["iscrowd"] = flag
        for area in (None, 0, 16.5):
            data["annotations"][1]["area"] = area
            validate_coco(data)
            assert to_detectron2_dicts(data, ".")[0]["annotations"][0]["iscrowd"] == int(flag)
    del data["annotations"][0]["iscrowd"], data["annotations"][1]["area"]
    validate_coco(data)


def test_garbage_rle_counts_are_reported(tmp_path: Path) -> None:
    data = _valid()
    data["annotations"][0]["segmentation"]["counts"] = "\x7f\x7f\x7f garbage"
    with pytest.raises(CocoFormatError, match=r"annotation id 10.*segmentation"):
        load_coco(_write(tmp_path, data))


def test_unreadable_or_non_json_files_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(CocoFormatError, match="cannot read"):
        load_coco(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(CocoFormatError, match=r"bad\.json: not valid JSON"):
        load_coco(bad)


def test_write_subset_round_trip(tmp_path: Path) -> None:
    data = _valid()
    path = write_coco(subset_coco(data, [2]), tmp_path / "out" / "sub.json")
    again = load_coco(path)
    assert [img["id"] for img in again["images"]] == [2]
    assert [ann["id"] for ann in again["annotations"]] == [11]
    assert again["categories"] == data["categories"]
    assert subset_coco(data, [1, 2], keep_annotations=False)["annotations"] == []
    with pytest.raises(KeyError, match="7"):
        subset_coco(data, [7])
    write_coco(data, tmp_path / "x.json")
    first = (tmp_path / "x.json").read_bytes()
    write_coco(data, tmp_path / "x.json")
    assert (tmp_path / "x.json").read_bytes() == first


def test_detectron2_dicts_use_contiguous_classes_in_id_order(tmp_path: Path) -> None:
    dicts = to_detectron2_dicts(_valid(), tmp_path)
    assert [d["file_name"] for d in dicts] == [str(tmp_path / "a.png"), str(tmp_path / "b.png")]
    assert dicts[0]["annotations"][0]["category_id"] == 0  # id 3 = car, the lowest id
    assert dicts[1]["annotations"][0]["category_id"] == 1  # id 5 = tree
    assert dicts[0]["annotations"][0]["bbox_mode"] == 1


def test_register_in_detectron2_catalogs(tmp_path: Path) -> None:
    pytest.importorskip("detectron2")
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from taudis.data.coco import register_coco_dataset

    path = _write(tmp_path, _valid())
    register_coco_dataset("taudis_test_coco", path, tmp_path)
    register_coco_dataset("taudis_test_coco", path, tmp_path)  # re-registering replaces
    assert len(DatasetCatalog.get("taudis_test_coco")) == 2
    meta = MetadataCatalog.get("taudis_test_coco")
    assert meta.thing_classes == ["car", "tree"] and meta.thing_dataset_id_to_contiguous_id == {3: 0, 5: 1}


def test_uncompressed_rle_reaches_detectron2_compressed_with_the_same_mask(tmp_path: Path) -> None:
    # pycocotools' decode, which detectron2's mapper calls, reads compressed counts only.
    data = _valid()
    mask = np.zeros((10, 12), np.uint8)
    mask[2:6, 3:9] = 1
    data["annotations"][0]["segmentation"] = {"size": [10, 12], "counts": _uncompressed_counts(mask)}
    data["annotations"][0]["iscrowd"] = 0
    record = to_detectron2_dicts(load_coco(_write(tmp_path, data)), tmp_path)[0]["annotations"][0]
    assert isinstance(record["segmentation"]["counts"], str)
    np.testing.assert_array_equal(mask_utils.decode(record["segmentation"]), mask)


@pytest.mark.parametrize("suffix", ["jpg", "tif"])  # Pillow turns a TIFF itself while reading it
def test_image_files_are_checked_as_training_reads_them(tmp_path: Path, suffix: str) -> None:
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = 6  # stored 20 wide and 10 high, shown (and trained) 10 wide and 20 high
    Image.fromarray(np.zeros((10, 20, 3), np.uint8)).save(tmp_path / f"r.{suffix}", exif=exif)
    Image.new("1", (13_500, 13_400)).save(tmp_path / "big.png")  # beyond PIL's default bomb limit
    data = {
        "images": [
            {"id": 1, "file_name": f"r.{suffix}", "height": 20, "width": 10},
            {"id": 2, "file_name": "big.png", "height": 13_400, "width": 13_500},
        ],
        "categories": [{"id": 1, "name": "car"}],
    }
    assert check_image_files(data, str(tmp_path)) == []
    data["images"][0].update(height=10, width=20)
    (problem,) = check_image_files(data, str(tmp_path))
    assert "image id 1" in problem and "10x20 after its EXIF rotation" in problem


def test_an_orientation_that_keeps_the_size_is_warned_of(tmp_path: Path) -> None:
    from PIL import Image

    def save(name: str, height: int, width: int, orientation: int | None) -> dict[str, Any]:
        exif = Image.Exif()
        if orientation is not None:
            exif[0x0112] = orientation
        Image.fromarray(np.zeros((height, width, 3), np.uint8)).save(tmp_path / name, exif=exif)
        shown = (width, height) if orientation in (5, 6, 7, 8) else (height, width)
        return {"id": len(images) + 1, "file_name": name, "height": shown[0], "width": shown[1]}

    images: list[dict[str, Any]] = []
    for name, height, width, orientation in [
        ("plain.jpg", 10, 20, None),
        ("upright.jpg", 10, 20, 1),
        ("side.jpg", 10, 20, 6),  # the swapped sides confirm the turn: no warning
        ("upside.jpg", 10, 20, 3),
        ("upside.tif", 10, 20, 3),
        ("square.jpg", 16, 16, 8),
        ("mirror.jpg", 10, 20, 2),
    ]:
        images.append(save(name, height, width, orientation))
    data = {"images": images, "categories": []}
    assert check_image_files(data, str(tmp_path)) == [], "every size is the turned one: valid"
    (warning,) = inspect_image_files(data, str(tmp_path), shown=2).warnings
    assert warning.startswith("4 image(s)") and "EXIF orientation that keeps their size" in warning
    assert "image id 4" in warning and "orientation 3, turned 180 degrees" in warning
    assert "image id 5" in warning and "and 2 more" in warning and "image id 3 " not in warning
    assert inspect_image_files({"images": images[:3], "categories": []}, str(tmp_path)).warnings == []
    missing = {"images": [{"id": 9, "file_name": "gone.jpg", "height": 1, "width": 1}], "categories": []}
    check = inspect_image_files(missing, str(tmp_path))
    assert check.warnings == [] and len(check.problems) == 1 and "image id 9" in check.problems[0], "one problem"


def test_a_stack_of_frames_is_warned_of(tmp_path: Path) -> None:
    from PIL import Image

    frames = [Image.fromarray(np.full((8, 8), 40 * i, np.uint8)) for i in range(3)]
    frames[0].save(tmp_path / "stack.tif", save_all=True, append_images=frames[1:])
    frames[0].save(tmp_path / "one.tif")
    data = {
        "images": [
            {"id": 1, "file_name": "stack.tif", "height": 8, "width": 8},
            {"id": 2, "file_name": "one.tif", "height": 8, "width": 8},
        ],
        "categories": [],
    }
    (warning,) = inspect_image_files(data, str(tmp_path)).warnings
    assert warning.startswith("1 image(s) (image id 1") and "3 frames" in warning and "first frame only" in warning


def test_a_category_no_label_uses_is_warned_of_in_a_labelled_file() -> None:
    data = {
        "images": [{"id": 1, "file_name": "a.png", "height": 8, "width": 8}],
        "categories": [{"id": 0, "name": "buildings-x2f"}, {"id": 1, "name": "building"}, {"id": 2, "name": "road"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 2, 2], "segmentation": []}],
    }
    warnings = unlabelled_categories(data)
    assert len(warnings) == 2
    assert "'buildings-x2f' (id 0)" in warnings[0] and "'road' (id 2)" in warnings[1]
    assert unlabelled_categories({**data, "annotations": []}) == [], "an unlabelled pool is not warned of"


def test_a_file_named_in_another_unicode_form_is_found_and_named(tmp_path: Path) -> None:
    from PIL import Image

    decomposed = unicodedata.normalize("NFD", "café.png")  # as macOS writes it
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / decomposed)
    data = {"images": [{"id": 1, "file_name": "café.png", "height": 4, "width": 4}], "categories": []}
    (problem,) = check_image_files(data, str(tmp_path))
    assert "image id 1" in problem and "another Unicode form" in problem and repr(decomposed) in problem


@pytest.mark.parametrize(
    ("on_disk", "file_name", "why"),
    [
        ("Tile 1.PNG", "tile 1.png", "other letter case"),
        ("tile 1.png", "tile%201.png", "URL-encoded otherwise"),
    ],
)
def test_a_file_named_in_other_case_or_url_encoding_is_named(
    tmp_path: Path, on_disk: str, file_name: str, why: str
) -> None:
    from PIL import Image

    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / on_disk, format="PNG")
    data = {"images": [{"id": 1, "file_name": file_name, "height": 4, "width": 4}], "categories": []}
    (problem,) = check_image_files(data, str(tmp_path))
    assert "image id 1" in problem and why in problem and repr(on_disk) in problem


def test_file_names_that_repeat_the_image_roots_folder_say_so(tmp_path: Path) -> None:
    from PIL import Image

    (tmp_path / "images").mkdir()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "images" / "a.png")
    data = {"images": [{"id": 1, "file_name": "images/a.png", "height": 4, "width": 4}], "categories": []}
    (problem,) = check_image_files(data, str(tmp_path / "images"))
    assert "the image root's own folder 'images/'" in problem and "give the folder above" in problem


def test_a_file_named_by_a_windows_path_gets_the_path_to_write(tmp_path: Path) -> None:
    from PIL import Image

    (tmp_path / "site").mkdir()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "site" / "a.png")
    data = {
        "images": [
            {"id": 1, "file_name": "site\\a.png", "height": 4, "width": 4},
            {"id": 2, "file_name": "D:\\data\\site\\a.png", "height": 4, "width": 4},
        ],
        "categories": [],
    }
    relative, absolute = check_image_files(data, str(tmp_path))
    assert "image id 1" in relative and "Windows separators: write 'site/a.png'" in relative
    assert "image id 2" in absolute and "absolute Windows path" in absolute


def test_file_names_in_two_unicode_forms_are_one_file() -> None:
    data = _valid()
    data["images"][0]["file_name"] = unicodedata.normalize("NFC", "é.png")
    data["images"][1]["file_name"] = unicodedata.normalize("NFD", "é.png")
    with pytest.raises(CocoFormatError, match="also image id 1"):
        validate_coco(data)


def _uncompressed(segmentation: dict[str, Any]) -> dict[str, Any]:
    """A compressed RLE as CVAT's COCO 1.0 export writes every mask: uncompressed counts."""
    mask = mask_utils.decode({"size": segmentation["size"], "counts": segmentation["counts"].encode()})
    return {"size": segmentation["size"], "counts": _uncompressed_counts(mask)}


def _uncompressed_counts(mask: np.ndarray) -> list[int]:
    """COCO's uncompressed RLE counts of a mask: alternating runs of 0 and 1, column-major, from 0."""
    counts, value, run = [], 0, 0
    for pixel in mask.flatten(order="F"):
        if pixel != value:
            counts.append(run)
            value, run = pixel, 0
        run += 1
    return [int(c) for c in [*counts, run]]


def test_crowd_annotations_are_warned_of_as_neither_trained_on_nor_scored(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from taudis.data.cli import main

    data = _valid()
    assert annotation_warnings(data) == []
    data["annotations"][0].update(segmentation=_uncompressed(data["annotations"][0]["segmentation"]), iscrowd=1)
    (warning,) = annotation_warnings(data)
    assert warning.startswith("1 of 2 annotation(s) are iscrowd=1") and "neither trained on" in warning
    assert "nor scored" in warning and "CVAT's COCO export marks every mask so: set iscrowd 0" in warning
    data["annotations"][1]["iscrowd"] = True
    assert main(["check", "--annotations", str(_write(tmp_path, data))]) == 0, "a warning, not a problem"
    out, err = capsys.readouterr()
    assert "taudis data check: warning: 2 of 2 annotation(s) are iscrowd=1" in err
    assert json.loads(out)["warnings"] == annotation_warnings(data)


def test_empty_masks_are_counted_and_the_first_named() -> None:
    data = _valid()
    data["images"].append({"id": 3, "file_name": "c.png", "height": 10, "width": 12})
    empty = {"size": [10, 12], "counts": [120]}
    compressed = mask_utils.encode(np.zeros((10, 12), np.uint8, order="F"))["counts"].decode()
    data["annotations"] += [
        {"id": 12, "image_id": 2, "category_id": 5, "bbox": [1, 1, 4, 0], "segmentation": [[1, 1, 3, 1, 5, 1]]},
        {"id": 13, "image_id": 3, "category_id": 5, "bbox": [1, 1, 4, 4], "segmentation": empty},
        {
            "id": 14,
            "image_id": 3,
            "category_id": 3,
            "bbox": [0, 0, 0, 0],
            "segmentation": {**empty, "counts": compressed},
        },
    ]
    validate_coco(data)  # valid COCO, and pycocotools reads it: no object all the same
    (warning,) = annotation_warnings(data, shown=2)
    assert warning.startswith("3 annotation(s) (annotation id 12 (#2); annotation id 13 (#3) and 1 more)")
    assert "empty mask (area 0" in warning and "no prediction can find" in warning


def test_coordinates_in_fractions_of_the_image_size_are_warned_of() -> None:
    polygon = [0.15, 0.2, 0.45, 0.2, 0.45, 0.6, 0.15, 0.6]
    data = {
        "images": [{"id": 1, "file_name": "a.png", "height": 48, "width": 64}],
        "annotations": [
            {"id": n, "image_id": 1, "category_id": 1, "bbox": [0.15, 0.2, 0.3, 0.4], "segmentation": [polygon]}
            for n in (1, 2)
        ],
        "categories": [{"id": 1, "name": "house"}],
    }
    validate_coco(data)  # boxes and masks agree: nothing but their scale is wrong
    normalised = [w for w in annotation_warnings(data) if "fractions of the image size" in w]
    assert len(normalised) == 1 and "within [0, 1.5]" in normalised[0] and "48 px" in normalised[0]
    data["annotations"][1].update(bbox=[10, 10, 20, 20], segmentation=[[10, 10, 30, 10, 30, 30, 10, 30]])
    assert not [w for w in annotation_warnings(data) if "fractions" in w], "one small object is no converter's"
    tiny = {**data, "images": [{"id": 1, "file_name": "a.png", "height": 2, "width": 2}]}
    tiny["annotations"] = data["annotations"][:1]
    assert not [w for w in annotation_warnings(tiny) if "fractions" in w], "on a 2 px image, pixels are as small"


def test_a_missing_image_root_is_one_problem(tmp_path: Path) -> None:
    root = tmp_path / "nope"
    (problem,) = check_image_files(_valid(), str(root))
    assert problem == f"image root {root} does not exist (or is not a directory)"
