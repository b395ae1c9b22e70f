"""The compiled pipelines, loaded back from YAML, run end to end under kfp.local on a tiny synthetic pool.

The round pipeline keeps its state in a bucket of the test's fake-gcs-server (images and
annotations too); a second run ingests the annotators' labels (and quarantines a broken file)
and advances the round. Two runs started at once: one wins the round, the other stops cleanly.
The campaign pipeline runs with local state and oracle labels, compiled with portable numerics,
and `taudis demo` (the README's first command) runs as a user runs it, shrunk.
The model trains for a few iterations only: these tests check the wiring and the state, not the
model's quality.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from taudis import storage
from taudis.campaign import Campaign, learning_curve
from taudis.campaign.invariants import check_campaign
from taudis.data.instances import read_shard
from taudis.storage.ledger import read_ledger
from taudis_kfp.pipelines.cli import compile_pipeline, run_local, typed_arguments

pytestmark = pytest.mark.pipeline

# A few iterations of the slim CPU model: enough to produce predictions, quick on a laptop.
TINY_TRAINING = (
    "TAUDIS.SCHEDULE.ENABLED False SOLVER.MAX_ITER 4 SOLVER.WARMUP_ITERS 1 SOLVER.IMS_PER_BATCH 2 "
    "SOLVER.CHECKPOINT_PERIOD 100 TAUDIS.NUM_THREADS 1"
)
BUDGET = 4


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory) -> Path:
    from taudis.data.synth import make_synthetic_dataset

    root = tmp_path_factory.mktemp("data")
    make_synthetic_dataset(root, num_images=30, seed=3, image_size=64, initial_labeled=4, val_fraction=0.2)
    return root


def _parameters(data: str, campaign_uri: str) -> dict:
    return {
        "campaign_uri": campaign_uri,
        "pool_annotations": storage.join(data, "annotations", "pool.json"),
        "labelled_annotations": storage.join(data, "annotations", "train.json"),
        "val_annotations": storage.join(data, "annotations", "val.json"),
        "image_root": storage.join(data, "images"),
        "config": "mask_rcnn_R18_slim_cpu.yaml",
        "train_opts": TINY_TRAINING,
        "budget": BUDGET,
    }


def _shards_written(kfp_root: Path) -> list:
    """Every instance shard the run's inference tasks wrote under the local pipeline root."""
    return [read_shard(header.parent) for header in sorted(kfp_root.rglob("shard-*/header.json"))]


def _annotators_return(pool: dict, image_ids: list[int]) -> dict:
    """What annotators send back for ``image_ids``: their ground truth, as a COCO file."""
    wanted = set(image_ids)
    return {
        "images": [img for img in pool["images"] if img["id"] in wanted],
        "annotations": [a for a in pool["annotations"] if a["image_id"] in wanted],
        "categories": pool["categories"],
    }


def test_round_pipeline_runs_twice_on_a_bucket_and_advances_the_round(tiny_dataset, gcs_bucket, tmp_path):
    data = storage.join(gcs_bucket, "data")
    storage.upload_tree(tiny_dataset, data)
    campaign = Campaign(storage.join(gcs_bucket, "campaigns", "c1"))
    package = compile_pipeline(tmp_path / "round.yaml", "round", "taudis", num_shards=2, target="local")
    arguments = typed_arguments(package, _parameters(data, campaign.uri))
    pool = storage.read_json(storage.join(data, "annotations", "pool.json"))
    seed_ids = {img["id"] for img in storage.read_json(storage.join(data, "annotations", "train.json"))["images"]}

    run_local(package, arguments, tmp_path / "kfp-root")

    shards = _shards_written(tmp_path / "kfp-root")
    assert len(shards) == 2
    # Each shard task read its own images from the bucket: none is missing or unreadable.
    assert all(shard.failed_images == [] for shard in shards)
    assert sum(shard.num_images for shard in shards) == len(pool["images"])
    ledger = read_ledger(campaign.ledger)
    (first,) = ledger.rounds
    assert first["round"] == 0 and first["strategy"] == "taudis" and first["state"] == "exported"
    assert len(first["images"]) == BUDGET
    assert set(first["images"]) == set(ledger.pending)
    assert ledger.labelled == seed_ids
    assert not set(first["images"]) & seed_ids
    round_dir = campaign.round_dir(0)
    selection = storage.read_json(storage.join(round_dir, "selection.json"))
    assert [img["image_id"] for img in selection["images"]] == first["images"]
    assert selection["schema"] == "taudis.selection" and selection["budget"] == BUDGET
    for name in ("preannotations.json", "manifest.jsonl", "labelstudio/tasks.json", "cvat/coco_1.0.zip"):
        assert storage.exists(storage.join(round_dir, "tasks", name)), name
    manifest = storage.read_bytes(storage.join(round_dir, "tasks", "manifest.jsonl")).decode().splitlines()
    assert len(manifest) == BUDGET
    report = storage.read_bytes(storage.join(round_dir, "report.html")).decode()
    assert report.count("data:image/") >= BUDGET  # thumbnails and the learning curve are inlined
    assert "Model of this round: mask AP" in report  # the round's evaluation reaches its report
    summary = storage.read_bytes(storage.join(round_dir, "summary.md")).decode()
    assert "taudis" in summary
    metrics = storage.read_json(storage.join(round_dir, "metrics.json"))
    assert metrics["labelled_images"] == len(seed_ids)
    assert 0.0 <= metrics["mask_ap"] <= 100.0
    assert check_campaign(campaign.uri) == []

    # Annotators return the labels of round 0 (and someone drops a broken file); the next
    # scheduled run ingests the good one, quarantines the other, and selects anew.
    returned = _annotators_return(pool, first["images"])
    storage.write_json(storage.join(campaign.incoming, "batch-000.json"), returned)
    storage.write_bytes(storage.join(campaign.incoming, "oops.json"), b'{"images": [')
    run_local(package, arguments, tmp_path / "kfp-root")

    ledger = read_ledger(campaign.ledger)
    assert [r["round"] for r in ledger.rounds] == [0, 1]
    second = ledger.rounds[1]["images"]
    assert len(second) == BUDGET
    assert ledger.labelled == seed_ids | set(first["images"])
    assert not set(second) & (seed_ids | set(first["images"]))
    assert set(ledger.pending) == set(second)
    intake = ledger.rounds[1]["ingest"]
    assert intake == {
        "ingested": ["batch-000.json"], "repeat": [], "rejected": ["oops.json"], "conflict": [], "empty": [],
        "withdrawn": [],
    }  # fmt: skip
    assert storage.exists(storage.join(campaign.rejected, "oops.json.report.json"))
    assert "oops.json" in storage.read_text(storage.join(campaign.round_dir(1), "summary.md"))
    report = storage.read_text(storage.join(campaign.round_dir(1), "report.html"))
    labels_in = report[report.index('<section id="labels-in">') :].split("</section>")[0]
    assert "batch-000.json" in labels_in and "oops.json" in labels_in
    labelled = storage.read_json(campaign.labelled)
    assert {img["id"] for img in labelled["images"]} == ledger.labelled
    assert storage.read_json(storage.join(campaign.round_dir(1), "metrics.json"))["labelled_images"] == len(
        ledger.labelled
    )
    assert [p["round"] for p in learning_curve(campaign.uri)] == [0, 1]
    assert check_campaign(campaign.uri) == []


def test_two_runs_started_at_once_one_wins_the_other_stops_cleanly(tiny_dataset, gcs_bucket, tmp_path):
    data = storage.join(gcs_bucket, "data")
    storage.upload_tree(tiny_dataset, data)
    campaign = Campaign(storage.join(gcs_bucket, "campaigns", "race"))
    package = compile_pipeline(tmp_path / "round.yaml", "round", "random", num_shards=1, target="local")
    params = [arg for k, v in _parameters(data, campaign.uri).items() for arg in ("-p", f"{k}={v}")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = [
        subprocess.Popen(
            [sys.executable, "-m", "taudis.cli", "pipeline", "run-local", str(package), *params,
             "--pipeline-root", str(tmp_path / f"kfp-{i}")],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
        )
        for i in range(2)
    ]  # fmt: skip
    outputs = [run.communicate(timeout=900)[0] for run in runs]
    codes = [run.returncode for run in runs]
    assert sorted(codes) == [0, 1], (codes, [o[-2000:] for o in outputs])
    loser = outputs[codes.index(1)]
    assert "RoundBusyError" in loser and "this run stops without changing anything" in loser
    ledger = read_ledger(campaign.ledger)
    (only,) = ledger.rounds
    assert only["state"] == "exported" and len(only["images"]) == BUDGET
    assert check_campaign(campaign.uri) == []


def test_campaign_pipeline_runs_with_oracle_labels_local_state_and_portable_numerics(tiny_dataset, tmp_path):
    campaign = Campaign(str(tmp_path / "campaign"))
    package = compile_pipeline(
        tmp_path / "campaign.yaml", "campaign", "random", rounds=1, num_shards=1, target="local", portable_numerics=True
    )
    arguments = typed_arguments(package, _parameters(str(tiny_dataset), campaign.uri))
    run_local(package, arguments, tmp_path / "kfp-root")

    ledger = read_ledger(campaign.ledger)
    selected, final = ledger.rounds
    assert selected["strategy"] == "random" and len(selected["images"]) == BUDGET
    assert [selected["state"], final["state"]] == ["exported", "closed"]
    assert not ledger.pending  # the oracle revealed the last round's labels before the final training
    seeds = json.loads((tiny_dataset / "annotations" / "train.json").read_text())["images"]
    assert ledger.labelled == {img["id"] for img in seeds} | set(selected["images"])
    curve = learning_curve(campaign.uri)
    assert [p["labelled_images"] for p in curve] == [len(seeds), len(seeds) + BUDGET]
    assert all(p["strategy"] == "random" for p in curve)
    from taudis.campaign.labels import annotations_by_image

    truth = annotations_by_image(json.loads((tiny_dataset / "annotations" / "pool.json").read_text()))
    truth |= annotations_by_image(json.loads((tiny_dataset / "annotations" / "train.json").read_text()))
    assert check_campaign(campaign.uri, expected=truth) == []
    # The package, not this process's environment, asked for portable numerics: both trainings ran them.
    assert not os.environ.get("TAUDIS_PORTABLE_NUMERICS")
    trained = [json.loads(p.read_text())["numerics"] for p in (tmp_path / "kfp-root").rglob("model/metrics.json")]
    assert len(trained) == 2
    assert all(n["portable"] and n["cpu_capability"] == "AVX2" and n["mkl_cbwr"] == "COMPATIBLE" and not n["onednn"]
               for n in trained)  # fmt: skip


def test_the_demo_command_runs_both_campaigns_and_writes_its_reports(tmp_path):
    """`make demo`'s command end to end, shrunk: dataset, two campaigns side by side, comparison report."""
    out = tmp_path / "demo"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "taudis.cli", "demo", "--out", str(out), "--images", "40", "--rounds", "1",
         "--budget", str(BUDGET), "--train-opts", TINY_TRAINING],
        capture_output=True, text=True, env=env, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    campaigns = sorted((out / "campaigns").iterdir())
    assert [c.name.split("-")[0] for c in campaigns] == ["random", "taudis"]
    seeds = {img["id"] for img in json.loads((out / "data" / "annotations" / "train.json").read_text())["images"]}
    chosen = {}
    for folder in campaigns:
        strategy = folder.name.split("-")[0]
        curve = learning_curve(str(folder))
        assert [(p["strategy"], p["labelled_images"]) for p in curve] == [
            (strategy, len(seeds)),
            (strategy, len(seeds) + BUDGET),
        ]
        (selected, _final) = read_ledger(Campaign(str(folder)).ledger).rounds
        chosen[strategy] = set(selected["images"])
        assert len(chosen[strategy]) == BUDGET and not chosen[strategy] & seeds
        assert (Path(Campaign(str(folder)).round_dir(0)) / "report.html").is_file()
        assert check_campaign(str(folder)) == []
    report = (out / "report.html").read_text()
    assert "4 completed rounds over 2 strategies" in report
    assert "<tr><td>taudis</td>" in report and "<tr><td>random</td>" in report  # a row per strategy
    assert (out / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert str((out / "report.html").resolve()) in done.stdout  # it tells the user where to look
