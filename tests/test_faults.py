"""Fault injection against the real fake-gcs-server: every step of a round killed or cut off at every write.

A campaign lives in a bucket. Round 0 runs cleanly and chooses images; annotators return their
labels, plus a broken file, a re-export, a conflicting file and a correction (in
incoming/corrections/, relabelling a seed image). Round 1 then runs with one fault:
after the k-th write request of one step, for every k of every step that writes,

- ``kill``: the process dies right after the write landed (a pod killed at the worst moment);
  then either KFP retries the step (same run) and the round goes on, or the run is gone and the
  next run (another run id, the dead run's lease expired) does the round;
- ``drop``: the connection drops after the write landed, the answer is lost (the client library
  retries what is safe; a step that still fails is retried by KFP).

Then one more clean round runs. After the recovery and after the next round, one checker asserts
the campaign's invariants (taudis.campaign.invariants) and that every incoming file is in exactly
one of done/ and rejected/. Each step is a test of its own, which prints "N of N injected faults
survived" (``pytest -s tests/test_faults.py``). The model is not trained here: evaluation returns fixed numbers,
predictions are made up, and the report's pictures are stand-ins (their files are still written),
since the campaign's state is what is under test; the steps are the real ones.
"""

from __future__ import annotations

import copy
import itertools
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from campaign_fixtures import CATEGORIES, make_pool, square, subset, write_images, write_predictions

from taudis import storage
from taudis.campaign import rounds, steps
from taudis.campaign.invariants import check_campaign
from taudis.campaign.labels import annotations_by_image
from taudis.campaign.layout import Campaign
from taudis.select import select
from taudis.storage.ledger import read_ledger

pytestmark = pytest.mark.gcs

BUDGET = 4
_buckets = itertools.count()
STEPS = ("claim", "ingest", "evaluate", "export", "report", "commit")
MUTATING = ("POST", "PUT", "PATCH", "DELETE")


class Killed(BaseException):
    """The process died here: a BaseException, so neither taudis nor the client library catches it."""


class Transport:
    """Wraps the GCS client's HTTP session: counts write requests, and kills or drops the k-th one."""

    def __init__(self, http: Any):
        self.real = http.request
        self.count = 0
        self.fault: tuple[int, str] | None = None

    def __call__(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        import requests

        response = self.real(method, url, *args, **kwargs)
        if method.upper() in MUTATING:
            self.count += 1
            if self.fault is not None and self.count == self.fault[0]:
                mode, self.fault = self.fault[1], None
                if mode == "kill":
                    raise Killed(f"killed after write request {self.count} ({method} {url[:80]})")
                raise requests.exceptions.ConnectionError("connection dropped after the write landed")
        return response

    def arm(self, at: int | None, mode: str = "kill") -> None:
        self.count = 0
        self.fault = None if at is None else (at, mode)


@dataclass
class Env:
    campaign: Campaign
    pool: dict[str, Any]
    uris: dict[str, str]
    work: Path
    transport: Transport
    runs: int = 0
    writes: dict[str, int] = field(default_factory=dict)  # step -> write requests of a clean round 1
    corrected: dict[int, list[tuple[int, str]]] = field(default_factory=dict)  # labels that replace the truth


def small_report(
    selection_path: str, instances_dir: str, pool: Any, images: Any, history: Any, out: str, **kwargs: Any
):
    Path(out).write_text(f"<html>{len(history)} points</html>")
    return Path(out)


def small_curve(history: Any, out: Any, **kwargs: Any) -> Path:
    Path(out).write_bytes(b"\x89PNG stand-in")
    return Path(out)


def fixed_evaluation(model_dir: str, annotations: str, image_root: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
    return {"segm": {"AP": 30.0, "AP50": 50.0, "per_class": {}}, "bbox": {"AP": 25.0}}


class Round:
    """One round of one run, step by step, with the real step functions (see the module docstring)."""

    def __init__(self, env: Env, run: str):
        self.env, self.run = env, run
        self.dir = env.work / run
        self.dir.mkdir(parents=True, exist_ok=True)
        self.index = -1

    def step(self, name: str) -> None:
        env, d = self.env, self.dir
        campaign, uris = env.campaign.uri, env.uris
        if name == "claim":
            self.index = steps.claim_round(campaign, uris["pool"], uris["seed"], self.run)
        elif name == "ingest":
            steps.ingest_labels(
                campaign, uris["pool"], self.index, self.run, str(d / "l.json"), str(d / "u.json"), oracle=False
            )
        elif name == "evaluate":
            steps.evaluate_round(
                "model",
                f"model://{self.run}",
                uris["val"],
                uris["images"],
                str(d / "l.json"),
                campaign,
                self.index,
                self.run,
            )
        elif name == "export":
            unlabelled = json.loads((d / "u.json").read_text())["images"]
            write_predictions(d / "shards", unlabelled, [c["name"] for c in CATEGORIES])
            select(d / "shards", BUDGET, "random", seed=self.index).save(d / "selection.json")
            steps.export_tasks(
                str(d / "selection.json"), str(d / "shards"), uris["pool"], uris["images"], str(d / "tasks")
            )
        elif name == "report":
            steps.report_round(
                str(d / "selection.json"), str(d / "shards"), uris["pool"], uris["images"], campaign, self.index,
                str(d / "summary.md"), str(d / "report.html"),
            )  # fmt: skip
        elif name == "commit":
            steps.commit_round(
                str(d / "selection.json"), str(d / "tasks"), str(d / "summary.md"), str(d / "report.html"),
                campaign_uri=campaign, round_index=self.index, run_id=self.run,
            )  # fmt: skip

    def run_all(self, start: int = 0, fault: tuple[str, int, str] | None = None) -> None:
        for name in STEPS[start:]:
            self.env.transport.arm(fault[1] if fault and fault[0] == name else None, fault[2] if fault else "kill")
            self.step(name)
            self.env.transport.arm(None)


def new_run(env: Env) -> Round:
    env.runs += 1
    return Round(env, f"run-{env.runs}")


def annotators_return(env: Env) -> dict[str, Any]:
    """Drop round 0's labels into incoming/, with a broken file, a re-export and a conflicting file."""
    ledger = read_ledger(env.campaign.ledger)
    pending = sorted(ledger.pending)
    labelled = sorted(ledger.labelled)
    files = {
        "a-good.json": subset(env.pool, pending),
        "b-broken.json": {"images": [{"id": pending[0]}], "annotations": "none", "categories": []},
        "c-repeat.json": subset(env.pool, labelled[:2]),
    }
    conflict = copy.deepcopy(subset(env.pool, labelled[2:3]))
    conflict["annotations"][0].update(segmentation=square(0, 0, 2), bbox=[0, 0, 2, 2])
    files["d-conflict.json"] = conflict
    for name, doc in files.items():
        storage.write_json(storage.join(env.campaign.incoming, name), doc)
    fix = copy.deepcopy(subset(env.pool, labelled[3:4]))  # a review redraws a seed image's first instance
    fix["annotations"][0].update(segmentation=square(1, 1, 3), bbox=[1, 1, 3, 3])
    storage.write_json(storage.join(env.campaign.corrections, "e-fix.json"), fix)
    env.corrected = annotations_by_image(fix)
    return {"done": {"a-good.json", "c-repeat.json", "e-fix.json"}, "rejected": {"b-broken.json", "d-conflict.json"}}


def check(env: Env, files: dict[str, set[str]]) -> list[str]:
    """The campaign's invariants, and every incoming file in exactly one of done/ and rejected/."""
    truth = {**annotations_by_image(env.pool), **env.corrected}
    problems = check_campaign(env.campaign.uri, expected=truth)
    names = {
        where: {
            os.path.basename(u)
            for u in storage.list_uris(getattr(env.campaign, where) + "/")
            if not u.endswith(".report.json")
        }
        for where in ("done", "rejected")
    }
    waiting = {os.path.basename(u) for u in env.campaign.incoming_files() + env.campaign.correction_files()}
    if waiting:
        problems.append(f"files stuck in incoming/: {sorted(waiting)}")
    for where, expected in files.items():
        if names[where] != expected:
            problems.append(f"{where}/ holds {sorted(names[where])}, expected {sorted(expected)}")
    for name in names["rejected"]:
        if not storage.exists(storage.join(env.campaign.rejected, name + ".report.json")):
            problems.append(f"rejected/{name} has no report")
    return problems


@pytest.fixture
def make_env(gcs_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[], Env]:
    """A campaign in a fresh bucket folder after one clean round, with the transport armed for faults."""
    import taudis.report
    from taudis.model import evaluate

    monkeypatch.setattr(evaluate, "evaluate_model", fixed_evaluation)
    monkeypatch.setattr(taudis.report, "round_html", small_report)
    monkeypatch.setattr(taudis.report, "learning_curve_png", small_curve)
    http = storage.gcs_client()._http
    transport = Transport(http)
    monkeypatch.setattr(http, "request", transport)
    monkeypatch.setenv(rounds.LEASE_ENV, "0")  # a dead run's claim may be taken over at once

    def make() -> Env:
        # A bucket per campaign: the server's listings cost grows with the bucket's objects.
        root = gcs_server.create_bucket(f"faults-{os.getpid()}-{next(_buckets)}")
        pool = make_pool(24)
        uris = {
            "pool": storage.join(root, "pool.json"),
            "seed": storage.join(root, "seed.json"),
            "val": storage.join(root, "val.json"),
        }
        storage.write_json(uris["pool"], pool)
        storage.write_json(uris["seed"], subset(pool, [1, 2, 3, 4]))
        storage.write_json(uris["val"], subset(pool, [1, 2]))
        uris["images"] = write_images(root, pool)
        env = Env(Campaign(storage.join(root, "campaign")), pool, uris, tmp_path / root.rsplit("/", 1)[-1], transport)
        new_run(env).run_all()
        return env

    return make


def _recover(env: Env, failed: Round, step: str, variant: str) -> None:
    if variant == "retry":  # KFP retries the failed step of the same run, then the run goes on
        failed.run_all(start=STEPS.index(step))
    else:  # the run is gone; the next run does the round
        new_run(env).run_all()


def test_a_clean_round_keeps_every_invariant(make_env: Callable[[], Env]) -> None:
    env = make_env()
    files = annotators_return(env)
    new_run(env).run_all()
    assert check(env, files) == []
    ledger = read_ledger(env.campaign.ledger)
    assert [r["state"] for r in ledger.rounds] == ["exported", "exported"]
    assert ledger.round(1)["ingest"]["rejected"] == ["b-broken.json"] and ledger.round(1)["ingest"]["conflict"]
    summary = storage.read_text(storage.join(env.campaign.round_dir(1), "summary.md"))
    assert "b\\-broken.json" in summary and "d\\-conflict.json" in summary  # the report says what was rejected


def _write_counts(make_env: Callable[[], Env]) -> dict[str, int]:
    env = make_env()
    annotators_return(env)
    run = new_run(env)
    counts = {}
    for name in STEPS:
        env.transport.arm(None)
        run.step(name)
        counts[name] = env.transport.count
    return counts


@pytest.mark.parametrize("step", STEPS)
def test_every_fault_at_every_write_of_the_step_is_survived(make_env: Callable[[], Env], step: str) -> None:
    counts = _write_counts(make_env)
    assert counts["claim"] > 0 and counts["ingest"] > 0 and counts["commit"] > 0
    faults = [
        (k, mode, variant)
        for k in range(1, counts[step] + 1)
        for mode, variant in (("kill", "retry"), ("kill", "next run"), ("drop", "retry"))
    ]
    survived, failures = 0, []
    for k, mode, variant in faults:
        env = make_env()
        files = annotators_return(env)
        run = new_run(env)
        try:
            run.run_all(fault=(step, k, mode))
        except (Killed, Exception):
            _recover(env, run, step, variant)
        after_recovery = check(env, files)
        new_run(env).run_all()  # the campaign goes on
        after_next = check(env, files)
        rounds_done = [r["state"] for r in read_ledger(env.campaign.ledger).rounds]
        # Three rounds at least; four when the dead run's commit had landed (the next run published
        # that round, then ran its own).
        if after_recovery or after_next or len(rounds_done) < 3 or set(rounds_done) != {"exported"}:
            failures.append((k, mode, variant, after_recovery + after_next, rounds_done))
        else:
            survived += 1
    print(f"\n{step}: {survived} of {len(faults)} injected faults survived ({counts[step]} write requests)")
    assert not failures, failures[:5]
