"""One benchmark campaign, through the campaign pipeline's own code path, resumable; and what it measured.

The campaign pipeline is compiled for the local target and run with kfp.local, exactly as
``taudis pipeline run-local`` runs it. A campaign cut short (a killed machine) is finished by
running the pipeline again with the rounds its ledger still lacks: the round state machine
takes the dead run's round over (TAUDIS_ROUND_LEASE is 0 here: nothing else runs this campaign).

Layout of a campaign's folder::

    campaign/           the campaign's state (ledger, labels, rounds/...)
    kfp-root/           kfp.local's artifacts: models, instance shards, selections
    pipeline-<n>.yaml   the compiled pipeline of each (re)start, n = selection rounds it ran
    log.txt             every step's output
    attempts.json       when each (re)start began and ended: the campaign's wall time is their sum
    result.json         written last: the learning curve, diagnostics and timings
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any

from bench.al_benchmark.diagnostics import round_diagnostics
from bench.al_benchmark.plan import DEFAULT_EMBEDDING_LAYER, DEFAULT_PARAMS, Dataset, Spec


def campaign_folder(work: Path, dataset: Dataset, spec: Spec) -> Path:
    return work / "campaigns" / dataset.name / spec.key


def progress(campaign_uri: str) -> tuple[int, bool]:
    """(selection rounds exported, whether the final evaluation is closed) of a campaign so far."""
    from taudis.campaign import Campaign
    from taudis.storage.ledger import read_ledger

    ledger_uri = Campaign(campaign_uri).ledger
    if not Path(ledger_uri).is_file():
        return 0, False
    rounds = read_ledger(ledger_uri).rounds
    return sum(r["state"] == "exported" for r in rounds), any(r["state"] == "closed" for r in rounds)


def run_campaign(spec: Spec, dataset: Dataset, work: Path, threads: int) -> dict[str, Any]:
    """Run (or finish) one campaign and return its result (also written to result.json)."""
    from taudis_kfp.pipelines.cli import compile_pipeline, run_local, typed_arguments

    folder = campaign_folder(work, dataset, spec)
    done = folder / "result.json"
    if done.is_file():
        return dict(json.loads(done.read_text()))
    folder.mkdir(parents=True, exist_ok=True)
    campaign_uri = str(folder / "campaign")
    os.environ["TAUDIS_ROUND_LEASE"] = "0"
    os.environ["OMP_NUM_THREADS"] = str(threads)
    start_attempt(folder, time.time())
    exported, closed = progress(campaign_uri)
    if exported < spec.rounds or not closed:
        remaining = spec.rounds - exported
        package = compile_pipeline(
            folder / f"pipeline-{remaining}.yaml", "campaign", spec.variant.strategy, rounds=remaining, num_shards=1,
            target="local",
        )  # fmt: skip
        params = spec.params
        arguments = typed_arguments(
            package,
            {
                "campaign_uri": campaign_uri,
                "pool_annotations": str(dataset.pool),
                "labelled_annotations": str(dataset.initial(spec.seed)),
                "val_annotations": str(dataset.val),
                "image_root": str(dataset.image_root),
                "config": spec.config,
                "train_opts": f"{spec.train_opts} TAUDIS.NUM_THREADS {threads}{_layer_opts(spec)}".strip(),
                "finetune": spec.finetune,
                "budget": spec.budget,
                "seed": spec.seed,
                **{k: params[k] for k in DEFAULT_PARAMS},
            },
        )
        with open(folder / "log.txt", "a") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            run_local(package, arguments, folder / "kfp-root")
    result = collect(spec, dataset, folder)
    result["seconds"], result["attempts"] = wall_seconds(folder, time.time())
    done.write_text(json.dumps(result, indent=1) + "\n")
    return result


def start_attempt(folder: Path, now: float) -> None:
    """Record that an attempt at the campaign starts at ``now`` (epoch seconds).

    An earlier attempt without an end was cut short (a killed machine); it ended when it last wrote
    anything in the folder (its log, a checkpoint, a step's output), as close as what is left tells.
    """
    path = folder / "attempts.json"
    attempts = json.loads(path.read_text()) if path.is_file() else []
    if attempts and "ended" not in attempts[-1]:
        attempts[-1]["ended"] = max([attempts[-1]["started"], *_write_times(folder, skip=path)])
    attempts.append({"started": now})
    path.write_text(json.dumps(attempts, indent=1) + "\n")


def _write_times(folder: Path, *, skip: Path) -> list[float]:
    return [
        os.stat(os.path.join(root, name)).st_mtime
        for root, _, names in os.walk(folder)
        for name in names
        if os.path.join(root, name) != str(skip)
    ]


def wall_seconds(folder: Path, now: float) -> tuple[float, int]:
    """(wall seconds of every attempt together, the number of attempts), the last ending ``now``."""
    path = folder / "attempts.json"
    attempts = json.loads(path.read_text())
    attempts[-1]["ended"] = now
    path.write_text(json.dumps(attempts, indent=1) + "\n")
    return round(sum(a["ended"] - a["started"] for a in attempts), 1), len(attempts)


def _layer_opts(spec: Spec) -> str:
    # a campaign's models carry the layer in their config, so every round's inference embeds by it
    layer = spec.variant.embedding_layer
    return "" if layer == DEFAULT_EMBEDDING_LAYER else f" TAUDIS.EMBEDDING_LAYER {layer}"


def collect(spec: Spec, dataset: Dataset, folder: Path) -> dict[str, Any]:
    """The campaign's learning curve (with each round's training cost) and its selections' diagnostics."""
    from taudis.campaign import Campaign
    from taudis.storage.ledger import read_ledger

    campaign = Campaign(str(folder / "campaign"))
    ledger = read_ledger(campaign.ledger)
    base = {"dataset": dataset.name, "variant": spec.variant.name, "strategy": spec.variant.strategy, "seed": spec.seed}
    curve, diagnostics = [], []
    for record in ledger.rounds:
        metrics = record.get("metrics") or {}
        model = Path(record.get("model_uri") or "")
        train = json.loads((model / "metrics.json").read_text()) if (model / "metrics.json").is_file() else {}
        curve.append(
            {
                **base,
                "round": record["round"],
                "labelled_images": metrics.get("labelled_images"),
                "mask_ap": metrics.get("mask_ap"),
                "mask_ap50": metrics.get("mask_ap50"),
                "box_ap": metrics.get("box_ap"),
                "iterations": train.get("iterations"),
                "train_seconds": train.get("seconds"),
            }
        )
        if record["state"] == "exported":
            selection = json.loads(Path(campaign.round_dir(record["round"]), "selection.json").read_text())
            found = round_diagnostics(selection, model, folder / "kfp-root", dataset, spec.params)
            diagnostics.append({**base, "round": record["round"], **found})
    return {"spec": spec.to_json(), "curve": curve, "diagnostics": diagnostics}
