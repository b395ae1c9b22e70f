"""Labels in: every incoming file ingested or quarantined, images matched by file name, nothing misplaced."""

from __future__ import annotations

import copy
import json
import unicodedata
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from campaign_fixtures import SIZE, make_pool, selection_doc, square, subset, write_dataset

from taudis import storage
from taudis.campaign import rounds
from taudis.campaign.ingest import PoolIndex, ingest_incoming, match_image
from taudis.campaign.invariants import check_campaign
from taudis.campaign.labels import annotations_by_image, labelled_dataset
from taudis.campaign.layout import Campaign
from taudis.campaign.pool import sync_pool
from taudis.campaign.steps import claim_round
from taudis.labeling.labelstudio import upload_file_name
from taudis.storage.ledger import read_ledger


@pytest.fixture
def campaign(storage_root: str) -> tuple[Campaign, dict[str, Any], str]:
    """A campaign whose round 0 chose images 5..12 (pending), with the pool file's URI."""
    uris = write_dataset(storage.join(storage_root, "data"))
    campaign = Campaign(storage.join(storage_root, "c1"))
    claim_round(campaign.uri, uris["pool"], uris["seed"], "run-a")
    rounds.record_evaluation(campaign, 0, "run-a", {"labelled_images": 4, "mask_ap": 1.0, "box_ap": 1.0})
    staging = rounds.stage_files(campaign, 0, "run-a", {"tasks/manifest.jsonl": _manifest(range(5, 13))})
    rounds.commit_selection(campaign, 0, "run-a", selection_doc(list(range(5, 13))), staging)
    rounds.publish_round(campaign, 0)
    return campaign, storage.read_json(uris["pool"]), uris["pool"]


def _manifest(ids: range) -> bytes:
    return "".join(json.dumps({"image_id": i}) + "\n" for i in ids).encode()


def _drop(campaign: Campaign, name: str, doc: Any) -> str:
    uri = storage.join(campaign.incoming, name)
    storage.write_json(uri, doc)
    return uri


def _report(campaign: Campaign, name: str) -> dict[str, Any]:
    return storage.read_json(storage.join(campaign.rejected, name + ".report.json"))


def test_a_good_file_is_ingested_and_moved_to_done(campaign) -> None:
    campaign, pool, pool_uri = campaign
    returned = subset(pool, [5, 6, 7])
    _drop(campaign, "batch-1.json", returned)
    (outcome,) = ingest_incoming(campaign.uri, pool_uri)
    assert outcome.status == "ingested" and outcome.images == [5, 6, 7]
    assert campaign.incoming_files() == [] and storage.exists(storage.join(campaign.done, "batch-1.json"))
    ledger = read_ledger(campaign.ledger)
    assert {5, 6, 7} <= ledger.labelled and not {5, 6, 7} & ledger.pending
    dataset = labelled_dataset(campaign, ledger)
    assert annotations_by_image(dataset)[6] == annotations_by_image(returned)[6]
    assert check_campaign(campaign.uri) == []


def test_every_problem_of_a_bad_file_is_listed_and_nothing_changes(campaign) -> None:
    campaign, pool, pool_uri = campaign
    bad = subset(pool, [5, 6, 7])
    bad["annotations"][0]["segmentation"] = {"size": [SIZE, SIZE + 1], "counts": "0"}  # outside its image
    bad["annotations"][1]["category_id"] = 99  # unknown category
    bad["images"].append({"id": 77, "file_name": "elsewhere/unknown.png", "height": SIZE, "width": SIZE})
    bad["images"][2]["height"] = 32  # another size than the pool's
    before = read_ledger(campaign.ledger)
    _drop(campaign, "broken.json", bad)
    (outcome,) = ingest_incoming(campaign.uri, pool_uri)
    assert outcome.status == "rejected"
    report = _report(campaign, "broken.json")
    text = "\n".join(report["problems"])
    for words in ("differs from the image", "category", "no pool image has the file name", "32 here but 16"):
        assert words in text, words
    assert all("broken.json" in p for p in report["problems"])  # each names the file
    assert len(report["problems"]) >= 4
    assert read_ledger(campaign.ledger).parts == before.parts
    assert storage.exists(storage.join(campaign.rejected, "broken.json")) and campaign.incoming_files() == []


def test_renumbered_ids_that_collide_with_pending_images_attach_nothing_to_the_wrong_image(campaign) -> None:
    """Label Studio's COCO export numbers images 0..N-1: here 0, 1, 2 for pool images 9, 10, 11."""
    campaign, pool, pool_uri = campaign
    truth = subset(pool, [9, 10, 11])
    renumbered = copy.deepcopy(truth)
    new_id = {9: 5, 10: 6, 11: 7}  # ids of OTHER pending images, on purpose
    for image in renumbered["images"]:
        image["file_name"] = f"../../data/local-files/?d=images/{image['file_name']}"
        image["id"] = new_id[image["id"]]
    for ann in renumbered["annotations"]:
        ann["image_id"] = new_id[ann["image_id"]]
    renumbered["info"] = {"contributor": "Label Studio", "description": ""}
    _drop(campaign, "label-studio-coco.json", renumbered)
    (outcome,) = ingest_incoming(campaign.uri, pool_uri)
    assert outcome.status == "ingested" and outcome.images == [9, 10, 11]  # by file name
    ledger = read_ledger(campaign.ledger)
    assert {5, 6, 7} <= ledger.pending and {9, 10, 11} <= ledger.labelled
    have = annotations_by_image(labelled_dataset(campaign, ledger))
    assert {k: have[k] for k in (9, 10, 11)} == annotations_by_image(truth)


def test_plain_coco_whose_id_and_file_name_disagree_is_refused_naming_both(campaign) -> None:
    campaign, pool, pool_uri = campaign
    doc = subset(pool, [5])
    doc["images"][0]["file_name"] = "img0006.png"  # the file name of pool image 6
    _drop(campaign, "mixed-up.json", doc)
    (outcome,) = ingest_incoming(campaign.uri, pool_uri)
    assert outcome.status == "rejected"
    (problem,) = _report(campaign, "mixed-up.json")["problems"]
    assert "id 5" in problem and "img0005.png" in problem and "img0006.png" in problem and "pool image 6" in problem
    assert {5, 6} <= read_ledger(campaign.ledger).pending


def test_a_re_export_is_a_no_op_and_a_changed_one_a_conflict(campaign) -> None:
    campaign, pool, pool_uri = campaign
    _drop(campaign, "a.json", subset(pool, [5, 6]))
    ingest_incoming(campaign.uri, pool_uri)
    revision = read_ledger(campaign.ledger).revision
    again = subset(pool, [5, 6])
    again["annotations"].reverse()  # another file (other bytes), the same labels
    for index, ann in enumerate(again["annotations"]):
        ann["id"] = 100 + index
    _drop(campaign, "a-again.json", again)
    changed = subset(pool, [6])
    changed["annotations"][0]["segmentation"] = square(0, 0, 3)
    changed["annotations"][0]["bbox"] = [0, 0, 3, 3]
    _drop(campaign, "b.json", changed)
    outcomes = {o.file: o for o in ingest_incoming(campaign.uri, pool_uri)}
    assert outcomes["a-again.json"].status == "repeat" and outcomes["a-again.json"].repeats == [5, 6]
    assert outcomes["b.json"].status == "conflict"
    assert "already labelled" in _report(campaign, "b.json")["problems"][0]
    assert read_ledger(campaign.ledger).revision == revision  # neither changed the ledger
    assert storage.exists(storage.join(campaign.done, "a-again.json"))
    assert check_campaign(campaign.uri) == []


def _labels_of(campaign: Campaign, image_id: int) -> list[tuple[int, str]]:
    return annotations_by_image(labelled_dataset(campaign))[image_id]


def test_a_file_moved_to_corrections_replaces_the_labels_it_conflicted_with(campaign) -> None:
    campaign, pool, pool_uri = campaign
    _drop(campaign, "a.json", subset(pool, [5, 6, 7]))
    ingest_incoming(campaign.uri, pool_uri)
    before = {i: _labels_of(campaign, i) for i in (5, 6, 7)}
    fixed = copy.deepcopy(subset(pool, [6, 8]))  # the review redraws image 6's car; image 8 comes in with it
    fixed["annotations"][0].update(segmentation=square(0, 0, 3), bbox=[0, 0, 3, 3])
    _drop(campaign, "fixed.json", fixed)
    (refused,) = ingest_incoming(campaign.uri, pool_uri)
    assert refused.status == "conflict" and "incoming/corrections/" in _report(campaign, "fixed.json")["problems"][-1]
    assert 8 in read_ledger(campaign.ledger).pending  # a conflict changes nothing

    storage.move(storage.join(campaign.rejected, "fixed.json"), storage.join(campaign.corrections, "fixed.json"))
    (outcome,) = ingest_incoming(campaign.uri, pool_uri)
    assert outcome.status == "ingested" and outcome.images == [8] and outcome.replaced == [6]
    ledger = read_ledger(campaign.ledger)
    assert {5, 6, 7, 8} <= ledger.labelled and 8 not in ledger.pending
    assert _labels_of(campaign, 6) != before[6] and len(_labels_of(campaign, 6)) == len(before[6])
    assert {i: _labels_of(campaign, i) for i in (5, 7)} == {5: before[5], 7: before[7]}  # the rest of a.json stays
    assert sum(len(p.images) for p in ledger.parts) == len(ledger.labelled)  # parts stay disjoint
    assert campaign.correction_files() == [] and storage.exists(storage.join(campaign.done, "fixed.json"))
    assert check_campaign(campaign.uri) == []

    revision = ledger.revision
    storage.copy(storage.join(campaign.done, "fixed.json"), storage.join(campaign.corrections, "fixed-again.json"))
    _drop(campaign, "a-again.json", subset(pool, [5, 6, 7]))  # the export from before the review
    outcomes = {o.file: o for o in ingest_incoming(campaign.uri, pool_uri)}
    assert outcomes["corrections/fixed-again.json"].status == "ingested"  # already applied: only moved
    assert outcomes["a-again.json"].status == "conflict"  # it no longer matches what is in
    assert read_ledger(campaign.ledger).revision == revision and check_campaign(campaign.uri) == []


def test_a_correction_can_empty_an_image_and_again_be_corrected(campaign) -> None:
    campaign, pool, pool_uri = campaign
    _drop(campaign, "a.json", subset(pool, [6]))
    ingest_incoming(campaign.uri, pool_uri)
    truth = _labels_of(campaign, 6)
    emptied = subset(pool, [6])
    emptied["annotations"] = []
    storage.write_json(storage.join(campaign.corrections, "1-empty.json"), emptied)
    storage.write_json(storage.join(campaign.corrections, "2-back.json"), subset(pool, [6]))
    first, second = ingest_incoming(campaign.uri, pool_uri)
    assert first.replaced == [6] and first.empty == [6] and second.replaced == [6] and second.empty == []
    assert _labels_of(campaign, 6) == truth
    assert len(read_ledger(campaign.ledger).parts) == 2  # the seed's, and the last correction's
    assert check_campaign(campaign.uri) == []


def test_a_bad_file_does_not_hold_up_the_good_ones(campaign) -> None:
    campaign, pool, pool_uri = campaign
    _drop(campaign, "1-bad.json", {"images": "nope"})
    _drop(campaign, "2-good.json", subset(pool, [8]))
    statuses = [o.status for o in ingest_incoming(campaign.uri, pool_uri)]
    assert statuses == ["rejected", "ingested"]
    assert 8 in read_ledger(campaign.ledger).labelled
    assert ingest_incoming(campaign.uri, pool_uri) == []  # nothing is stuck in incoming/


def _damaged_zips(pool: dict[str, Any]) -> dict[str, bytes]:
    """Zips a vendor may send: a member whose compressed bytes are damaged, an encrypted one."""
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("annotations/instances_default.json", json.dumps(subset(pool, [5])) * 20)
    whole = buffer.getvalue()
    start = whole.index(b"PK\x03\x04") + 30 + len("annotations/instances_default.json")
    damaged = whole[:start] + bytes(b ^ 0x5A for b in whole[start : start + 40]) + whole[start + 40 :]
    # the encryption flag (bit 0 of the general purpose flags) in the local and central headers
    local, central = whole.index(b"PK\x03\x04") + 6, whole.index(b"PK\x01\x02") + 8
    encrypted = bytearray(whole)
    encrypted[local] |= 1
    encrypted[central] |= 1
    return {"1-damaged.zip": damaged, "2-encrypted.zip": bytes(encrypted)}


def test_a_file_that_cannot_be_decoded_is_quarantined_and_holds_up_nothing(campaign) -> None:
    campaign, pool, pool_uri = campaign
    for name, data in _damaged_zips(pool).items():
        storage.write_bytes(storage.join(campaign.incoming, name), data)
    storage.write_bytes(storage.join(campaign.incoming, "3-nested.json"), b"[" * 200_000 + b"]" * 200_000)
    _drop(campaign, "4-good.json", subset(pool, [8]))
    outcomes = ingest_incoming(campaign.uri, pool_uri)
    assert [(o.file, o.status) for o in outcomes] == [
        ("1-damaged.zip", "rejected"), ("2-encrypted.zip", "rejected"), ("3-nested.json", "rejected"),
        ("4-good.json", "ingested"),
    ]  # fmt: skip
    assert "cannot be decoded" in _report(campaign, "2-encrypted.zip")["problems"][0]
    assert "nested too deeply" in _report(campaign, "3-nested.json")["problems"][0]
    assert "cannot be decoded" in _report(campaign, "1-damaged.zip")["problems"][0]
    assert 8 in read_ledger(campaign.ledger).labelled and 5 in read_ledger(campaign.ledger).pending
    assert ingest_incoming(campaign.uri, pool_uri) == []  # nothing is stuck in incoming/


def test_an_error_of_taudis_own_is_not_taken_for_an_undecodable_file(campaign, monkeypatch) -> None:
    import taudis.labeling.read as read_module

    campaign, pool, pool_uri = campaign
    _drop(campaign, "good.json", subset(pool, [5]))

    def buggy(*args: Any) -> Any:
        raise RuntimeError("dictionary changed size during iteration")

    monkeypatch.setattr(read_module, "read_document", buggy)
    with pytest.raises(RuntimeError, match="dictionary changed size"):
        ingest_incoming(campaign.uri, pool_uri)
    assert campaign.incoming_files() == [storage.join(campaign.incoming, "good.json")]  # not quarantined


def test_a_file_replaced_while_it_is_ingested_leaves_the_new_version_for_the_next_ingest(
    campaign, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An annotator uploads a fuller export under the same name while the first is being ingested."""
    import taudis.campaign.ingest as ingest_module

    campaign, pool, pool_uri = campaign
    uri = _drop(campaign, "export.json", subset(pool, [5, 6]))
    resolve = ingest_module.resolve

    def uploaded_meanwhile(*args: Any, **kwargs: Any) -> Any:
        storage.write_json(uri, subset(pool, [5, 6, 7, 8]))
        monkeypatch.setattr(ingest_module, "resolve", resolve)
        return resolve(*args, **kwargs)

    monkeypatch.setattr(ingest_module, "resolve", uploaded_meanwhile)
    (first,) = ingest_incoming(campaign.uri, pool_uri)
    assert first.status == "ingested" and first.images == [5, 6]  # the version read, whole
    assert storage.read_json(storage.join(campaign.done, "export.json")) == subset(pool, [5, 6])
    assert storage.read_json(uri) == subset(pool, [5, 6, 7, 8])  # still waiting, not carried off unread
    (second,) = ingest_incoming(campaign.uri, pool_uri)
    assert second.status == "ingested" and second.images == [7, 8] and second.repeats == [5, 6]
    assert {5, 6, 7, 8} <= read_ledger(campaign.ledger).labelled
    assert storage.read_json(storage.join(campaign.done, "export.json")) == subset(pool, [5, 6])
    assert check_campaign(campaign.uri) == []


def test_images_never_sent_to_annotators_are_refused(campaign) -> None:
    campaign, pool, pool_uri = campaign
    _drop(campaign, "extra.json", subset(pool, [5, 30]))  # 30 is unlabelled
    (outcome,) = ingest_incoming(campaign.uri, pool_uri)
    assert outcome.status == "rejected" and "never sent to annotators" in outcome.problems[0]
    assert 5 in read_ledger(campaign.ledger).pending


def test_an_ingest_interrupted_after_the_ledger_update_finishes_on_rerun(campaign, monkeypatch) -> None:
    campaign, pool, pool_uri = campaign
    _drop(campaign, "batch.json", subset(pool, [5]))

    def killed(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt("the pod was killed before the file moved")

    with monkeypatch.context() as patched:
        patched.setattr(storage, "move_if_unchanged", killed)
        with pytest.raises(KeyboardInterrupt):
            ingest_incoming(campaign.uri, pool_uri)
    revision = read_ledger(campaign.ledger).revision
    (outcome,) = ingest_incoming(campaign.uri, pool_uri)
    assert outcome.status == "ingested" and outcome.images == [5]
    assert read_ledger(campaign.ledger).revision == revision  # applied once
    assert check_campaign(campaign.uri) == []


def test_the_pool_grows_and_shrinks_with_its_file(campaign) -> None:
    campaign, pool, _pool_uri = campaign
    grown = copy.deepcopy(pool)
    extra = make_pool(100, first_id=1000)
    grown["images"] += extra["images"]
    grown["annotations"] += extra["annotations"]
    assert sync_pool(campaign, grown) == {"added": 100, "removed": 0, "pool": 140}
    assert set(range(1000, 1100)) <= read_ledger(campaign.ledger).unlabelled  # choosable next round
    shrunk = {**grown, "images": [im for im in grown["images"] if im["id"] not in {1, 5, 30}]}
    change = sync_pool(campaign, shrunk)
    ledger = read_ledger(campaign.ledger)
    assert change["removed"] == 1 and 30 not in ledger.pool  # only the unlabelled one leaves
    assert 1 in ledger.labelled and 5 in ledger.pending
    assert check_campaign(campaign.uri) == []


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("img0005.png", 5),
        ("gs://bucket/pool/images/img0005.png", 5),
        ("/data/local-files/?d=images%2Fimg0005.png", 5),
        ("images\\img0005.png", 5),
        ("img9999.png", None),
    ],
)
def test_image_references_match_the_pool_by_file_name(ref: str, expected: int | None) -> None:
    index = PoolIndex.of(make_pool(10))
    assert match_image(ref, index)[0] == expected


def test_a_base_name_shared_by_two_pool_images_is_ambiguous() -> None:
    pool = make_pool(2)
    pool["images"][0]["file_name"] = "a/x.png"
    pool["images"][1]["file_name"] = "b/x.png"
    index = PoolIndex.of(pool)
    assert match_image("x.png", index)[0] is None and "several" in match_image("x.png", index)[1]
    assert match_image("gs://b/a/x.png", index)[0] == 1


@pytest.mark.parametrize(
    ("ref", "expected", "words"),
    [
        ("cat/001.png", 1, ""),
        ("001.png", 1, ""),  # a tool that keeps the base name only
        ("gs://bucket/pool/data/cat/001.png", 1, ""),
        ("https://storage.googleapis.com/bucket/data/cat/001.png?X-Goog-Signature=ab12&X-Goog-Expires=900", 1, ""),
        ("dog/001.png", None, "other folders"),  # another file of the same base name
        ("/home/me/other/dir/002.png", None, "other folders"),
        ("gs://bucket/raw/001.png", None, "other folders"),
    ],
)
def test_a_reference_whose_folders_contradict_the_pools_is_never_matched_by_base_name(
    ref: str, expected: int | None, words: str
) -> None:
    pool = make_pool(2)
    pool["images"][0]["file_name"] = "data/cat/001.png"
    pool["images"][1]["file_name"] = "data/cat/002.png"
    found, why = match_image(ref, PoolIndex.of(pool))
    assert found == expected and words in why
    if expected is None:
        assert "data/cat/" in why and ref in why  # both paths named


def test_a_name_that_differs_only_in_case_is_refused_naming_the_pool_image() -> None:
    index = PoolIndex.of(make_pool(3))
    for ref in ("IMG0002.PNG", "gs://bucket/images/img0002.PNG"):
        found, why = match_image(ref, index)
        assert found is None and "['img0002.png'] differ from it only in case" in why and ref in why
    assert match_image("img0002.png", index) == (2, "")
    assert "only in case" not in match_image("img9999.png", index)[1]
    nested = make_pool(1)
    nested["images"][0]["file_name"] = "cat/img0001.png"
    index = PoolIndex.of(nested)
    assert "only in case" in match_image("CAT/IMG0001.png", index)[1]
    assert "only in case" not in match_image("dog/IMG0001.png", index)[1]  # other folders: another file


def test_a_file_label_studio_renamed_on_upload_matches_its_pool_image() -> None:
    pool = make_pool(3)
    pool["images"][0]["file_name"] = "site A/tile 3 (copy).png"
    pool["images"][1]["file_name"] = "site A/tile 4.png"
    index = PoolIndex.of(pool)
    assert match_image("tile_3_copy.png", index, upload_file_name) == (1, "")
    assert match_image("tile_4.png", index, upload_file_name) == (2, "")
    assert match_image("tile_3_copy.png", index)[0] is None  # not a name of the pool's own
    pool["images"][2]["file_name"] = "site B/tile_3_copy.png"  # an upload of either comes back so named
    found, why = match_image("tile_3_copy.png", PoolIndex.of(pool), upload_file_name)
    assert found is None and "site A/tile 3 (copy).png" in why and "site B/tile_3_copy.png" in why


def test_a_reference_in_another_unicode_form_names_the_same_file() -> None:
    pool = make_pool(2)
    pool["images"][0]["file_name"] = unicodedata.normalize("NFC", "été/café.png")
    decomposed = unicodedata.normalize("NFD", "été/café.png")  # as a macOS tool writes it
    assert match_image(decomposed, PoolIndex.of(pool))[0] == 1
    assert match_image("gs://b/" + quote(decomposed), PoolIndex.of(pool))[0] == 1


def test_a_file_of_no_image_is_rejected_not_filed_as_a_repeat(campaign) -> None:
    campaign, pool, pool_uri = campaign
    _drop(campaign, "empty.json", {**subset(pool, []), "images": []})
    (outcome,) = ingest_incoming(campaign.uri, pool_uri)
    assert outcome.status == "rejected" and "lists no image" in _report(campaign, "empty.json")["problems"][0]


def test_cli_ingest_and_check(campaign, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from taudis.campaign.cli import main

    campaign, pool, pool_uri = campaign
    _drop(campaign, "batch.json", subset(pool, [5]))
    assert main(["ingest", campaign.uri, "--pool", pool_uri]) == 0
    assert '"status": "ingested"' in capsys.readouterr().out
    assert main(["check", campaign.uri]) == 0
    assert main(["show", campaign.uri]) == 0
    assert "round 0: exported" in capsys.readouterr().out


def _set_ann(index: int, **fields: Any):
    def mutate(doc: dict[str, Any]) -> None:
        doc["annotations"][index].update(fields)

    return mutate


# name -> (mutation of a good file for images 6 (a car and a tree) and 7 (a car), field, words)
BAD_CASES = {
    "unknown category": (_set_ann(0, category_id=7), "category_id", "unknown category"),
    "malformed RLE character": (
        _set_ann(1, segmentation={"size": [SIZE, SIZE], "counts": "ab\x01"}), "segmentation.counts", "RLE",
    ),
    "malformed RLE runs": (
        _set_ann(1, segmentation={"size": [SIZE, SIZE], "counts": [10, 5]}), "segmentation.counts", "runs cover 15",
    ),
    "RLE outside the image": (
        _set_ann(1, segmentation={**square(0, 0, 3), "size": [SIZE + 5, SIZE]}), "segmentation.size", "outside",
    ),
    "malformed polygon": (_set_ann(0, segmentation=[[1, 2, 3, 4, 5]]), "segmentation[0]", "even number"),
    "polygon outside the image": (
        _set_ann(0, segmentation=[[2, 2, 40, 2, 40, 9, 2, 9]]), "segmentation[0]", "x outside the image",
    ),
    "box outside the image": (_set_ann(0, bbox=[12, 2, 10, 5]), "bbox", "outside the image"),
    "box as [x1, y1, x2, y2]": (_set_ann(0, bbox=[6, 1, 10, 5]), "bbox", "not its mask's"),
    "duplicate annotation": (
        lambda d: d["annotations"].append(dict(copy.deepcopy(d["annotations"][1]), id=999)),
        "segmentation", "duplicate",
    ),
    "empty mask": (_set_ann(1, segmentation={"size": [SIZE, SIZE], "counts": [SIZE * SIZE]}), "segmentation", "empty"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_labels_name_file_record_and_field_and_change_nothing(campaign, case: str) -> None:
    campaign, pool, pool_uri = campaign
    mutate, field, words = BAD_CASES[case]
    doc = copy.deepcopy(subset(pool, [6, 7]))
    mutate(doc)
    before = read_ledger(campaign.ledger)
    _drop(campaign, "bad-labels.json", doc)
    (outcome,) = ingest_incoming(campaign.uri, pool_uri)
    assert outcome.status == "rejected"
    matching = [p for p in _report(campaign, "bad-labels.json")["problems"] if f"field {field!r}" in p]
    assert matching, _report(campaign, "bad-labels.json")["problems"]
    assert words in matching[0] and "bad-labels.json" in matching[0] and "annotation" in matching[0]
    after = read_ledger(campaign.ledger)
    assert after.parts == before.parts and after.pending == before.pending


def test_a_category_named_in_another_case_is_refused_with_the_campaigns_name(campaign) -> None:
    campaign, pool, pool_uri = campaign
    renamed = subset(pool, [5])
    renamed["categories"] = [{**c, "name": f" {c['name'].upper()}"} for c in renamed["categories"]]
    _drop(campaign, "shouting.json", renamed)
    (outcome,) = ingest_incoming(campaign.uri, pool_uri)
    assert outcome.status == "rejected"
    problems = _report(campaign, "shouting.json")["problems"]
    used = {c["name"] for c in pool["categories"] if any(a["category_id"] == c["id"] for a in renamed["annotations"])}
    assert used and len(problems) == len(renamed["annotations"])  # each annotation, its record named
    for name in used:
        assert any(f"unknown category ' {name.upper()}'" in p and f"differs from {name!r} only in case" in p
                   for p in problems)  # fmt: skip
    assert 5 in read_ledger(campaign.ledger).pending  # nothing was applied
