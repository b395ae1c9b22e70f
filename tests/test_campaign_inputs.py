"""What a team hands a campaign over months: files in incoming/ of any name, a seed numbered its own
way, a pool file that gains a category or is regenerated. None of it may mislabel an image."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from campaign_fixtures import SIZE, make_pool, selection_doc, square, subset, write_dataset

from taudis import storage
from taudis.campaign import rounds
from taudis.campaign.ingest import ingest_incoming
from taudis.campaign.invariants import check_campaign
from taudis.campaign.labels import annotations_by_image, known_file_names, labelled_dataset
from taudis.campaign.layout import Campaign
from taudis.campaign.steps import claim_round, ingest_labels
from taudis.data.coco import CocoFormatError
from taudis.storage.ledger import read_ledger

CVAT_XML = """<?xml version="1.0" encoding="utf-8"?>
<annotations>
  <version>1.1</version>
  <image id="0" name="img0005.png" width="{size}" height="{size}">
    <polygon label="car" occluded="0" source="manual" points="1,1;6,1;6,6;1,6" z_order="0"></polygon>
  </image>
</annotations>
"""


def _exported(storage_root: str, seed: Any = None) -> tuple[Campaign, dict[str, str]]:
    """A campaign whose round 0 chose images 5..12 (pending, tasks published with their file names)."""
    uris = write_dataset(storage.join(storage_root, "data"))
    if seed is not None:
        storage.write_json(uris["seed"], seed)
    campaign = Campaign(storage.join(storage_root, "c1"))
    claim_round(campaign.uri, uris["pool"], uris["seed"], "run-a")
    rounds.record_evaluation(campaign, 0, "run-a", {"labelled_images": 4, "mask_ap": 1.0, "box_ap": 1.0})
    rows = "".join(
        json.dumps({"image_id": i, "file_name": f"img{i:04d}.png", "height": SIZE, "width": SIZE}) + "\n"
        for i in range(5, 13)
    )
    staging = rounds.stage_files(campaign, 0, "run-a", {"tasks/manifest.jsonl": rows.encode()})
    rounds.commit_selection(campaign, 0, "run-a", selection_doc(list(range(5, 13))), staging)
    rounds.publish_round(campaign, 0)
    return campaign, uris


def _ingest_step(campaign: Campaign, pool_uri: str, tmp: Path, round_index: int = 1) -> dict[str, Any]:
    claim_round(campaign.uri, pool_uri, "", "run-b")
    return ingest_labels(
        campaign.uri, pool_uri, round_index, "run-b", str(tmp / "l.json"), str(tmp / "u.json"), oracle=False
    )


# --------------------------------------------------------------------------------- incoming/


def test_every_file_dropped_into_incoming_is_ingested_or_quarantined_whatever_its_name(storage_root: str) -> None:
    campaign, uris = _exported(storage_root)
    pool = storage.read_json(uris["pool"])
    storage.write_text(storage.join(campaign.incoming, "annotations.xml"), CVAT_XML.format(size=SIZE))
    storage.write_json(storage.join(campaign.incoming, "team-b", "batch6.json"), subset(pool, [6]))
    storage.write_text(storage.join(campaign.incoming, "batch7.JSON.txt"), json.dumps(subset(pool, [7])))
    storage.write_text(storage.join(campaign.incoming, "export.csv"), "image,label\nimg0008.png,car\n")
    outcomes = {o.file: o for o in ingest_incoming(campaign.uri, uris["pool"])}
    assert outcomes["annotations.xml"].status == "ingested" and outcomes["annotations.xml"].images == [5]
    assert outcomes["team-b/batch6.json"].status == "ingested" and outcomes["team-b/batch6.json"].images == [6]
    assert outcomes["batch7.JSON.txt"].status == "ingested"  # read by its content, not its suffix
    assert outcomes["export.csv"].status == "rejected"
    assert storage.exists(storage.join(campaign.rejected, "export.csv.report.json"))
    assert campaign.incoming_files() == []
    assert {5, 6, 7} <= read_ledger(campaign.ledger).labelled
    assert check_campaign(campaign.uri) == []


@pytest.mark.parametrize("name", ["batch.zip.part", "batch.json.crdownload", ".~lock.batch.json#", "batch.json~"])
def test_a_copy_still_being_written_is_left_for_a_later_round(storage_root: str, name: str) -> None:
    campaign, uris = _exported(storage_root)
    storage.write_text(storage.join(campaign.incoming, name), "{")
    assert ingest_incoming(campaign.uri, uris["pool"]) == []
    assert storage.exists(storage.join(campaign.incoming, name))


# ------------------------------------------------------------------------------------- the seed


def _renumbered_seed(pool: dict[str, Any], image_ids: list[int]) -> dict[str, Any]:
    """The pool's labels of ``image_ids`` as a tool exports them: images numbered 0..N-1 and the
    categories numbered its own way (Label Studio's COCO export renumbers both)."""
    seed = copy.deepcopy(subset(pool, image_ids))
    new_id = {im["id"]: 100_000 + n for n, im in enumerate(seed["images"])}
    new_cat = {1: 7, 2: 3}
    for im in seed["images"]:
        im["id"] = new_id[im["id"]]
    for ann in seed["annotations"]:
        ann["image_id"], ann["category_id"] = new_id[ann["image_id"]], new_cat[ann["category_id"]]
    seed["categories"] = [{"id": new_cat[c["id"]], "name": c["name"]} for c in seed["categories"]]
    return seed


def test_a_seed_numbered_its_own_way_labels_the_pool_images_it_names_with_their_classes(storage_root: str) -> None:
    pool = make_pool(40)
    campaign, _ = _exported(storage_root, seed=_renumbered_seed(pool, [1, 2, 3, 4]))
    ledger = read_ledger(campaign.ledger)
    assert ledger.labelled == {1, 2, 3, 4} and not {100_000, 100_001} & ledger.pool
    dataset = labelled_dataset(campaign, ledger)
    assert annotations_by_image(dataset) == annotations_by_image(subset(pool, [1, 2, 3, 4]))
    assert dataset["categories"] == pool["categories"]


def test_a_seed_image_outside_the_pool_file_joins_under_its_id_unless_that_id_is_taken(storage_root: str) -> None:
    pool = make_pool(40)
    outside = make_pool(2, first_id=900)  # file names img0900.png, img0901.png: not pool files
    campaign, _ = _exported(storage_root, seed=outside)
    assert {900, 901} <= read_ledger(campaign.ledger).labelled
    clash = copy.deepcopy(outside)
    clash["images"][0]["id"] = 3  # pool image 3 is img0003.png
    for ann in clash["annotations"]:
        ann["image_id"] = 3 if ann["image_id"] == 900 else ann["image_id"]
    with pytest.raises(CocoFormatError, match=r"image 3 \('img0900.png'\).*id 3 is pool image 'img0003.png'"):
        _exported(storage_root + "-clash", seed=clash)
    unknown = copy.deepcopy(subset(pool, [1]))
    unknown["categories"] = [{"id": 1, "name": "Car"}, {"id": 2, "name": "tree"}]
    with pytest.raises(CocoFormatError, match=r"category 1.*'Car'.*differs from 'car' only in case"):
        _exported(storage_root + "-cat", seed=unknown)


# -------------------------------------------------------------------------------- the pool file


def test_a_category_added_to_the_pool_file_mid_campaign_reaches_the_training_set(
    storage_root: str, tmp_path: Path
) -> None:
    campaign, uris = _exported(storage_root)
    pool = storage.read_json(uris["pool"])
    pool["categories"] = [*pool["categories"], {"id": 5, "name": "bike"}]
    storage.write_json(uris["pool"], pool)
    returned = subset(pool, [5])
    returned["annotations"].append({**returned["annotations"][0], "id": 99, "category_id": 5, **_square(8)})
    storage.write_json(storage.join(campaign.incoming, "bikes.json"), returned)
    _ingest_step(campaign, uris["pool"], tmp_path)
    trained_on = storage.read_json(str(tmp_path / "l.json"))
    assert [c["name"] for c in trained_on["categories"]] == ["car", "tree", "bike"]
    assert any(a["category_id"] == 5 and a["image_id"] == 5 for a in trained_on["annotations"])


def _square(x: int) -> dict[str, Any]:
    seg = square(x, 8, 4)
    return {"segmentation": seg, "bbox": [float(x), 8.0, 4.0, 4.0], "area": 16.0}


def test_a_renumbered_pool_file_is_refused_before_anything_changes(storage_root: str, tmp_path: Path) -> None:
    campaign, uris = _exported(storage_root)
    pool = storage.read_json(uris["pool"])
    assert known_file_names(campaign)[6] == "img0006.png"  # pending: from its round's task manifest
    regenerated = copy.deepcopy(pool)
    regenerated["images"].insert(0, {"id": 0, "file_name": "img0000.png", "height": SIZE, "width": SIZE})
    for n, image in enumerate(regenerated["images"]):  # one image added, the rest numbered in order
        image["id"] = n + 1
    regenerated["annotations"] = []
    storage.write_json(uris["pool"], regenerated)
    before = read_ledger(campaign.ledger)
    with pytest.raises(
        CocoFormatError, match=r"id 1 is 'img0000.png' here but the campaign's 'img0001.png'.*renumbered"
    ):
        _ingest_step(campaign, uris["pool"], tmp_path)
    after = read_ledger(campaign.ledger)
    assert (after.pool, after.labelled, after.pending) == (before.pool, before.labelled, before.pending)
    appended = {
        **pool,
        "images": [*pool["images"], {"id": 41, "file_name": "img0000.png", "height": SIZE, "width": SIZE}],
    }
    storage.write_json(uris["pool"], appended)  # the right way: a new image takes a new id
    facts = _ingest_step(campaign, uris["pool"], tmp_path)
    assert facts["pool"]["added"] == 1


def test_images_a_file_labels_with_no_instance_are_named_in_the_rounds_facts(storage_root: str, tmp_path: Path) -> None:
    campaign, uris = _exported(storage_root)
    pool = storage.read_json(uris["pool"])
    half_done = subset(pool, [5, 6, 7])
    half_done["annotations"] = [a for a in half_done["annotations"] if a["image_id"] == 5]  # 6, 7 untouched
    storage.write_json(storage.join(campaign.incoming, "half.json"), half_done)
    facts = _ingest_step(campaign, uris["pool"], tmp_path)
    assert facts["ingest"]["empty"] == ["half.json (images 6, 7)"]
    assert rounds_record(campaign, 1)["ingest"]["empty"] == ["half.json (images 6, 7)"]


def rounds_record(campaign: Campaign, index: int) -> dict[str, Any]:
    return read_ledger(campaign.ledger).round(index) or {}


def test_a_correction_put_back_after_a_later_one_wins_again(storage_root: str) -> None:
    campaign, uris = _exported(storage_root)
    pool = storage.read_json(uris["pool"])

    def fixed(side: int) -> dict[str, Any]:
        doc = copy.deepcopy(subset(pool, [1]))
        doc["annotations"][0].update(segmentation=square(1, 1, side), bbox=[1.0, 1.0, float(side), float(side)])
        return doc

    def image_1() -> list[tuple[int, str]]:
        return annotations_by_image(labelled_dataset(campaign))[1]

    for name, side in [("f1.json", 3), ("f2.json", 5), ("f1-again.json", 3)]:
        storage.write_json(storage.join(campaign.corrections, name), fixed(side))
        (outcome,) = ingest_incoming(campaign.uri, uris["pool"])
        assert outcome.status == "ingested" and outcome.replaced == [1]
        assert image_1() == annotations_by_image(fixed(side))[1]
    assert check_campaign(campaign.uri) == []


def test_a_hand_run_ingest_keeps_the_published_view_and_the_invariants(storage_root: str, tmp_path: Path) -> None:
    from taudis.campaign.cli import main

    campaign, uris = _exported(storage_root)
    storage.write_json(campaign.labelled, labelled_dataset(campaign))  # as round 0's ingest step left it
    storage.write_json(storage.join(campaign.incoming, "batch.json"), subset(storage.read_json(uris["pool"]), [5]))
    assert main(["ingest", campaign.uri, "--pool", uris["pool"]]) == 0
    assert 5 in {im["id"] for im in storage.read_json(campaign.labelled)["images"]}
    assert main(["check", campaign.uri]) == 0


def test_a_dead_runs_claim_is_released_and_the_next_run_takes_the_round_over(
    storage_root: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from taudis.campaign.cli import main
    from taudis.campaign.rounds import RoundBusyError, RoundLostError, renew_claim

    campaign, uris = _exported(storage_root)
    assert claim_round(campaign.uri, uris["pool"], "", "run-dead") == 1
    with pytest.raises(RoundBusyError, match="taudis campaign release"):
        claim_round(campaign.uri, uris["pool"], "", "run-new")
    assert main(["release", campaign.uri]) == 0
    assert "round 1 released from run 'run-dead'" in capsys.readouterr().out
    with pytest.raises(RoundLostError):
        renew_claim(campaign, 1, "run-dead")  # fenced off at once, had it been alive
    assert claim_round(campaign.uri, uris["pool"], "", "run-new") == 1
    assert main(["release", campaign.uri]) == 0  # run-new's claim: released too, on request
    assert check_campaign(campaign.uri) == []


def test_an_upload_whose_long_name_label_studio_cut_short_matches_its_pool_image() -> None:
    """Django stores uploads within 100 characters ("upload/<project>/<8 hex>-" included): a longer
    name is cut and gains "_" and 7 random characters (seen on a real Label Studio 1.23)."""
    from taudis.campaign.ingest import PoolIndex, match_image
    from taudis.labeling.labelstudio import upload_file_name

    pool = make_pool(3)
    long_stem = "plate-07_well-B3_field-0012_channel-DAPI_z-003_t-0001_exposure-200ms_objective-40x"
    pool["images"][0]["file_name"] = f"run 4/{long_stem}.png"
    pool["images"][1]["file_name"] = f"run 4/{long_stem}_repeat.tif"
    index = PoolIndex.of(pool)
    stored = f"{long_stem[:70]}_pjK1bZQ.png"  # project 1: 18 + 82 = 100 characters
    assert len("upload/1/4e0f1a2b-" + stored) == 100
    assert match_image(stored, index, upload_file_name) == (1, "")
    found, why = match_image(f"{long_stem[:70]}_pjK1bZQ.tif", index, upload_file_name)
    assert found == 2
    found, why = match_image(f"{long_stem[:70]}_pjK1bZQ.png", PoolIndex.of({**pool, "images": [
        {**pool["images"][0]}, {**pool["images"][1], "file_name": f"{long_stem}_b.png"}, pool["images"][2]]}),
        upload_file_name)  # fmt: skip
    assert found is None and "rename them apart" in why
    assert match_image("img0003_pjK1bZQ.png", index, upload_file_name)[0] is None  # too short to be cut
    assert match_image(f"{long_stem[:40]}_pjK1bZQ.png", index, upload_file_name)[0] is None


def test_labels_of_a_pending_image_dropped_from_the_pool_file_still_land(storage_root: str, tmp_path: Path) -> None:
    campaign, uris = _exported(storage_root)
    pool = storage.read_json(uris["pool"])
    kept = [im["id"] for im in pool["images"] if im["id"] != 7]
    storage.write_json(uris["pool"], subset(pool, kept))
    storage.write_json(storage.join(campaign.incoming, "batch.json"), subset(pool, [5, 6, 7]))
    facts = _ingest_step(campaign, uris["pool"], tmp_path)
    assert facts["ingest"]["ingested"] == ["batch.json"]
    assert {5, 6, 7} <= read_ledger(campaign.ledger).labelled
    have = annotations_by_image(storage.read_json(str(tmp_path / "l.json")))
    assert {i: have[i] for i in (5, 6, 7)} == annotations_by_image(subset(pool, [5, 6, 7]))


def test_the_seed_file_is_needed_only_by_the_run_that_creates_the_campaign(storage_root: str) -> None:
    from taudis_kfp.components.labels import check_parameters

    campaign, uris = _exported(storage_root)
    params = {
        "strategy": "taudis", "budget": 4, "alpha": 2.5, "beta": 1.5, "sigma": 0.8, "metric": "seg_entropy",
        "aggregation": "mean", "universe": "candidates", "pool_annotations": uris["pool"],
        "val_annotations": uris["pool"], "labelled_annotations": uris["seed"],
    }  # fmt: skip
    storage.delete(uris["seed"])  # months later, the initial labelled set is tidied away
    check_parameters.python_func(**params, campaign_uri=campaign.uri)  # the campaign exists: not read
    with pytest.raises(FileNotFoundError, match=r"seed\.json does not exist"):
        check_parameters.python_func(**params, campaign_uri=storage.join(storage_root, "new-campaign"))


def test_a_val_split_with_nothing_to_score_stops_the_run_before_training(storage_root: str) -> None:
    from taudis.data.coco import CocoFormatError
    from taudis_kfp.components.labels import check_parameters

    campaign, uris = _exported(storage_root)
    params = {
        "strategy": "taudis", "budget": 4, "alpha": 2.5, "beta": 1.5, "sigma": 0.8, "metric": "product_rank",
        "aggregation": "mean", "universe": "candidates", "pool_annotations": uris["pool"],
        "labelled_annotations": uris["seed"], "campaign_uri": campaign.uri,
    }  # fmt: skip
    val = storage.read_json(uris["pool"])
    check_parameters.python_func(**params, val_annotations=uris["pool"])  # objects to score: runs on
    crowd = storage.join(storage_root, "val-crowd.json")
    storage.write_json(crowd, {**val, "annotations": [{**a, "iscrowd": 1} for a in val["annotations"]]})
    with pytest.raises(ValueError, match=r"val-crowd\.json: only crowd regions .*set iscrowd 0"):
        check_parameters.python_func(**params, val_annotations=crowd)
    bare = storage.join(storage_root, "val-bare.json")
    storage.write_json(bare, {**val, "annotations": []})
    with pytest.raises(ValueError, match=r"val-bare\.json: no annotation: the val split must hold an object"):
        check_parameters.python_func(**params, val_annotations=bare)
    broken = storage.join(storage_root, "val-broken.json")
    storage.write_json(broken, {**val, "annotations": [{**val["annotations"][0], "image_id": 10**9}]})
    with pytest.raises(CocoFormatError, match=r"val-broken\.json.*image_id"):
        check_parameters.python_func(**params, val_annotations=broken)


def test_a_file_another_ingest_took_meanwhile_is_left_to_it(storage_root: str, monkeypatch: pytest.MonkeyPatch) -> None:
    campaign, uris = _exported(storage_root)
    storage.write_json(storage.join(campaign.incoming, "b.json"), subset(storage.read_json(uris["pool"]), [5]))
    listed = campaign.incoming_files()
    gone = storage.join(campaign.incoming, "a.json")  # listed, then ingested by a second run first
    monkeypatch.setattr(Campaign, "incoming_files", lambda self: [gone, *listed])
    assert [o.file for o in ingest_incoming(campaign.uri, uris["pool"])] == ["b.json"]


def test_a_retried_ingest_step_still_reports_the_files_its_first_attempt_handled(
    storage_root: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import taudis.campaign.steps as steps

    campaign, uris = _exported(storage_root)
    storage.write_json(storage.join(campaign.incoming, "good.json"), subset(storage.read_json(uris["pool"]), [5]))
    storage.write_text(storage.join(campaign.incoming, "broken.json"), '{"images": [')

    def killed(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt("the pod was killed after the files moved")

    with monkeypatch.context() as patched:
        patched.setattr(steps, "publish_labelled", killed)
        with pytest.raises(KeyboardInterrupt):
            _ingest_step(campaign, uris["pool"], tmp_path)
    _ingest_step(campaign, uris["pool"], tmp_path)  # KFP's retry: nothing is waiting any more
    intake = rounds_record(campaign, 1)["ingest"]
    assert (intake["ingested"], intake["rejected"]) == (["good.json"], ["broken.json"])


def test_pool_images_whose_names_compare_alike_are_never_confused() -> None:
    """Two files on a disk, one name to a tool: a label naming either is refused, never put on the other."""
    from taudis.campaign.ingest import PoolIndex, match_image

    pool = make_pool(3)
    pool["images"][0]["file_name"] = "pool/a b.png"
    pool["images"][1]["file_name"] = "pool/a%20b.png"
    index = PoolIndex.of(pool)
    for ref in ("pool/a b.png", "pool/a%20b.png", "gs://bucket/pool/a b.png", "a b.png"):
        pool_id, why = match_image(ref, index)
        assert pool_id is None and "differ only in URL encoding" in why, ref
    assert match_image(pool["images"][2]["file_name"], index) == (3, "")


def test_a_bucket_object_whose_name_holds_a_hash_or_question_mark_is_matched() -> None:
    from taudis.campaign.ingest import PoolIndex, match_image

    pool = make_pool(2)
    pool["images"][0]["file_name"] = "gs://bucket/pool/x#1.png"
    pool["images"][1]["file_name"] = "gs://bucket/pool/q?.png"
    index = PoolIndex.of(pool)
    assert match_image("gs://bucket/pool/x#1.png", index) == (1, "")
    assert match_image("gs://bucket/pool/q?.png", index) == (2, "")
    signed = PoolIndex.of({**pool, "images": [{**pool["images"][0], "file_name": "pool/q.png"}]})
    assert match_image("https://storage.googleapis.com/bucket/pool/q.png?X-Goog-Signature=ab#c", signed) == (1, "")


def test_names_that_are_one_file_by_ingests_rules_are_neither_refused_nor_renumbering(
    storage_root: str, tmp_path: Path
) -> None:
    """A seed that names pool files by a longer path or another separator is matched, and a pool file
    that names the campaign's images so keeps the campaign going."""
    pool = make_pool(40)
    seed = copy.deepcopy(subset(pool, [1, 2]))
    seed["images"][0]["file_name"] = "/data/pool/img0001.png"
    seed["images"][1]["file_name"] = "sub\\img0002.png"
    pool["images"][1]["file_name"] = "sub/img0002.png"
    campaign, uris = _exported(storage_root, seed=seed)
    storage.write_json(uris["pool"], pool)
    assert {1, 2} <= read_ledger(campaign.ledger).labelled
    moved = copy.deepcopy(pool)
    moved["images"][4]["file_name"] = "batch1/img0005.png"  # pending image 5, now under a folder
    storage.write_json(uris["pool"], moved)
    assert _ingest_step(campaign, uris["pool"], tmp_path)["pool"]["pool"] == 40


def test_what_systems_leave_beside_exports_is_left_alone_and_team_folders_are_told_apart(storage_root: str) -> None:
    campaign, uris = _exported(storage_root)
    pool = storage.read_json(uris["pool"])
    for name in (".ipynb_checkpoints/a-checkpoint.json", "x.json.download/x.json", "Thumbs.db", "old.json.report.json"):
        storage.write_text(storage.join(campaign.incoming, name), "{")
    storage.write_json(storage.join(campaign.incoming, "team-a", "result.json"), subset(pool, [5]))
    storage.write_json(storage.join(campaign.incoming, "team-b", "result.json"), subset(pool, [6]))
    outcomes = ingest_incoming(campaign.uri, uris["pool"])
    assert [(o.file, o.status) for o in outcomes] == [
        ("team-a/result.json", "ingested"),
        ("team-b/result.json", "ingested"),
    ]
