"""The round's state machine: claims and leases, takeovers, commits, publishing, recovery, roll back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from campaign_fixtures import write_dataset, write_round_outputs

from taudis import storage
from taudis.campaign import rounds
from taudis.campaign.invariants import check_campaign
from taudis.campaign.layout import Campaign
from taudis.campaign.rounds import RoundBusyError, RoundLostError
from taudis.campaign.steps import (
    claim_round,
    close_round,
    commit_round,
    finetune_weights,
    ingest_labels,
    training_warnings,
)
from taudis.storage.ledger import read_ledger

METRICS = {"labelled_images": 4, "mask_ap": 12.5, "box_ap": 10.0}


@pytest.fixture
def data(storage_root: str) -> dict[str, str]:
    return {**write_dataset(storage.join(storage_root, "data")), "campaign": storage.join(storage_root, "c1")}


def _claim(data: dict[str, str], run: str) -> int:
    return claim_round(data["campaign"], data["pool"], data["seed"], run)


def _ingest(data: dict[str, str], round_index: int, run: str, tmp: Path) -> None:
    ingest_labels(
        data["campaign"], data["pool"], round_index, run, str(tmp / "l.json"), str(tmp / "u.json"), oracle=True
    )


def _commit(data: dict[str, str], round_index: int, run: str, images: list[int], tmp: Path) -> None:
    out = write_round_outputs(tmp / f"out-{run}-{round_index}", images)
    commit_round(
        out["selection"],
        out["tasks"],
        out["summary"],
        out["report"],
        campaign_uri=data["campaign"],
        round_index=round_index,
        run_id=run,
    )


def test_a_round_from_claim_to_export(data: dict[str, str], tmp_path: Path) -> None:
    campaign = Campaign(data["campaign"])
    assert _claim(data, "run-a") == 0
    assert _claim(data, "run-a") == 0  # a retry of the claim step
    _ingest(data, 0, "run-a", tmp_path)
    rounds.record_evaluation(campaign, 0, "run-a", METRICS, "model://a")
    _commit(data, 0, "run-a", [7, 5, 9], tmp_path)
    ledger = read_ledger(campaign.ledger)
    record = ledger.round(0)
    assert record["state"] == "exported" and record["images"] == [7, 5, 9] and ledger.pending == {5, 7, 9}
    assert record["labelled_images"] == 4 and record["pool"]["pool"] == 40
    for name in ("selection.json", "summary.md", "report.html", "tasks/manifest.jsonl", "metrics.json"):
        assert storage.exists(storage.join(campaign.round_dir(0), name)), name
    assert storage.list_uris(campaign.file("staging") + "/") == []  # published, then cleaned
    assert storage.exists(campaign.learning_curve)
    assert check_campaign(campaign.uri) == []
    assert _claim(data, "run-b") == 1  # the next run gets the next round


def test_a_second_live_run_stops_without_changing_anything(data: dict[str, str]) -> None:
    campaign = Campaign(data["campaign"])
    _claim(data, "run-a")
    before = read_ledger(campaign.ledger)
    with pytest.raises(RoundBusyError, match="being run by 'run-a'"):
        _claim(data, "run-b")
    assert read_ledger(campaign.ledger) == before


def test_an_expired_claim_is_taken_over_and_the_old_run_is_fenced_off(
    data: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    campaign = Campaign(data["campaign"])
    _claim(data, "run-a")
    rounds.record_evaluation(campaign, 0, "run-a", {**METRICS, "mask_ap": 99.0})
    monkeypatch.setenv(rounds.LEASE_ENV, "0")
    assert _claim(data, "run-b") == 0
    record = read_ledger(campaign.ledger).round(0)
    assert record["run"] == "run-b" and "metrics" not in record  # the loser's numbers are gone
    assert record["history"][0]["run"] == "run-a"
    with pytest.raises(RoundLostError):
        rounds.record_evaluation(campaign, 0, "run-a", METRICS)
    with pytest.raises(RoundLostError):
        _commit(data, 0, "run-a", [5, 6], tmp_path)
    assert storage.list_uris(campaign.file("staging") + "/") == []  # fenced before staging anything
    rounds.record_evaluation(campaign, 0, "run-b", METRICS)
    _commit(data, 0, "run-b", [8, 9], tmp_path)
    assert [p["mask_ap"] for p in rounds.curve_of(read_ledger(campaign.ledger))] == [12.5]
    assert check_campaign(campaign.uri) == []


def test_a_commit_left_unpublished_is_published_by_the_next_run(data: dict[str, str], tmp_path: Path) -> None:
    campaign = Campaign(data["campaign"])
    _claim(data, "run-a")
    rounds.record_evaluation(campaign, 0, "run-a", METRICS)
    out = write_round_outputs(tmp_path / "out", [11, 12])
    staging = rounds.stage_files(
        campaign, 0, "run-a", {"tasks/manifest.jsonl": Path(out["tasks"], "manifest.jsonl").read_bytes()}
    )
    rounds.commit_selection(campaign, 0, "run-a", {"images": [{"image_id": 11}, {"image_id": 12}]}, staging)
    # The step died here: images pending, tasks only in staging.
    assert any("pending image" in v for v in check_campaign(campaign.uri))
    assert _claim(data, "run-b") == 1
    assert read_ledger(campaign.ledger).round(0)["state"] == "exported"
    assert check_campaign(campaign.uri) == []


def test_a_round_whose_staging_is_gone_rolls_back(data: dict[str, str], tmp_path: Path) -> None:
    campaign = Campaign(data["campaign"])
    _claim(data, "run-a")
    staging = rounds.stage_files(campaign, 0, "run-a", {"tasks/manifest.jsonl": b'{"image_id": 11}\n'})
    rounds.commit_selection(campaign, 0, "run-a", {"images": [{"image_id": 11}]}, staging)
    storage.delete(campaign.file(staging))  # someone cleaned the bucket
    assert _claim(data, "run-b") == 0  # round 0 again
    ledger = read_ledger(campaign.ledger)
    assert 11 in ledger.unlabelled and not ledger.pending
    assert ledger.round(0)["history"][-1]["state"] == "rolled_back"
    assert check_campaign(campaign.uri) == []


@pytest.mark.parametrize("damage", ["truncated", "not a zip"])
def test_a_damaged_staging_archive_rolls_back_like_a_missing_one(
    data: dict[str, str], tmp_path: Path, damage: str
) -> None:
    campaign = Campaign(data["campaign"])
    _claim(data, "run-a")
    staging = rounds.stage_files(campaign, 0, "run-a", {"tasks/manifest.jsonl": b'{"image_id": 11}\n' * 200})
    rounds.commit_selection(campaign, 0, "run-a", {"images": [{"image_id": 11}]}, staging)
    whole = storage.read_bytes(campaign.file(staging))
    storage.write_bytes(campaign.file(staging), whole[: len(whole) // 2] if damage == "truncated" else b"<html>")
    assert _claim(data, "run-b") == 0  # not stuck: every later run would fail here
    ledger = read_ledger(campaign.ledger)
    assert 11 in ledger.unlabelled and not ledger.pending
    assert check_campaign(campaign.uri) == []


def test_a_round_rolled_back_and_claimed_again_by_the_same_run_commits_anew(
    data: dict[str, str], tmp_path: Path
) -> None:
    """The campaign pipeline runs every round under one run id, so the run that rolls a round back
    may be the one that chose it; its second commit must not be taken for a retry of the first."""
    campaign = Campaign(data["campaign"])
    _claim(data, "run-a")
    rounds.record_evaluation(campaign, 0, "run-a", METRICS)
    staging = rounds.stage_files(campaign, 0, "run-a", {"tasks/manifest.jsonl": b'{"image_id": 11}\n'})
    rounds.commit_selection(campaign, 0, "run-a", {"images": [{"image_id": 11}]}, staging)
    storage.delete(campaign.file(staging))
    assert _claim(data, "run-a") == 0
    rounds.record_evaluation(campaign, 0, "run-a", METRICS)
    _commit(data, 0, "run-a", [12, 13], tmp_path)
    ledger = read_ledger(campaign.ledger)
    assert ledger.round(0)["state"] == "exported" and ledger.pending == {12, 13}
    assert check_campaign(campaign.uri) == []


def test_a_losers_staging_is_cleaned_and_never_published(
    data: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    campaign = Campaign(data["campaign"])
    _claim(data, "run-a")
    rounds.stage_files(campaign, 0, "run-a", {"tasks/manifest.jsonl": b'{"image_id": 30}\n'})  # then it died
    monkeypatch.setenv(rounds.LEASE_ENV, "0")
    _claim(data, "run-b")
    listed = storage.list_uris(campaign.file("staging") + "/")
    assert listed == [] and not storage.exists(storage.join(campaign.round_dir(0), "tasks", "manifest.jsonl"))


def test_an_evaluation_only_round_closes_the_curve(data: dict[str, str], tmp_path: Path) -> None:
    campaign = Campaign(data["campaign"])
    _claim(data, "run-a")
    rounds.record_evaluation(campaign, 0, "run-a", METRICS)
    _commit(data, 0, "run-a", [5, 6], tmp_path)
    assert _claim(data, "run-a") == 1
    _ingest(data, 1, "run-a", tmp_path)  # the oracle reveals round 0's images
    rounds.record_evaluation(campaign, 1, "run-a", {**METRICS, "labelled_images": 6, "mask_ap": 20.0})
    close_round(campaign.uri, 1, "run-a")
    close_round(campaign.uri, 1, "run-a")  # a retry
    ledger = read_ledger(campaign.ledger)
    assert [r["state"] for r in ledger.rounds] == ["exported", "closed"]
    assert [(p["labelled_images"], p["mask_ap"]) for p in rounds.curve_of(ledger)] == [(4, 12.5), (6, 20.0)]
    assert storage.read_json(storage.join(campaign.round_dir(1), "metrics.json"))["mask_ap"] == 20.0
    assert check_campaign(campaign.uri) == []


def test_commit_refuses_images_that_are_not_choosable(data: dict[str, str], tmp_path: Path) -> None:
    _claim(data, "run-a")
    with pytest.raises(Exception, match="already labelled"):
        _commit(data, 0, "run-a", [1], tmp_path)  # image 1 is in the seed
    with pytest.raises(Exception, match="not in the pool"):
        _commit(data, 0, "run-a", [999], tmp_path)


def test_images_added_to_the_pool_file_are_chosen_from_the_next_round(data: dict[str, str], tmp_path: Path) -> None:
    from campaign_fixtures import make_pool

    campaign = Campaign(data["campaign"])
    _claim(data, "run-a")
    rounds.record_evaluation(campaign, 0, "run-a", METRICS)
    _commit(data, 0, "run-a", [5, 6], tmp_path)
    pool = storage.read_json(data["pool"])
    extra = make_pool(100, first_id=500)
    storage.write_json(data["pool"], {**pool, "images": pool["images"] + extra["images"]})
    assert _claim(data, "run-b") == 1
    ingest_labels(
        data["campaign"], data["pool"], 1, "run-b", str(tmp_path / "l.json"), str(tmp_path / "u.json"), oracle=True
    )
    unlabelled = {im["id"] for im in storage.read_json(str(tmp_path / "u.json"))["images"]}
    assert set(range(500, 600)) <= unlabelled  # the round's inference and selection see them
    assert read_ledger(campaign.ledger).round(1)["pool"] == {"added": 100, "removed": 0, "pool": 140}
    rounds.record_evaluation(campaign, 1, "run-b", METRICS)
    _commit(data, 1, "run-b", [512, 587], tmp_path)  # new images can be chosen and committed
    assert {512, 587} <= read_ledger(campaign.ledger).pending
    assert check_campaign(campaign.uri) == []


def test_a_retried_ingest_step_reports_the_pool_change_of_its_first_attempt(
    data: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from campaign_fixtures import make_pool

    import taudis.campaign.steps as steps_module

    campaign = Campaign(data["campaign"])
    _claim(data, "run-a")
    rounds.record_evaluation(campaign, 0, "run-a", METRICS)
    _commit(data, 0, "run-a", [5, 6], tmp_path)
    pool = storage.read_json(data["pool"])
    storage.write_json(data["pool"], {**pool, "images": pool["images"] + make_pool(100, first_id=500)["images"]})
    assert _claim(data, "run-b") == 1
    args = (data["campaign"], data["pool"], 1, "run-b", str(tmp_path / "l.json"), str(tmp_path / "u.json"))

    def dies(*_: object) -> None:
        raise OSError("the pod was preempted")

    with monkeypatch.context() as patched:  # the first attempt dies after the sync, before its facts
        patched.setattr(steps_module, "reveal_oracle_labels", dies)
        with pytest.raises(OSError, match="preempted"):
            ingest_labels(*args, oracle=True)
    assert 500 in read_ledger(campaign.ledger).pool  # the sync landed
    facts = ingest_labels(*args, oracle=True)  # the retry finds nothing new to sync
    assert facts["pool"] == read_ledger(campaign.ledger).round(1)["pool"] == {"added": 100, "removed": 0, "pool": 140}
    assert check_campaign(campaign.uri) == []


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (lambda images: images[1].update(id=str(images[0]["id"])), "id must be an integer"),
        (lambda images: images[1].update(file_name=images[0]["file_name"]), "also image id"),
    ],
)
def test_a_pool_file_that_would_merge_or_split_images_is_refused_before_the_ledger_changes(
    data: dict[str, str], tmp_path: Path, edit, words: str
) -> None:
    from taudis.data.coco import CocoFormatError

    _claim(data, "run-a")
    rounds.record_evaluation(Campaign(data["campaign"]), 0, "run-a", METRICS)
    _commit(data, 0, "run-a", [5, 6], tmp_path)
    before = storage.read_bytes(Campaign(data["campaign"]).ledger)
    pool = storage.read_json(data["pool"])
    edit(pool["images"])
    storage.write_json(data["pool"], pool)
    with pytest.raises(CocoFormatError, match=words) as caught:
        _claim(data, "run-b")
    assert data["pool"] in str(caught.value) and "image" in str(caught.value)
    assert storage.read_bytes(Campaign(data["campaign"]).ledger) == before


def test_fine_tuning_starts_from_the_latest_model_and_says_so_when_it_is_gone(
    data: dict[str, str], storage_root: str, tmp_path: Path
) -> None:
    campaign = Campaign(data["campaign"])
    models = [storage.join(storage_root, f"pipeline-root/model-{r}") for r in range(2)]
    for model in models:
        storage.write_bytes(storage.join(model, "model_final.pth"), b"weights")
    for r in range(2):
        assert _claim(data, "run-a") == r
        _ingest(data, r, "run-a", tmp_path)
        rounds.record_evaluation(campaign, r, "run-a", METRICS, models[r])
        _commit(data, r, "run-a", [7 + r], tmp_path)
    assert finetune_weights(campaign, 0) == ("", ""), "round 0 has no earlier model"
    assert finetune_weights(campaign, 1) == (storage.join(models[0], "model_final.pth"), "")
    assert finetune_weights(campaign, 2) == (storage.join(models[1], "model_final.pth"), "")

    storage.delete(storage.join(models[1], "model_final.pth"))  # the artifact store expired it
    weights, note = finetune_weights(campaign, 2)
    assert weights == "" and "round 1's model" in note and "full schedule" in note
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "metrics.json").write_text(json.dumps({"data_fit": {"problems": ["small objects"]}, "notes": [note]}))
    assert training_warnings(str(model_dir)) == ["small objects", note], "the round's report shows the note"
