"""`taudis demo`: a short local campaign, TAUDIS beside random, on the built-in synthetic data.

Everything runs on this machine through kfp.local, with the very pipeline a cluster would run:
make the synthetic dataset, compile the campaign pipeline once per strategy, run each (train,
evaluate, infer, select, oracle labels, round after round), then write a comparison report and
the learning curves. State (ledger, labelled set, selections, tasks, reports) goes to a local
directory, or to a bucket with ``--state gs://bucket/prefix``.

    taudis demo                          # defaults: see --help
    taudis demo --rounds 3 --budget 10   # a longer campaign
"""

from __future__ import annotations

import argparse
import contextlib
import io
import multiprocessing
import os
import re
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from taudis import storage

# The demo's default campaign: about a quarter of an hour, strategies side by side, on 2 CPU cores.
DEFAULT_IMAGES = 240
DEFAULT_ROUNDS = 2
DEFAULT_BUDGET = 12
DEFAULT_STRATEGIES = ("taudis", "random")
CPU_CONFIG = "mask_rcnn_R18_slim_cpu.yaml"


@dataclass(frozen=True)
class DemoData:
    """URIs of the demo dataset as the pipeline reads them."""

    pool: str
    labelled: str
    val: str
    image_root: str


def prepare_data(out: Path, state: str, *, images: int, seed: int) -> DemoData:
    """Make the synthetic dataset under ``out/data`` (once), and copy it to ``state`` if that is a bucket."""
    from taudis.data.synth import make_synthetic_dataset

    local = out / "data"
    if not (local / "dataset.json").is_file():
        _say(f"making the synthetic dataset ({images} images) in {local}")
        make_synthetic_dataset(local, num_images=images, seed=seed)
    root = str(local.resolve())
    if storage.is_gcs(state):
        root = storage.join(state, "data")
        _say(f"copying the dataset to {root}")
        storage.upload_tree(local, root)
    return DemoData(
        pool=storage.join(root, "annotations", "pool.json"),
        labelled=storage.join(root, "annotations", "train.json"),
        val=storage.join(root, "annotations", "val.json"),
        image_root=storage.join(root, "images"),
    )


def run_campaign(
    strategy: str,
    data: DemoData,
    *,
    out: Path,
    campaign_uri: str,
    rounds: int,
    budget: int,
    seed: int,
    train_opts: str,
    verbose: bool = False,
    threads: int = 0,
) -> list[dict[str, Any]]:
    """Compile and run the campaign pipeline for one strategy; returns its learning curve.

    ``threads`` > 0 caps the CPU threads of every step (they inherit OMP_NUM_THREADS), so that
    campaigns running side by side share the cores instead of fighting over them.
    """
    from taudis.campaign import learning_curve
    from taudis_kfp.pipelines.cli import compile_pipeline, run_local, typed_arguments

    if threads > 0:
        os.environ["OMP_NUM_THREADS"] = str(threads)
    package = compile_pipeline(
        out / "pipelines" / f"campaign-{strategy}.yaml",
        "campaign",
        strategy,
        rounds=rounds,
        num_shards=1,
        target="local",
    )
    arguments = typed_arguments(
        package,
        {
            "campaign_uri": campaign_uri,
            "pool_annotations": data.pool,
            "labelled_annotations": data.labelled,
            "val_annotations": data.val,
            "image_root": data.image_root,
            "config": CPU_CONFIG,
            "train_opts": train_opts,
            "budget": budget,
            "seed": seed,
        },
    )
    with _progress_only(out / "logs" / f"campaign-{strategy}.log", strategy, verbose):
        run_local(package, arguments, out / "kfp-root" / strategy)
    return learning_curve(campaign_uri)


def run_demo(
    out: str | Path = "runs/demo",
    *,
    state: str | None = None,
    strategies: Sequence[str] = DEFAULT_STRATEGIES,
    rounds: int = DEFAULT_ROUNDS,
    budget: int = DEFAULT_BUDGET,
    images: int = DEFAULT_IMAGES,
    seed: int = 0,
    train_opts: str = "",
    verbose: bool = False,
) -> dict[str, Path]:
    """Run the demo; returns the paths of the comparison report and the learning-curve picture.

    The campaigns are independent, so they run side by side, one process per core.
    """
    from taudis.campaign import Campaign, validate_round_parameters
    from taudis.report import campaign_html, learning_curve_png

    out = Path(out)
    state = state or str((out / "campaigns").resolve())
    for strategy in strategies:
        validate_round_parameters(
            strategy=strategy, budget=budget, alpha=2.5, beta=1.5, sigma=0.8, metric="product_rank", aggregation="mean"
        )
    started = time.monotonic()
    data = prepare_data(out, state, images=images, seed=seed)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    campaigns = {strategy: storage.join(state, f"{strategy}-{stamp}") for strategy in strategies}
    cores = os.cpu_count() or 1
    workers = max(1, min(len(strategies), cores))
    _say(
        f"{len(strategies)} campaigns ({', '.join(strategies)}), {rounds} rounds of {budget} images each, "
        f"{workers} at a time; state in {state}"
    )
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        futures = {
            strategy: pool.submit(
                run_campaign,
                strategy,
                data,
                out=out,
                campaign_uri=uri,
                rounds=rounds,
                budget=budget,
                seed=seed,
                train_opts=train_opts,
                verbose=verbose,
                threads=max(1, cores // workers),
            )
            for strategy, uri in campaigns.items()
        }
        curves = {strategy: future.result() for strategy, future in futures.items()}
    history = [point for strategy in strategies for point in curves[strategy]]
    for point in history:
        _say(
            f"{point['strategy']:>11} round {point['round']}: {point['labelled_images']:3d} labelled images, "
            f"mask AP {point['mask_ap']:5.1f}, box AP {point['box_ap']:5.1f}"
        )
    curve_png = learning_curve_png(history, out / "learning_curve.png")
    local_campaigns = [] if storage.is_gcs(state) else list(campaigns.items())
    report = campaign_html(history, out / "report.html", campaigns=local_campaigns)
    _say(f"finished in {time.monotonic() - started:.0f} s")
    print(f"report:         {report.resolve()}")
    print(f"learning curve: {curve_png.resolve()}")
    for strategy, uri in campaigns.items():
        print(
            f"{strategy} round {rounds - 1}:".ljust(16),
            storage.join(Campaign(uri).round_dir(rounds - 1), "report.html"),
        )
    return {"report": report, "learning_curve": curve_png}


# Lines of a kfp.local run worth showing: task starts and ends, and taudis's own progress lines.
_PROGRESS = re.compile(r"Executing task|finished with status|Running pipeline|\[taudis")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class _ProgressFilter(io.TextIOBase):
    """Writes every line to a log file and shows only the progress lines, tagged with the campaign."""

    def __init__(self, shown: io.TextIOBase, log: io.TextIOBase, tag: str):
        self._shown, self._log, self._tag, self._partial = shown, log, tag, ""

    def write(self, text: str) -> int:
        self._log.write(text)
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        for line in lines:
            if _PROGRESS.search(line):
                self._shown.write(f"[{self._tag}] {_ANSI.sub('', line).strip()}\n")
        self._shown.flush()
        return len(text)

    def flush(self) -> None:
        self._log.flush()
        self._shown.flush()


@contextlib.contextmanager
def _progress_only(log_path: Path, tag: str, verbose: bool) -> Iterator[None]:
    """kfp.local prints each step's full executor input and output: keep them in a log file instead."""
    if verbose:
        yield
        return
    log_path.parent.mkdir(parents=True, exist_ok=True)
    _say(f"full step logs: {log_path}")
    with open(log_path, "w") as log:
        shown = sys.stdout
        sys.stdout = _ProgressFilter(shown, log, tag)  # type: ignore[assignment]
        try:
            yield
        finally:
            sys.stdout = shown


def _say(message: str) -> None:
    print(f"[taudis demo] {message}", flush=True)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="taudis demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="runs/demo", help="local folder for data, pipelines and reports")
    parser.add_argument(
        "--state",
        default=None,
        help="where campaign state lives: a local folder (default OUT/campaigns) or gs://bucket/prefix",
    )
    parser.add_argument("--strategies", nargs="+", default=list(DEFAULT_STRATEGIES))
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS, help="selection rounds per campaign")
    parser.add_argument("--budget", type=int, default=DEFAULT_BUDGET, help="images labelled per round")
    parser.add_argument("--images", type=int, default=DEFAULT_IMAGES, help="synthetic dataset size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-opts", default="", help='detectron2 overrides, e.g. "SOLVER.BASE_LR 0.01"')
    parser.add_argument("--verbose", action="store_true", help="show every step's full log")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        run_demo(
            args.out,
            state=args.state,
            strategies=args.strategies,
            rounds=args.rounds,
            budget=args.budget,
            images=args.images,
            seed=args.seed,
            train_opts=args.train_opts,
            verbose=args.verbose,
        )
    except (ValueError, FileNotFoundError) as err:
        print(f"taudis demo: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
