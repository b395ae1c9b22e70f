"""Benchmark: how many training iterations the slim CPU model needs as the labelled set grows.

For each labelled-set size n (the dataset's initial labelled images plus images drawn at random
from its pool, seeded), each iteration count and each seed, train from scratch with a fixed
number of iterations and evaluate mask AP on the val split. Results go to a CSV, one row per
run; a rerun skips the rows already there, so the study resumes where it stopped.

    OMP_WAIT_POLICY=PASSIVE nice python bench/schedule.py --dataset DIR --out bench/results/schedule.csv \
        --plan 10:200,400,800 40:300,600,1200 100:500,1000,2000 --seeds 0 1 --jobs 2

DIR holds annotations/{train,pool,val}.json and images/ (``taudis data synth --out DIR`` makes
one). ``--finetune`` adds, for each size after the first, a run that starts from the model
trained on the previous size (at its longest schedule) for each iteration count: the
fine-tuning option of a campaign, measured against training from scratch.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
FIELDS = [
    "dataset",
    "labelled_images",
    "iterations",
    "seed",
    "init",
    "mask_ap",
    "mask_ap50",
    "box_ap",
    "train_seconds",
    "seconds_per_iter",
]


@dataclass(frozen=True)
class Run:
    dataset: str
    labelled_images: int
    iterations: int
    seed: int
    init: str = "scratch"  # or "finetune:<n>:<iterations>" (the model it starts from)

    @property
    def key(self) -> tuple[str, int, int, int, str]:
        return (self.dataset, self.labelled_images, self.iterations, self.seed, self.init)


def labelled_subset(dataset: Path, n: int, seed: int, out: Path) -> Path:
    """COCO of the initial labelled images plus n - initial pool images drawn at random (seeded).

    The draws are nested: the first m pool images of a seed's permutation are drawn for every
    n, so a bigger set contains the smaller one (as in a campaign).
    """
    import numpy as np

    from taudis.data.coco import load_coco, subset_coco, write_coco

    train = load_coco(dataset / "annotations" / "train.json")
    pool = load_coco(dataset / "annotations" / "pool.json")
    extra = n - len(train["images"])
    if extra < 0 or extra > len(pool["images"]):
        raise ValueError(f"{dataset}: cannot make {n} labelled images from {len(train['images'])} + pool")
    order = np.random.default_rng([seed, 7]).permutation(len(pool["images"]))[:extra]
    drawn = subset_coco(pool, [pool["images"][i]["id"] for i in order.tolist()])
    merged = {
        "images": train["images"] + drawn["images"],
        "annotations": train["annotations"]
        + [{**a, "id": a["id"] + 10_000_000} for a in drawn["annotations"]],  # ids stay unique
        "categories": train["categories"],
    }
    return write_coco(merged, out)


def model_dir(work: Path, run: Run) -> Path:
    return work / "models" / f"{run.dataset}-n{run.labelled_images}-it{run.iterations}-s{run.seed}-{run.init}"


def execute(run: Run, dataset: Path, work: Path, config: str) -> dict[str, object]:
    """Train and evaluate one run (in a worker process, one torch thread)."""
    import torch

    torch.set_num_threads(1)
    from taudis.model.evaluate import evaluate_model
    from taudis.model.train import train_model

    labelled = labelled_subset(
        dataset, run.labelled_images, run.seed, work / "sets" / f"{run.dataset}-n{run.labelled_images}-s{run.seed}.json"
    )
    weights = ""
    if run.init.startswith("finetune:"):
        _, n, iterations = run.init.split(":")
        weights = str(model_dir(work, Run(run.dataset, int(n), int(iterations), run.seed)) / "model_final.pth")
    opts = ["TAUDIS.SCHEDULE.ENABLED", "False", "SOLVER.MAX_ITER", str(run.iterations)]
    out = model_dir(work, run)
    started = time.perf_counter()
    metrics = train_model(
        str(labelled), str(dataset / "images"), str(out), config=config, opts=opts, seed=run.seed, weights=weights
    )
    seconds = time.perf_counter() - started
    report = evaluate_model(str(out), str(dataset / "annotations" / "val.json"), str(dataset / "images"))
    return {
        **asdict(run),
        "mask_ap": round(float(report["segm"]["AP"] or 0.0), 3),
        "mask_ap50": round(float(report["segm"]["AP50"] or 0.0), 3),
        "box_ap": round(float(report["bbox"]["AP"] or 0.0), 3),
        "train_seconds": round(seconds, 1),
        "seconds_per_iter": metrics.get("seconds_per_iter"),
    }


def parse_plan(items: list[str]) -> list[tuple[int, list[int]]]:
    plan = []
    for item in items:
        n, _, iters = item.partition(":")
        plan.append((int(n), [int(v) for v in iters.split(",") if v]))
    return sorted(plan)


def planned_runs(name: str, plan: list[tuple[int, list[int]]], seeds: list[int], finetune: bool) -> list[list[Run]]:
    """Runs in dependency waves: fine-tuning runs come after the run they start from."""
    scratch = [Run(name, n, it, s) for s in seeds for n, iters in plan for it in iters]
    if not finetune:
        return [scratch]
    tuned = []
    for (prev_n, prev_iters), (n, iters) in itertools.pairwise(plan):
        tuned += [Run(name, n, it, s, f"finetune:{prev_n}:{max(prev_iters)}") for s in seeds for it in iters]
    return [scratch, tuned]


def read_done(path: Path) -> set[tuple[str, int, int, int, str]]:
    if not path.is_file():
        return set()
    with path.open() as f:
        return {
            (r["dataset"], int(r["labelled_images"]), int(r["iterations"]), int(r["seed"]), r["init"])
            for r in csv.DictReader(f)
        }


def append_row(path: Path, row: dict[str, object]) -> None:
    new = not path.is_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        if new:
            writer.writeheader()
        writer.writerow({k: row[k] for k in FIELDS})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, type=Path)
    parser.add_argument("--name", default=None, help="dataset name in the CSV (default: the folder name)")
    parser.add_argument("--out", required=True, type=Path, help="results CSV (appended; rows present are skipped)")
    parser.add_argument("--plan", nargs="+", required=True, help="N:IT,IT,... per labelled-set size")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--jobs", type=int, default=max(1, (os.cpu_count() or 1)))
    parser.add_argument("--work", type=Path, default=None, help="models and subsets (default: a temporary folder)")
    parser.add_argument("--config", default="mask_rcnn_R18_slim_cpu.yaml")
    parser.add_argument("--finetune", action="store_true", help="also fine-tune each size from the previous one")
    args = parser.parse_args(argv)
    name = args.name or args.dataset.name
    work = args.work or Path(tempfile.mkdtemp(prefix="taudis-schedule-"))
    os.environ["OMP_NUM_THREADS"] = "1"
    for wave in planned_runs(name, parse_plan(args.plan), args.seeds, args.finetune):
        done = read_done(args.out)
        todo = [run for run in wave if run.key not in done]
        # Longest first, so the parallel workers finish together.
        todo.sort(key=lambda r: -r.iterations * r.labelled_images)
        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            futures = [pool.submit(execute, run, args.dataset, work, args.config) for run in todo]
            for future in as_completed(futures):
                row = future.result()
                append_row(args.out, row)
                print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
