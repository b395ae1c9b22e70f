"""Withdrawing images for good (a data-deletion request): out of the pool, the labels and every label file."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from campaign_fixtures import selection_doc, square, subset, write_dataset

from taudis import storage
from taudis.campaign import rounds
from taudis.campaign.ingest import ingest_incoming
from taudis.campaign.invariants import check_campaign
from taudis.campaign.labels import annotations_by_image, labelled_dataset
from taudis.campaign.layout import Campaign
from taudis.campaign.pool import sync_pool
from taudis.campaign.steps import claim_round, ingest_labels
from taudis.campaign.withdraw import withdraw_images
from taudis.storage.ledger import LedgerError, read_ledger


@pytest.fixture
def campaign(storage_root: str) -> tuple[Campaign, dict[str, Any], str]:
    """Seed images 1..4 labelled; round 0 sent 5..12 to annotators (pending); 13..40 unlabelled."""
    uris = write_dataset(storage.join(storage_root, "data"))
    pool = storage.read_json(uris["pool"])
    campaign = Campaign(storage.join(storage_root, "c1"))
    claim_round(campaign.uri, uris["pool"], uris["seed"], "run-a")
    rounds.record_evaluation(campaign, 0, "run-a", {"labelled_images": 4, "mask_ap": 1.0, "box_ap": 1.0})
    rows = [im for im in pool["images"] if 5 <= im["id"] <= 12]
    manifest = "".join(json.dumps({"image_id": im["id"], **im}) + "\n" for im in rows).encode()
    staging = rounds.stage_files(campaign, 0, "run-a", {"tasks/manifest.jsonl": manifest})
    rounds.commit_selection(campaign, 0, "run-a", selection_doc(list(range(5, 13))), staging)
    rounds.publish_round(campaign, 0)
    return campaign, pool, uris["pool"]


def _drop(campaign: Campaign, name: str, doc: Any) -> None:
    storage.write_json(storage.join(campaign.incoming, name), doc)


def _label_files_holding(campaign: Campaign, image_id: int) -> list[str]:
    """Every file under labels/ (listed by the ledger or not) that holds ``image_id``."""
    found = []
    for uri in storage.list_uris(campaign.file("labels/")):
        document = json.loads(storage.read_bytes(uri))
        if any(int(im["id"]) == image_id for im in document["images"]) or any(
            int(a["image_id"]) == image_id for a in document["annotations"]
        ):
            found.append(uri)
    return found


def test_withdrawn_images_leave_the_pool_the_labels_and_every_label_file(campaign) -> None:
    campaign, pool, pool_uri = campaign
    _drop(campaign, "a.json", subset(pool, [5, 6, 7]))
    ingest_incoming(campaign.uri, pool_uri)
    fixed = copy.deepcopy(subset(pool, [6]))  # a correction: a.json's part gives way to a remainder
    fixed["annotations"][0].update(segmentation=square(0, 0, 3), bbox=[0, 0, 3, 3])
    storage.write_json(storage.join(campaign.corrections, "fix.json"), fixed)
    ingest_incoming(campaign.uri, pool_uri)
    assert _label_files_holding(campaign, 6)  # the replaced labels stay in storage, until a withdrawal
    kept_before = annotations_by_image(labelled_dataset(campaign))

    result = withdraw_images(campaign, [2, 6, 9, 30], pool)  # seed-labelled, labelled, pending, unlabelled

    assert (result.labelled, result.pending, result.unlabelled, result.already) == ([2, 6], [9], [30], [])
    ledger = read_ledger(campaign.ledger)
    assert ledger.withdrawn == {2, 6, 9, 30} and not ledger.withdrawn & ledger.pool
    assert not {2, 6} & ledger.labelled and 9 not in ledger.pending and 30 not in ledger.unlabelled
    assert ledger.counts()["withdrawn"] == 4 and ledger.counts()["pool"] == 36
    for image_id in (2, 6):
        assert _label_files_holding(campaign, image_id) == [], image_id
    view = storage.read_json(campaign.labelled)
    assert {int(im["id"]) for im in view["images"]} == set(ledger.labelled) and 2 not in ledger.labelled
    after = annotations_by_image(labelled_dataset(campaign))
    assert after == {k: v for k, v in kept_before.items() if k not in (2, 6)}  # every other label as it was
    assert any("incoming/done/" in place and "a.json" in place for place in result.elsewhere)
    assert any("round-000" in place and "[6, 9]" in place for place in result.elsewhere)
    assert check_campaign(campaign.uri) == []

    again = withdraw_images(campaign, [2, 6, 9, 30], pool)  # a rerun (an answer lost) reports from the record
    assert (again.labelled, again.pending, again.elsewhere) == (result.labelled, result.pending, result.elsewhere)
    assert again.label_files == [] and read_ledger(campaign.ledger).revision == ledger.revision
    later = withdraw_images(campaign, [2, 5], pool)  # another withdrawal, of one image withdrawn before
    assert later.already == [2] and later.labelled == [5]


def test_the_pool_file_never_brings_a_withdrawn_image_back(campaign) -> None:
    campaign, pool, _pool_uri = campaign
    withdraw_images(campaign, [3, 30], pool)
    change = sync_pool(campaign, pool)  # the team has not yet taken them out of the pool file
    ledger = read_ledger(campaign.ledger)
    assert change["withdrawn_listed"] == 2 and change["added"] == 0
    assert not {3, 30} & ledger.pool and check_campaign(campaign.uri) == []


def test_labels_of_a_withdrawn_image_are_left_out_and_the_rest_of_the_file_goes_in(campaign) -> None:
    campaign, pool, pool_uri = campaign
    withdraw_images(campaign, [6, 8], pool)
    dropped_from_file = {**pool, "images": [im for im in pool["images"] if im["id"] != 8]}
    storage.write_json(pool_uri, dropped_from_file)  # 8 is gone from the pool file too: its task names it
    _drop(campaign, "late.json", subset(pool, [5, 6, 7, 8]))  # the tool still had their tasks
    (outcome,) = ingest_incoming(campaign.uri, pool_uri)
    assert outcome.status == "ingested" and outcome.images == [5, 7] and outcome.withdrawn == [6, 8]
    ledger = read_ledger(campaign.ledger)
    assert {5, 7} <= ledger.labelled and not {6, 8} & (ledger.labelled | ledger.pool)
    assert _label_files_holding(campaign, 6) == []

    _drop(campaign, "only-withdrawn.json", subset(pool, [6]))
    (outcome,) = ingest_incoming(campaign.uri, pool_uri)
    assert outcome.status == "repeat" and outcome.withdrawn == [6] and outcome.problems == []


def test_a_round_whose_choice_is_not_published_refuses_a_withdrawal_until_released(campaign) -> None:
    campaign, pool, _pool_uri = campaign
    rounds.claim_round(campaign, "run-b")
    before = read_ledger(campaign.ledger)
    with pytest.raises(LedgerError, match=r"round 1 is claimed by run 'run-b'.*taudis campaign release") as err:
        withdraw_images(campaign, [30], pool)
    assert err.value.field == "rounds" and read_ledger(campaign.ledger).revision == before.revision
    rounds.release_claim(campaign)
    withdraw_images(campaign, [30], pool)
    assert 30 in read_ledger(campaign.ledger).withdrawn
    rounds.claim_round(campaign, "run-c")  # the next run takes the round over, without the image
    assert 30 not in read_ledger(campaign.ledger).unlabelled


def test_a_choice_committed_and_left_unpublished_is_published_then_withdrawn_from(campaign, tmp_path) -> None:
    """Its run died after the commit (retries spent): withdraw publishes it, as the next run would."""
    campaign, pool, _pool_uri = campaign
    rounds.claim_round(campaign, "run-b")
    rounds.record_evaluation(campaign, 1, "run-b", {"labelled_images": 4, "mask_ap": 1.0, "box_ap": 1.0})
    staging = rounds.stage_files(campaign, 1, "run-b", {"tasks/manifest.jsonl": b'{"image_id": 30}\n'})
    rounds.commit_selection(campaign, 1, "run-b", selection_doc([30, 31]), staging)
    assert read_ledger(campaign.ledger).round(1)["state"] == "selected"
    before = read_ledger(campaign.ledger)
    with pytest.raises(LedgerError, match=r"\[999\] are not in the campaign"):
        withdraw_images(campaign, [30, 999], pool)
    assert read_ledger(campaign.ledger) == before  # refused: not even the round published
    withdrawn = withdraw_images(campaign, [30], pool)
    assert withdrawn.pending == [30]  # chosen: in the published round's tasks, now withdrawn
    ledger = read_ledger(campaign.ledger)
    assert ledger.round(1)["state"] == "exported" and 30 in ledger.withdrawn and 31 in ledger.pending
    assert storage.exists(storage.join(campaign.round_dir(1), "tasks", "manifest.jsonl"))


def test_an_id_the_campaign_never_had_withdraws_nothing(campaign) -> None:
    campaign, pool, _pool_uri = campaign
    before = read_ledger(campaign.ledger)
    with pytest.raises(LedgerError, match=r"image ids \[999\] are not in the campaign"):
        withdraw_images(campaign, [5, 999], pool)
    assert read_ledger(campaign.ledger) == before


def _withdraw_killed_before_the_scrub(campaign: Campaign, pool: dict[str, Any], monkeypatch) -> None:
    """Withdraw seed image 2, the pod killed after the ledger update, before the label files' scrub."""
    from taudis.campaign import withdraw

    def killed(*args: Any, **kwargs: Any) -> list[str]:
        raise KeyboardInterrupt("the pod was killed after the ledger update")

    with monkeypatch.context() as patched:
        patched.setattr(withdraw, "scrub_label_files", killed)
        with pytest.raises(KeyboardInterrupt):
            withdraw_images(campaign, [2], pool)
    assert _label_files_holding(campaign, 2)  # the seed's old part, no longer listed, still holds it


def test_a_withdrawal_killed_before_it_scrubbed_the_label_files_finishes_when_run_again(campaign, monkeypatch) -> None:
    campaign, pool, _pool_uri = campaign
    _withdraw_killed_before_the_scrub(campaign, pool, monkeypatch)
    result = withdraw_images(campaign, [2], pool)
    assert result.labelled == [2] and result.label_files and _label_files_holding(campaign, 2) == []
    assert check_campaign(campaign.uri) == []


def test_a_withdrawal_killed_after_its_ledger_update_is_finished_by_the_next_rounds_ingest(
    campaign, monkeypatch, tmp_path
) -> None:
    from taudis.campaign.steps import ingest_labels

    campaign, pool, pool_uri = campaign
    _withdraw_killed_before_the_scrub(campaign, pool, monkeypatch)
    assert check_campaign(campaign.uri)  # invariant 5 broken, and nobody runs the withdrawal again
    index = rounds.claim_round(campaign, "run-b")
    ingest_labels(
        campaign.uri, pool_uri, index, "run-b", str(tmp_path / "l.json"), str(tmp_path / "u.json"), oracle=False
    )
    assert _label_files_holding(campaign, 2) == [] and check_campaign(campaign.uri) == []
    (record,) = storage.list_uris(campaign.withdrawals)
    assert storage.read_json(record)["scrubbed"] is True  # later rounds read the record, not every label file


def test_a_run_released_while_it_ingests_does_not_publish_a_withdrawn_image(campaign, monkeypatch, tmp_path) -> None:
    """The operator releases a run believed dead and withdraws an image while the run, alive after
    all, is still ingesting: the run stops at its claim check and publishes nothing."""
    import taudis.campaign.steps as steps_module
    from taudis.campaign.rounds import RoundLostError

    campaign, pool, pool_uri = campaign
    index = rounds.claim_round(campaign, "run-b")

    def released_meanwhile(*args: Any, **kwargs: Any) -> list[Any]:
        rounds.release_claim(campaign)
        withdraw_images(campaign, [2], pool)
        return []

    monkeypatch.setattr(steps_module, "ingest_incoming", released_meanwhile)
    with pytest.raises(RoundLostError):
        steps_module.ingest_labels(
            campaign.uri, pool_uri, index, "run-b", str(tmp_path / "l.json"), str(tmp_path / "u.json"), oracle=False
        )
    assert 2 not in {im["id"] for im in storage.read_json(campaign.labelled)["images"]}
    assert not (tmp_path / "l.json").exists()
    assert check_campaign(campaign.uri) == []


def test_a_withdrawal_landing_while_a_run_writes_labelled_json_is_not_undone(campaign, monkeypatch, tmp_path) -> None:
    """The operator releases a run believed dead and withdraws an image after the run's last claim
    check, before its write of labelled.json: the run's write of what it read (image 2 still
    labelled) must not stand over the withdrawal's, and the run is fenced at its next step."""
    from taudis.campaign.rounds import RoundLostError

    campaign, pool, pool_uri = campaign
    index = rounds.claim_round(campaign, "run-b")
    write = storage.write_json
    landed: list[bool] = []

    def withdrawn_just_before(uri: str, document: Any, *args: Any, **kwargs: Any) -> None:
        images = {im["id"] for im in document.get("images", [])} if isinstance(document, dict) else set()
        if uri == campaign.labelled and 2 in images and not landed:
            landed.append(True)
            rounds.release_claim(campaign)
            withdraw_images(campaign, [2], pool)  # publishes its own view first
        write(uri, document, *args, **kwargs)

    monkeypatch.setattr(storage, "write_json", withdrawn_just_before)
    labelled_out, unlabelled_out = tmp_path / "l.json", tmp_path / "u.json"
    with pytest.raises(RoundLostError):
        ingest_labels(campaign.uri, pool_uri, index, "run-b", str(labelled_out), str(unlabelled_out), oracle=False)
    assert landed
    assert 2 not in {im["id"] for im in storage.read_json(campaign.labelled)["images"]}
    assert check_campaign(campaign.uri) == []


def test_a_withdrawal_landing_between_a_publishers_ledger_read_and_its_part_reads_is_read_again(
    campaign, monkeypatch
) -> None:
    """The parts the publisher's ledger lists were scrubbed meanwhile: it reads the newer ledger, whose are whole."""
    from taudis.campaign import labels as labels_module
    from taudis.campaign.labels import publish_labelled

    campaign, pool, _pool_uri = campaign
    read = labels_module.read_parts
    landed: list[bool] = []

    def withdrawn_meanwhile(*args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        if not landed:
            landed.append(True)
            withdraw_images(campaign, [2], pool)  # scrubs the seed's part, which holds image 2
        return read(*args, **kwargs)

    monkeypatch.setattr(labels_module, "read_parts", withdrawn_meanwhile)
    dataset, ledger = publish_labelled(campaign, read_ledger(campaign.ledger))
    assert landed and 2 not in {im["id"] for im in dataset["images"]} and 2 in ledger.withdrawn
    assert check_campaign(campaign.uri) == []


def test_a_round_after_a_withdrawal_trains_and_chooses_without_the_image(campaign, tmp_path, capsys) -> None:
    campaign, pool, pool_uri = campaign
    _drop(campaign, "a.json", subset(pool, [5, 6, 7]))
    withdraw_images(campaign, [6, 20], pool)
    rounds.claim_round(campaign, "run-b")
    labelled_out, unlabelled_out = tmp_path / "labelled.json", tmp_path / "unlabelled.json"
    facts = ingest_labels(campaign.uri, pool_uri, 1, "run-b", str(labelled_out), str(unlabelled_out), oracle=False)
    labelled = json.loads(labelled_out.read_text())
    unlabelled = json.loads(unlabelled_out.read_text())
    assert {im["id"] for im in labelled["images"]} == {1, 2, 3, 4, 5, 7}  # the seed's, and a.json's less 6
    assert 6 not in {a["image_id"] for a in labelled["annotations"]}
    assert not {6, 20} & {im["id"] for im in unlabelled["images"]}
    assert facts["pool"]["withdrawn_listed"] == 2 and facts["ingest"]["withdrawn"] == ["a.json (images 6)"]
    from taudis.campaign.cli import main

    assert main(["show", campaign.uri]) == 0
    assert "the pool file still lists 2 withdrawn images" in capsys.readouterr().out


def test_the_cli_withdraws_and_names_what_still_shows_the_images(campaign, capsys) -> None:
    from taudis.campaign.cli import main

    campaign, _pool, pool_uri = campaign
    assert main(["withdraw", campaign.uri, "--pool", pool_uri, "7", "2"]) == 0
    out = capsys.readouterr().out
    assert "withdrawn, were labelled: 2" in out and "withdrawn, were pending: 7" in out
    assert "round-000" in out and "the team's to delete" in out
    assert main(["withdraw", campaign.uri, "--pool", pool_uri, "12345"]) == 1
    assert "not in the campaign" in capsys.readouterr().err
    assert main(["show", campaign.uri]) == 0
    assert "withdrawn 2" in capsys.readouterr().out


def test_a_withdrawn_file_put_back_in_the_pool_file_under_a_new_id_stays_out(campaign) -> None:
    campaign, pool, pool_uri = campaign
    withdraw_images(campaign, [6, 30], pool)
    back = copy.deepcopy(pool)  # the team's script re-adds the files still in the bucket, as new images
    back["images"] = [im for im in back["images"] if im["id"] not in (6, 30)]
    back["images"] += [dict(im, id=im["id"] + 1000) for im in pool["images"] if im["id"] in (6, 30)]
    storage.write_json(pool_uri, back)
    change = sync_pool(campaign, back)
    assert change["added"] == 0 and change["withdrawn_listed"] == 2
    assert not {6, 30, 1006, 1030} & read_ledger(campaign.ledger).pool
    _drop(campaign, "late.json", subset(pool, [5, 6]))  # named by file: the withdrawn image, not 1006
    (outcome,) = ingest_incoming(campaign.uri, pool_uri)
    assert outcome.status == "ingested" and outcome.images == [5] and outcome.withdrawn == [6]


def test_an_image_whose_file_name_is_unknown_is_not_withdrawn_half_way(campaign) -> None:
    """Dropping the image from the pool file first is the natural order; its name must still be known."""
    campaign, pool, _pool_uri = campaign
    dropped = {**pool, "images": [im for im in pool["images"] if im["id"] != 30]}
    before = read_ledger(campaign.ledger)
    with pytest.raises(LedgerError, match=r"image ids \[30\] are in no pool file given .* file names are unknown"):
        withdraw_images(campaign, [6, 30], dropped)  # 6 is pending: its name is in the round's tasks
    assert read_ledger(campaign.ledger) == before
    withdrawn = withdraw_images(campaign, [6, 30], pool)  # the pool file from before: both named
    assert withdrawn.pending == [6] and withdrawn.unlabelled == [30]
    back = {
        **dropped,
        "images": [*dropped["images"], {**next(im for im in pool["images"] if im["id"] == 30), "id": 1030}],
    }
    assert sync_pool(campaign, back)["withdrawn_listed"] == 2  # 6 as it was, 30 under its new id
    assert not {6, 30, 1030} & read_ledger(campaign.ledger).pool


def test_a_withdrawn_seed_image_no_pool_file_lists_is_still_known_by_its_name(campaign) -> None:
    campaign, pool, pool_uri = campaign
    withdraw_images(campaign, [2], pool)
    storage.write_json(pool_uri, {**pool, "images": [im for im in pool["images"] if im["id"] != 2]})
    _drop(campaign, "with-seed.json", subset(pool, [2, 5]))  # a full re-export of the tool's project
    (outcome,) = ingest_incoming(campaign.uri, pool_uri)
    assert outcome.status == "ingested" and outcome.images == [5] and outcome.withdrawn == [2]


def test_an_ingest_in_flight_when_its_image_is_withdrawn_leaves_no_copy_of_its_labels(campaign, monkeypatch) -> None:
    from taudis.campaign import ingest

    campaign, pool, pool_uri = campaign
    _drop(campaign, "a.json", subset(pool, [5, 6, 7]))
    real_add_part = ingest.add_part
    withdrawn: list[int] = []

    def withdrawn_meanwhile(target: Campaign, part: Any) -> Any:
        if not withdrawn:  # between the ingest's part written and its ledger update
            withdrawn.append(6)
            withdraw_images(campaign, [6], pool)
        return real_add_part(target, part)

    monkeypatch.setattr(ingest, "add_part", withdrawn_meanwhile)
    (outcome,) = ingest_incoming(campaign.uri, pool_uri)
    assert outcome.status == "ingested" and outcome.images == [5, 7] and outcome.withdrawn == [6]
    assert _label_files_holding(campaign, 6) == []
    assert {5, 7} <= read_ledger(campaign.ledger).labelled


def test_a_scrub_never_writes_back_a_stale_copy(campaign, monkeypatch) -> None:
    """Two withdrawals at once (of 5, and of 7): the other's scrub lands between this one's read and write."""
    from taudis.campaign import withdraw

    campaign, pool, pool_uri = campaign
    _drop(campaign, "a.json", subset(pool, [5, 6, 7]))
    ingest_incoming(campaign.uri, pool_uri)
    (a_part,) = [p for p in read_ledger(campaign.ledger).parts if 6 in p.images]
    withdraw_images(campaign, [6], pool)
    target = campaign.file(a_part.name)  # no longer listed; it now holds 5 and 7
    assert {im["id"] for im in storage.read_json(target)["images"]} == {5, 7}
    real_read = storage.read_versioned
    raced: list[str] = []

    def read_then_race(uri: Any) -> Any:
        versioned = real_read(uri)
        if str(uri) == target and not raced:
            raced.append(str(uri))
            other = json.loads(versioned.data)  # the other scrub takes 7 out, and writes first
            other["images"] = [im for im in other["images"] if im["id"] != 7]
            other["annotations"] = [a for a in other["annotations"] if a["image_id"] != 7]
            storage.write_json(target, other)
        return versioned

    monkeypatch.setattr(storage, "read_versioned", read_then_race)
    assert withdraw._scrub(target, frozenset({6, 5})) == "deleted"  # its first copy would have put 7 back
    assert raced == [target] and not storage.exists(target)
