"""The active-learning benchmark: TAUDIS against every baseline, over seeds, on datasets like a user's.

    python -m bench.al_benchmark run --dataset synthetic --dataset cells      # the campaigns
    python -m bench.al_benchmark ablation --dataset synthetic                  # one-round variants
    python -m bench.al_benchmark report --docs docs/benchmark.md             # tables and figures

``run`` runs a campaign of ``--rounds`` rounds for each strategy (taudis, uncertainty, random,
coreset, diversity) and seed through the campaign pipeline (kfp.local), as many side by side as
``--jobs`` (default: one per core, one torch thread each, or one per GPU); ``ablation`` scores
one batch per variant (taudis.select's parameters, every metric and aggregation; see
ablation.py). Both resume where they stopped: finished work is never redone (what the results
CSVs record is skipped on any machine), a campaign cut short goes on from its last round.
``--dataset`` takes ``synthetic`` (built in), ``cells`` (the second generated dataset) or a COCO
folder with annotations/{pool,val}.json (train.json optional) and images/, checked first
(plan.py); ``--initial`` draws the initial set per seed or takes train.json (``given``);
``--param``, ``--finetune`` and ``--portable-numerics`` (the same models on every machine) run
campaign variants. Results go to ``--results`` as CSV
(curves, diagnostics, ablation), then ``report`` writes tables (Markdown) and figures (PNG)
beside them. Work files (models, shards, campaign state) stay under ``--work``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.al_benchmark.files import write_json
from bench.al_benchmark.plan import (
    DEFAULT_PARAMS,
    GENERATED_IMAGES,
    INITIAL,
    USED_PARAMS,
    Dataset,
    Spec,
    Variant,
    ablation_variants,
    fit_problems,
    main_variants,
    parse_initial,
    parse_param,
    prepare_dataset,
)
from bench.al_benchmark.results import collect, recorded, write_csvs
from taudis.model import numerics

ROOT = Path(__file__).resolve().parents[2]
SCHEDULE_OPTS = ""  # the config's own schedule (taudis/model/config.py); --train-opts overrides


def _gpus() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except ImportError:
        return 0


def jobs_for(args: argparse.Namespace, kind: str) -> list[dict[str, Any]]:
    jobs, done = [], recorded(args.results, kind)
    bases: dict[tuple[str, int], float] = {}  # ablation: base model's mask AP per dataset and seed
    variants = main_variants(DEFAULT_PARAMS) if kind == "campaign" else ablation_variants()
    if args.variants:
        variants = [v for v in variants if v.name in args.variants]
    # other training, other models: told apart from the default campaigns in every table
    for on, word in ((args.finetune, "finetune"), (args.portable_numerics, "portable")):
        if on:
            variants = [Variant(f"{v.name} {word}", v.strategy, v.params) for v in variants]
    overrides = dict(args.param)
    if overrides:  # for every strategy that reads them (the others' campaigns would be the default's)
        suffix = "".join(f" {k}={v:g}" if isinstance(v, float) else f" {k}={v}" for k, v in overrides.items())
        variants = [
            Variant(v.name + suffix, v.strategy, v.params)
            for v in variants
            if any(k in USED_PARAMS[v.strategy] for k in overrides)
        ]
    datasets = {
        name: prepare_dataset(name, args.work, initial=args.initial, images=args.images) for name in args.dataset
    }
    for dataset in datasets.values():
        for warning in dataset.warnings():
            print(f"warning: {warning}", flush=True)
        for problem in fit_problems(dataset, args.config, args.train_opts):
            print(f"warning: {problem}; pass them with --train-opts", flush=True)
    for seed in args.seeds:  # seed-major: results of every strategy arrive together
        for name, dataset in datasets.items():
            dataset.initial(seed)  # drawn once here, not by workers side by side
            for variant in variants:
                spec = Spec(
                    name, variant, seed, args.rounds, args.budget, args.config, args.train_opts, args.finetune,
                    {**DEFAULT_PARAMS, **overrides}, portable=args.portable_numerics,
                )  # fmt: skip
                mark = (dataset.name, spec.key)
                if kind == "ablation":
                    if (name, seed) not in bases:
                        bases[name, seed] = _base_mask_ap(dataset, spec, args)
                    mark += (bases[name, seed],)
                if mark in done:
                    print(f"{kind} {name} {spec.key}: recorded in {args.results}, skipped", flush=True)
                    continue
                jobs.append(
                    {"kind": kind, "spec": spec.to_json(), "dataset": name, "name": dataset.name,
                     "work": str(args.work), "initial": args.initial, "images": args.images,
                     "base_extra": args.base_extra}
                )  # fmt: skip
    return jobs


def _base_mask_ap(dataset: Dataset, spec: Spec, args: argparse.Namespace) -> float:
    """The mask AP of the ablation's base model for ``spec``'s dataset and seed: trained here
    first when this work folder has none (the workers then find it), since what is recorded
    depends on it."""
    from bench.al_benchmark.ablation import base_state

    threads = args.threads or os.cpu_count() or 1
    return float(base_state(dataset, spec, args.base_extra, threads)[2]["mask_ap"])


def schedule(jobs: list[dict[str, Any]], args: argparse.Namespace) -> None:
    """Run the jobs as worker processes, ``--jobs`` at a time, niced; collect results after each."""
    gpus = _gpus()
    parallel = args.jobs or (gpus or os.cpu_count() or 1)
    # two schedulers side by side each pass --threads 1, so that together they fill the cores once
    threads = args.threads or max(1, (os.cpu_count() or 1) // parallel)
    queue_dir = args.work / "jobs"
    queue_dir.mkdir(parents=True, exist_ok=True)
    pending = list(jobs)
    running: list[tuple[subprocess.Popen[bytes], dict[str, Any]]] = []
    started = time.monotonic()
    print(f"{len(pending)} jobs, {parallel} at a time, {threads} thread(s) each, {gpus} GPU(s)", flush=True)
    while pending or running:
        while pending and len(running) < parallel:
            job = pending.pop(0) | {"threads": threads}
            path = queue_dir / f"{job['kind']}-{job['name']}-{Spec.from_json(job['spec']).key}.json"
            path.write_text(json.dumps(job))
            env = {**os.environ, "OMP_NUM_THREADS": str(threads), "OMP_WAIT_POLICY": "PASSIVE"}
            if gpus:
                env["CUDA_VISIBLE_DEVICES"] = str(len(running) % gpus)
            log = open(path.with_suffix(".log"), "ab")  # noqa: SIM115 (closed with the process)
            command = ["nice", "-n", str(args.nice), sys.executable, "-m", "bench.al_benchmark", "worker", str(path)]
            running.append((subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=log), job))
        time.sleep(5)
        for process, job in list(running):
            if process.poll() is None:
                continue
            running.remove((process, job))
            spec = Spec.from_json(job["spec"])
            state = "done" if process.returncode == 0 else f"FAILED ({process.returncode}, see {queue_dir})"
            print(f"[{time.monotonic() - started:7.0f} s] {job['kind']} {job['name']} {spec.key}: {state}", flush=True)
            write_csvs(collect(args.work), args.results)


def worker(path: Path) -> int:
    job = json.loads(path.read_text())
    spec = Spec.from_json(job["spec"])
    if spec.portable != numerics.portable():
        raise SystemExit(f"{path}: the job asks for portable numerics {spec.portable}, the process runs "
                         f"{numerics.portable()}: run it from the scheduler, which sets them")  # fmt: skip
    work = Path(job["work"])
    dataset = prepare_dataset(job["dataset"], work, initial=job["initial"], images=job["images"])
    if job["kind"] == "campaign":
        from bench.al_benchmark.campaign import run_campaign

        run_campaign(spec, dataset, work, int(job["threads"]))
        return 0
    from bench.al_benchmark.ablation import run_variant

    base_extra = int(job["base_extra"])
    out = work / "ablation-results" / dataset.name / spec.base_key(base_extra) / f"{spec.key}.json"
    if not out.is_file():
        write_json(out, run_variant(spec, dataset, work, int(job["threads"]), base_extra))
    return 0


def _param(text: str) -> tuple[str, Any]:
    try:
        return parse_param(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err


def _initial(text: str) -> int | None:
    try:
        return parse_initial(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.al_benchmark", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("run", "ablation"):
        p = commands.add_parser(name)
        p.add_argument("--dataset", action="append", default=None, help="synthetic, cells or a COCO folder")
        p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
        p.add_argument("--rounds", type=int, default=3, help="selection rounds per campaign")
        p.add_argument("--budget", type=int, default=20, help="images labelled per round")
        initial = "initial labelled images drawn per seed, or 'given': the folder's annotations/train.json"
        p.add_argument("--initial", type=_initial, default=INITIAL, help=initial)
        p.add_argument("--images", type=int, default=GENERATED_IMAGES, help="size of a generated dataset")
        p.add_argument("--base-extra", type=int, default=20, help="ablation: random images added to the initial set")
        p.add_argument("--config", default="mask_rcnn_R18_slim_cpu.yaml")
        p.add_argument("--train-opts", default=SCHEDULE_OPTS, help="detectron2 overrides for every training")
        p.add_argument("--finetune", action="store_true", help="each round starts from the previous round's model")
        portable = "the same CPU kernels on every machine (taudis.model.numerics): campaigns that agree across machines"
        p.add_argument("--portable-numerics", action="store_true", help=portable)
        p.add_argument("--variants", nargs="+", default=None, help="only these variants (by name)")
        params = f"a selection parameter other than its default, for every strategy ({', '.join(DEFAULT_PARAMS)})"
        p.add_argument("--param", type=_param, action="append", default=[], metavar="KEY=VALUE", help=params)
        p.add_argument("--jobs", type=int, default=0, help="campaigns side by side (default: cores, or GPUs)")
        p.add_argument("--threads", type=int, default=0, help="torch threads per job (default: cores / jobs)")
        p.add_argument("--nice", type=int, default=10)
        p.add_argument("--work", type=Path, default=ROOT / "runs" / "bench" / "al")
        p.add_argument("--results", type=Path, default=ROOT / "bench" / "results" / "al")
    report = commands.add_parser("report")
    report.add_argument("--work", type=Path, default=ROOT / "runs" / "bench" / "al")
    report.add_argument("--results", type=Path, default=ROOT / "bench" / "results" / "al")
    report.add_argument("--docs", type=Path, default=None, help="also copy the tables into this page (its markers)")
    commands.add_parser("worker").add_argument("job", type=Path)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "worker":
        return worker(args.job)
    if args.command == "report":
        from bench.al_benchmark.report import splice_into, write_report

        if args.work.is_dir():
            write_csvs(collect(args.work), args.results)
        report = write_report(args.results)
        if args.docs:
            splice_into(args.docs, report)
        return 0
    args.dataset = args.dataset or ["synthetic"]
    if args.portable_numerics:  # before anything here loads torch's kernels; the workers inherit it
        os.environ.update(numerics.portable_environment())
    schedule(jobs_for(args, "campaign" if args.command == "run" else "ablation"), args)
    write_csvs(collect(args.work), args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
