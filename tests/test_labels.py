"""Labels in: validation rules, merge into the labelled dataset, ledger update, idempotence, oracle."""

from __future__ import annotations

import copy
import json
from typing import Any

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from taudis import storage
from taudis.data.masks import encode_rle
from taudis.storage import labels as labels_mod
from taudis.storage.labels import (
    LabelValidationError,
    decode_counts_string,
    ingest_labels,
    main,
    reveal_oracle_labels,
)
from taudis.storage.ledger import create_ledger, read_ledger, record_round

H, W = 20, 30
CATEGORIES = [{"id": 1, "name": "house"}, {"id": 2, "name": "pool"}]


def _square_rle(x0: int, y0: int, size: int) -> dict[str, Any]:
    mask = np.zeros((H, W), dtype=bool)
    mask[y0 : y0 + size, x0 : x0 + size] = True
    return encode_rle(mask)


def _pool() -> dict[str, Any]:
    images = [{"id": i, "file_name": f"img_{i}.png", "height": H, "width": W} for i in range(1, 7)]
    annotations = []
    for i in range(1, 7):
        annotations.append(
            {"id": 100 + i, "image_id": i, "category_id": 1, "segmentation": [[2, 2, 10, 2, 10, 9, 2, 9]],
             "area": 56.0, "bbox": [2, 2, 8, 7], "iscrowd": 0}
        )  # fmt: skip
        annotations.append(
            {"id": 200 + i, "image_id": i, "category_id": 2, "segmentation": _square_rle(15, 5, 4),
             "area": 16.0, "bbox": [15, 5, 4, 4], "iscrowd": 0}
        )  # fmt: skip
    return {"images": images, "annotations": annotations, "categories": CATEGORIES}


def _labels(image_ids: list[int]) -> dict[str, Any]:
    pool = _pool()
    return {
        "images": [im for im in pool["images"] if im["id"] in image_ids],
        "annotations": [
            {k: v for k, v in a.items() if k not in ("area", "bbox")}
            for a in pool["annotations"]
            if a["image_id"] in image_ids
        ],
        "categories": CATEGORIES,
    }


@pytest.fixture
def campaign(storage_root: str) -> dict[str, str]:
    ledger = storage.join(storage_root, "ledger.json")
    create_ledger(ledger, range(1, 7), labelled_ids=[6])
    record_round(ledger, 1, "random", {}, [1, 2, 3])
    return {"root": storage_root, "ledger": ledger, "dataset": storage.join(storage_root, "labelled.json")}


def _write(campaign: dict[str, str], name: str, doc: Any) -> str:
    uri = storage.join(campaign["root"], name)
    storage.write_json(uri, doc)
    return uri


def test_ingest_merges_and_marks_labelled_once(campaign: dict[str, str]) -> None:
    first = _write(campaign, "labels-a.json", _labels([1, 2]))
    summary = ingest_labels(first, campaign["ledger"], campaign["dataset"])
    assert summary["images"] == 2 and summary["annotations"] == 4 and not summary["already_applied"]
    ledger = read_ledger(campaign["ledger"])
    assert ledger.labelled == {1, 2, 6} and ledger.pending == {3}
    dataset = storage.read_json(campaign["dataset"])
    assert [im["id"] for im in dataset["images"]] == [1, 2]
    assert dataset["categories"] == CATEGORIES
    # bbox and area were computed from the masks
    house = next(a for a in dataset["annotations"] if a["image_id"] == 1 and a["category_id"] == 1)
    assert house["bbox"] == [2.0, 2.0, 8.0, 7.0] and house["area"] > 0
    before = storage.read_bytes(campaign["dataset"])
    again = ingest_labels(first, campaign["ledger"], campaign["dataset"])
    assert again["already_applied"] and storage.read_bytes(campaign["dataset"]) == before
    assert read_ledger(campaign["ledger"]).revision == ledger.revision
    second = _write(campaign, "labels-b.json", _labels([3]))
    ingest_labels(second, campaign["ledger"], campaign["dataset"])
    dataset = storage.read_json(campaign["dataset"])
    ids = [a["id"] for a in dataset["annotations"]]
    assert len(ids) == 6 and len(set(ids)) == 6  # renumbered: the annotators reused ids 101, 201...
    assert read_ledger(campaign["ledger"]).labelled == {1, 2, 3, 6}
    # the merged dataset loads in pycocotools
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = dataset
    coco.createIndex()
    assert int(coco.annToMask(coco.loadAnns(coco.getAnnIds(imgIds=[1], catIds=[2]))[0]).sum()) == 16


def test_crash_between_dataset_and_ledger_is_finished_by_retry(
    campaign: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = _write(campaign, "labels.json", _labels([1]))

    def crash(*args: Any, **kwargs: Any) -> Any:
        raise ConnectionError("died before the ledger update")

    with monkeypatch.context() as patched:
        patched.setattr(labels_mod, "mark_labelled", crash)
        with pytest.raises(ConnectionError):
            ingest_labels(uri, campaign["ledger"], campaign["dataset"])
    assert read_ledger(campaign["ledger"]).pending == {1, 2, 3}  # dataset written, ledger not yet
    ingest_labels(uri, campaign["ledger"], campaign["dataset"])
    dataset = storage.read_json(campaign["dataset"])
    assert [im["id"] for im in dataset["images"]] == [1] and len(dataset["annotations"]) == 2  # not twice
    assert read_ledger(campaign["ledger"]).labelled == {1, 6}


def _bad(mutate: Any) -> dict[str, Any]:
    doc = _labels([1, 2])
    mutate(doc)
    return doc


def _set_ann(index: int, **fields: Any) -> Any:
    def mutate(doc: dict[str, Any]) -> None:
        doc["annotations"][index].update(fields)

    return mutate


BAD_CASES = {
    "unknown image in annotation": (
        _set_ann(1, image_id=99), "annotation id 201 (index 1)", "image_id", "unknown image",
    ),
    "image not in pool": (
        lambda d: d["images"].append({"id": 42, "file_name": "x.png", "height": H, "width": W}),
        "image id 42 (index 2)", "id", "unknown image",
    ),
    "image not pending": (
        lambda d: d["images"].append({"id": 5, "file_name": "img_5.png", "height": H, "width": W}),
        "image id 5 (index 2)", "id", "not pending",
    ),
    "image already labelled": (
        lambda d: d["images"].append({"id": 6, "file_name": "img_6.png", "height": H, "width": W}),
        "image id 6 (index 2)", "id", "not pending: it is labelled",
    ),
    "unknown category": (_set_ann(2, category_id=7), "annotation id 102 (index 2)", "category_id", "unknown category"),
    "malformed RLE character": (
        _set_ann(1, segmentation={"size": [H, W], "counts": "ab\x01"}),
        "annotation id 201 (index 1)", "segmentation.counts", "malformed compressed RLE",
    ),
    "malformed RLE runs": (
        _set_ann(1, segmentation={"size": [H, W], "counts": [10, 5]}),
        "annotation id 201 (index 1)", "segmentation.counts", "runs cover 15 pixels",
    ),
    "RLE outside the image": (
        _set_ann(1, segmentation=_square_rle(0, 0, 3) | {"size": [H + 5, W]}),
        "annotation id 201 (index 1)", "segmentation.size", "outside the image",
    ),
    "malformed polygon": (
        _set_ann(0, segmentation=[[1, 2, 3, 4, 5]]),
        "annotation id 101 (index 0)", "segmentation[0]", "even number",
    ),
    "polygon outside the image": (
        _set_ann(0, segmentation=[[2, 2, 40, 2, 40, 9, 2, 9]]),
        "annotation id 101 (index 0)", "segmentation[0]", "x outside the image",
    ),
    "box outside the image": (
        _set_ann(0, bbox=[25, 2, 10, 5]), "annotation id 101 (index 0)", "bbox", "outside the image",
    ),
    "duplicate annotation id": (_set_ann(3, id=101), "annotation id 101 (index 3)", "id", "duplicate annotation id"),
    "duplicate annotation": (
        lambda d: d["annotations"].append(dict(copy.deepcopy(d["annotations"][1]), id=999)),
        "annotation id 999 (index 4)", "segmentation", "duplicate annotation",
    ),
    "empty mask": (
        _set_ann(1, segmentation=encode_rle(np.zeros((H, W), dtype=bool))),
        "annotation id 201 (index 1)", "segmentation", "empty",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_labels_name_file_record_field_and_change_nothing(campaign: dict[str, str], case: str) -> None:
    mutate, record, field, message = BAD_CASES[case]
    # a first good ingest so that a dataset exists and must stay unchanged too
    ingest_labels(_write(campaign, "good.json", _labels([3])), campaign["ledger"], campaign["dataset"])
    dataset_before = storage.read_bytes(campaign["dataset"])
    ledger_before = storage.read_bytes(campaign["ledger"])
    uri = _write(campaign, "bad-labels.json", _bad(mutate))
    with pytest.raises(LabelValidationError) as err:
        ingest_labels(uri, campaign["ledger"], campaign["dataset"])
    problems = [p for p in err.value.problems if p.record == record and p.field == field]
    assert problems, f"no problem for {record} / {field} in:\n{err.value}"
    assert message in problems[0].message
    text = str(err.value)
    assert uri in text and record in text and repr(field) in text
    assert storage.read_bytes(campaign["dataset"]) == dataset_before
    assert storage.read_bytes(campaign["ledger"]) == ledger_before


def test_bad_labels_before_any_dataset_leave_no_dataset(campaign: dict[str, str]) -> None:
    uri = _write(campaign, "bad.json", _bad(_set_ann(0, category_id=9)))
    with pytest.raises(LabelValidationError, match="category_id"):
        ingest_labels(uri, campaign["ledger"], campaign["dataset"])
    assert not storage.exists(campaign["dataset"])


def test_not_json_is_a_validation_error(campaign: dict[str, str]) -> None:
    uri = storage.join(campaign["root"], "broken.json")
    storage.write_bytes(uri, b"{oops")
    with pytest.raises(LabelValidationError, match="not valid JSON"):
        ingest_labels(uri, campaign["ledger"], campaign["dataset"])


def test_oracle_reveals_pending_ground_truth(campaign: dict[str, str]) -> None:
    pool_uri = _write(campaign, "pool.json", _pool())
    summary = reveal_oracle_labels(pool_uri, None, campaign["ledger"], campaign["dataset"])
    assert summary["images"] == 3 and summary["annotations"] == 6
    ledger = read_ledger(campaign["ledger"])
    assert ledger.labelled == {1, 2, 3, 6} and ledger.pending == frozenset()
    dataset = storage.read_json(campaign["dataset"])
    assert sorted(im["id"] for im in dataset["images"]) == [1, 2, 3]
    assert reveal_oracle_labels(pool_uri, [1, 2, 3], campaign["ledger"], campaign["dataset"])["already_applied"]


def test_counts_string_decoder_matches_pycocotools() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        mask = rng.random((17, 23)) < rng.uniform(0.05, 0.95)
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        runs = decode_counts_string(rle["counts"].decode("ascii"))
        flat = np.repeat(np.arange(len(runs)) % 2, runs).astype(bool)
        assert np.array_equal(flat.reshape(23, 17).T, mask)
    with pytest.raises(ValueError, match="ends inside a count"):
        decode_counts_string("o")  # 'o' = 63: continuation bit set, then nothing


def test_cli(campaign: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    bad = _write(campaign, "bad.json", _bad(_set_ann(0, category_id=9)))
    assert main([bad, "--ledger", campaign["ledger"], "--dataset", campaign["dataset"]]) == 1
    assert "category_id" in capsys.readouterr().err
    good = _write(campaign, "good.json", _labels([1]))
    assert main([good, "--ledger", campaign["ledger"], "--dataset", campaign["dataset"]]) == 0
    assert json.loads(capsys.readouterr().out)["images"] == 1
    pool_uri = _write(campaign, "pool.json", _pool())
    assert main(["--oracle", pool_uri, "--images", "2,3", "--ledger", campaign["ledger"], "--dataset",
                 campaign["dataset"]]) == 0  # fmt: skip
    assert read_ledger(campaign["ledger"]).labelled == {1, 2, 3, 6}


def test_categories_from_the_pool_before_the_dataset_exists(campaign: dict[str, str]) -> None:
    pool_uri = _write(campaign, "pool.json", _pool())
    renamed = _labels([1])
    renamed["categories"] = [{"id": 1, "name": "shed"}, {"id": 2, "name": "pool"}]
    uri = _write(campaign, "renamed.json", renamed)
    with pytest.raises(LabelValidationError) as err:
        ingest_labels(uri, campaign["ledger"], campaign["dataset"], pool_uri=pool_uri)
    assert err.value.problems[0].record == "category id 1 (index 0)" and err.value.problems[0].field == "name"
    no_categories = {k: v for k, v in _labels([1]).items() if k != "categories"}
    uri = _write(campaign, "bare.json", no_categories)
    ingest_labels(uri, campaign["ledger"], campaign["dataset"], pool_uri=pool_uri)
    assert storage.read_json(campaign["dataset"])["categories"] == CATEGORIES


def test_pool_image_records_replace_the_annotators_file_names(campaign: dict[str, str]) -> None:
    pool_uri = _write(campaign, "pool.json", _pool())
    exported = _labels([1, 2])
    exported["images"][0]["file_name"] = "task-17/img_1.png"  # annotation tools rewrite paths
    uri = _write(campaign, "exported.json", exported)
    ingest_labels(uri, campaign["ledger"], campaign["dataset"], pool_uri=pool_uri)
    images = {im["id"]: im for im in storage.read_json(campaign["dataset"])["images"]}
    assert images[1]["file_name"] == "img_1.png" and images[2]["file_name"] == "img_2.png"


def test_an_image_of_another_size_than_the_pools_is_refused(campaign: dict[str, str]) -> None:
    pool_uri = _write(campaign, "pool.json", _pool())
    resized = _labels([1])
    resized["images"][0]["width"] = W * 2
    uri = _write(campaign, "resized.json", resized)
    before = storage.read_bytes(campaign["ledger"])
    with pytest.raises(LabelValidationError) as err:
        ingest_labels(uri, campaign["ledger"], campaign["dataset"], pool_uri=pool_uri)
    (problem,) = [p for p in err.value.problems if p.field == "width"]
    assert problem.file == uri and problem.record == "image id 1 (index 0)"
    assert f"{W * 2} here but {W} in the pool" in problem.message
    assert storage.read_bytes(campaign["ledger"]) == before
    assert not storage.exists(campaign["dataset"])


# ------------------------------------------------------------ the round's labelling step (no KFP)


def _prepare(root: str, tmp_path: Any, pool_uri: str, seed_uri: str) -> tuple[int, dict[str, Any], dict[str, Any]]:
    from taudis.campaign import prepare_round

    out = tmp_path / "out"
    index = prepare_round(
        storage.join(root, "c"), pool_uri, seed_uri, str(out / "labelled.json"), str(out / "unlabelled.json"),
        oracle=False,
    )  # fmt: skip
    return index, json.loads((out / "labelled.json").read_text()), json.loads((out / "unlabelled.json").read_text())


def _ids(coco: dict[str, Any]) -> list[int]:
    return sorted(im["id"] for im in coco["images"])


def test_prepare_round_ingests_incoming_once_and_only_its_own_files(storage_root: str, tmp_path: Any) -> None:
    from taudis.campaign import Campaign

    campaign = Campaign(storage.join(storage_root, "c"))
    pool_uri = storage.join(storage_root, "pool.json")
    storage.write_json(pool_uri, _pool())
    seed_uri = storage.join(storage_root, "seed.json")
    storage.write_json(seed_uri, _labels([6]))
    # Files that are not <campaign>/incoming/*.json: a sibling folder and a subfolder of incoming.
    storage.write_json(storage.join(campaign.uri, "incoming-old", "old.json"), _labels([4]))
    index, labelled, unlabelled = _prepare(storage_root, tmp_path, pool_uri, seed_uri)
    assert index == 0 and _ids(labelled) == [6] and _ids(unlabelled) == [1, 2, 3, 4, 5]
    record_round(campaign.ledger, 0, "random", {}, [1, 2, 3, 4])  # what finish_round does
    storage.write_json(storage.join(campaign.incoming, "batch-a.json"), _labels([1, 2]))
    storage.write_json(storage.join(campaign.incoming, "rejected", "bad.json"), _labels([3]))
    index, labelled, unlabelled = _prepare(storage_root, tmp_path, pool_uri, seed_uri)
    assert index == 1 and _ids(labelled) == [1, 2, 6] and _ids(unlabelled) == [5]
    ledger = read_ledger(campaign.ledger)
    assert ledger.labelled == {1, 2, 6} and ledger.pending == {3, 4}
    # A retried (or the next) labelling step finds the same file again and applies nothing.
    assert _prepare(storage_root, tmp_path, pool_uri, seed_uri)[:2] == (1, labelled)
    assert read_ledger(campaign.ledger).revision == ledger.revision


def test_prepare_round_leaves_out_pool_images_the_ledger_does_not_know(
    storage_root: str, tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    pool_uri = storage.join(storage_root, "pool.json")
    storage.write_json(pool_uri, _pool())
    seed_uri = storage.join(storage_root, "seed.json")
    storage.write_json(seed_uri, _labels([6]))
    _prepare(storage_root, tmp_path, pool_uri, seed_uri)
    grown = _pool()
    grown["images"].append({"id": 7, "file_name": "img_7.png", "height": H, "width": W})
    storage.write_json(pool_uri, grown)  # the pool grew after the campaign was created
    with caplog.at_level("WARNING", logger="taudis"):
        index, _, unlabelled = _prepare(storage_root, tmp_path, pool_uri, seed_uri)
    # Image 7 is not in the ledger's pool: choosing it would make record_round refuse the round.
    assert index == 0 and _ids(unlabelled) == [1, 2, 3, 4, 5]
    assert "[7]" in caplog.text and "not in the pool" in caplog.text


def test_prepare_round_refuses_a_bad_incoming_file_naming_it(storage_root: str, tmp_path: Any) -> None:
    from taudis.campaign import Campaign

    campaign = Campaign(storage.join(storage_root, "c"))
    pool_uri = storage.join(storage_root, "pool.json")
    storage.write_json(pool_uri, _pool())
    seed_uri = storage.join(storage_root, "seed.json")
    storage.write_json(seed_uri, _labels([6]))
    _prepare(storage_root, tmp_path, pool_uri, seed_uri)
    record_round(campaign.ledger, 0, "random", {}, [1])
    bad = storage.join(campaign.incoming, "bad.json")
    storage.write_json(bad, _labels([2]))  # image 2 was never sent to annotators
    before = storage.read_bytes(campaign.ledger)
    with pytest.raises(LabelValidationError, match="not pending") as err:
        _prepare(storage_root, tmp_path, pool_uri, seed_uri)
    assert bad in str(err.value)
    assert storage.read_bytes(campaign.ledger) == before


def test_localize_images_turns_a_file_uri_into_a_path(tmp_path: Any) -> None:
    from taudis.campaign import localize_images

    assert localize_images("unused.json", f"file://{tmp_path}") == str(tmp_path)
    assert localize_images("unused.json", str(tmp_path)) == str(tmp_path)


def test_corrupt_labelled_dataset_is_named(campaign: dict[str, str]) -> None:
    storage.write_bytes(campaign["dataset"], b"{half a document")
    uri = _write(campaign, "labels.json", _labels([1]))
    with pytest.raises(storage.StorageError, match="not valid JSON") as err:
        ingest_labels(uri, campaign["ledger"], campaign["dataset"])
    assert campaign["dataset"] in str(err.value)


def test_an_image_without_width_is_not_reported_as_an_empty_mask(campaign: dict[str, str]) -> None:
    doc = _labels([1])
    doc["images"][0]["width"] = 0
    with pytest.raises(LabelValidationError) as err:
        ingest_labels(_write(campaign, "no-width.json", doc), campaign["ledger"], campaign["dataset"])
    assert [(p.record, p.field) for p in err.value.problems] == [
        ("image id 1 (index 0)", "width"),
        ("annotation id 101 (index 0)", "image_id"),
        ("annotation id 201 (index 1)", "image_id"),
    ]
