"""`taudis select`: choose the images to label next from instance shards, write the Selection JSON."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from taudis.data.instances import InstanceTableError
from taudis.select.graph import GraphTooLargeError
from taudis.select.pool import STRATEGIES, UNIVERSES
from taudis.select.strategies import select
from taudis.select.uncertainty import AGGREGATIONS, DEFAULT_METRIC, METRICS


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="taudis select", description=__doc__)
    parser.add_argument("--instances", required=True, type=Path, help="a shard directory or a directory of shards")
    parser.add_argument("--budget", required=True, type=int, help="number of images to select (B)")
    parser.add_argument("--strategy", default="taudis", choices=STRATEGIES)
    parser.add_argument("--alpha", type=float, default=2.5, help="candidates = ceil(alpha*B) (default 2.5)")
    parser.add_argument("--beta", type=float, default=1.5, help="chosen instances = ceil(beta*B) (default 1.5)")
    parser.add_argument("--sigma", type=float, default=0.8, help="cosine threshold of the graph (default 0.8)")
    parser.add_argument("--metric", default=DEFAULT_METRIC, choices=METRICS)
    parser.add_argument("--aggregation", default="mean", choices=AGGREGATIONS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--universe", default="candidates", choices=UNIVERSES, help="what the cover must cover")
    parser.add_argument(
        "--partitions", type=int, default=1, help="1: exact greedy cover; more: GreeDi over that many parts"
    )
    parser.add_argument(
        "--exclude", type=Path, default=None, help="file of image ids to leave out of the pool (one per line)"
    )
    parser.add_argument("--centre", action="store_true", help="centre the embeddings before the cover's graph")
    parser.add_argument(
        "--whiten", action="store_true", help="whiten the embeddings on the pool's statistics before the cover's graph"
    )
    parser.add_argument(
        "--labelled", type=Path, default=None, help="coreset: instance shards of the labelled images (first centers)"
    )
    parser.add_argument("--out", required=True, type=Path, help="where to write the selection JSON")
    return parser


def _read_ids(path: Path) -> list[int]:
    ids = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        try:
            ids.append(int(text))
        except ValueError as err:
            raise ValueError(f"{path}, line {n}: not an image id: {text!r}") from err
        if not -(2**63) <= ids[-1] < 2**63:
            raise ValueError(f"{path}, line {n}: image id {text} is outside the 64-bit ids images have")
    return ids


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        exclude = _read_ids(args.exclude) if args.exclude else []
        selection = select(
            args.instances,
            args.budget,
            args.strategy,
            alpha=args.alpha,
            beta=args.beta,
            sigma=args.sigma,
            metric=args.metric,
            aggregation=args.aggregation,
            seed=args.seed,
            exclude=exclude,
            universe=args.universe,
            partitions=args.partitions,
            centre=args.centre,
            whiten=args.whiten,
            labelled=args.labelled,
        )
        selection.save(args.out)
    except (InstanceTableError, ValueError, OSError, GraphTooLargeError) as err:
        print(f"taudis select: error: {err}", file=sys.stderr)
        return 2
    stats = selection.stats
    coverage = "n/a" if stats["coverage"] is None else f"{stats['coverage']:.4f}"
    print(
        f"{selection.strategy}: selected {len(selection.images)} of {stats['pool_images']} images "
        f"(budget {selection.budget}, {stats['filled']} filled, {stats['chosen_instances']} chosen instances, "
        f"coverage {coverage}) -> {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
