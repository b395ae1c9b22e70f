"""Benchmark: the campaign ledger at a 1,000,000-image pool, bytes written and seconds per update.

Compares, in one run and on the same storage, the ledger as it is (version 2: a small head plus
one immutable segment per update) with the ledger as it was (version 1: one JSON document
rewritten whole on every update), loaded from the project's git history (commit
``--before``). A round makes two updates: its chosen images become pending (with the round's
record), and their labels come in (pending -> labelled). Each update's bytes are those it
writes; its seconds include reading the state it updates.

    python bench/ledger.py [--pool 1000000] [--batch 10000] [--rounds 5] [--storage local|gcs]

``--storage gcs`` starts the fake-gcs-server the tests use (version 1's document is then larger
than the server's 8 MiB single-request upload, so its compare-and-swap is not even enforced).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench_storage import storage_root

ROOT = Path(__file__).resolve().parents[1]
BEFORE = "70f9da2"  # the last commit with ledger version 1


def load_v1(commit: str) -> Any:
    """The version-1 ledger module from git history (it uses taudis.storage.uri, which it still has)."""
    source = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{commit}:taudis/storage/ledger.py"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    path = Path(tempfile.mkdtemp()) / "ledger_v1.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("ledger_v1", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["ledger_v1"] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


class Meter:
    """Counts the bytes taudis.storage writes (both modules write through it)."""

    def __init__(self) -> None:
        from taudis.storage import uri

        self.bytes = 0
        self._write_bytes, self._write_if = uri.write_bytes, uri.write_if_generation

        def write_bytes(target: Any, data: bytes, **kwargs: Any) -> None:
            self.bytes += len(data)
            self._write_bytes(target, data, **kwargs)

        def write_if_generation(target: Any, data: bytes, generation: int, **kwargs: Any) -> int:
            self.bytes += len(data)
            return self._write_if(target, data, generation, **kwargs)

        uri.write_bytes, uri.write_if_generation = write_bytes, write_if_generation


def timed(meter: Meter, fn: Callable[[], Any]) -> tuple[float, int]:
    before = meter.bytes
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started, meter.bytes - before


def run_v1(module: Any, uri: str, pool: int, batch: int, rounds: int, meter: Meter) -> list[dict[str, Any]]:
    module.create_ledger(uri, range(pool), range(batch))
    rows = []
    for r in range(rounds):
        chosen = list(range(batch * (r + 1), batch * (r + 2)))
        choose = functools.partial(module.record_round, uri, r, "taudis", {}, chosen)
        label = functools.partial(module.mark_labelled, uri, chosen, op_id=f"ingest-{r}")
        rows.append(("choose", *timed(meter, choose)))
        rows.append(("label", *timed(meter, label)))
    return [{"ledger": "v1 (whole document)", "update": u, "seconds": s, "bytes": b} for u, s, b in rows]


def run_v2(uri: str, pool: int, batch: int, rounds: int, meter: Meter) -> list[dict[str, Any]]:
    from taudis.storage.ledger import LabelPart, create_ledger, update_ledger

    create_ledger(uri, range(pool), LabelPart("seed", "labels/seed.json", frozenset(range(batch)), "seed"))
    rows = []
    for r in range(rounds):
        chosen = frozenset(range(batch * (r + 1), batch * (r + 2)))

        def choose(ledger: Any, r: int = r, chosen: frozenset[int] = chosen) -> Any:
            record = {"round": r, "state": "selected", "strategy": "taudis", "images": sorted(chosen)}
            return dataclasses.replace(ledger, pending=ledger.pending | chosen, rounds=(*ledger.rounds, record))

        def label(ledger: Any, r: int = r, chosen: frozenset[int] = chosen) -> Any:
            part = LabelPart(f"ingest-{r}", f"labels/ingest-{r}.json", chosen, "bench")
            return dataclasses.replace(ledger, pending=ledger.pending - chosen, parts=(*ledger.parts, part))

        rows.append(("choose", *timed(meter, functools.partial(update_ledger, uri, f"choose-{r}", choose))))
        rows.append(("label", *timed(meter, functools.partial(update_ledger, uri, f"label-{r}", label))))
    return [{"ledger": "v2 (head + segments)", "update": u, "seconds": s, "bytes": b} for u, s, b in rows]


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    by: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by.setdefault(row["ledger"], []).append(row)
    out = {}
    for name, items in by.items():
        out[name] = {
            "updates": len(items),
            "mean_bytes_per_update": round(sum(i["bytes"] for i in items) / len(items)),
            "mean_seconds_per_update": round(sum(i["seconds"] for i in items) / len(items), 4),
            "max_seconds_per_update": round(max(i["seconds"] for i in items), 4),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=10_000, help="images chosen (and labelled) per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--storage", choices=("local", "gcs"), default="local")
    parser.add_argument("--before", default=BEFORE, help="git commit of the version-1 ledger")
    parser.add_argument("--out", type=Path, default=None, help="also write the results JSON here")
    args = parser.parse_args(argv)
    meter = Meter()
    with storage_root(args.storage, "ledger-bench") as root:
        v1 = run_v1(load_v1(args.before), f"{root}/v1/ledger.json", args.pool, args.batch, args.rounds, meter)
        v2 = run_v2(f"{root}/v2/ledger.json", args.pool, args.batch, args.rounds, meter)
    result = {
        "pool": args.pool,
        "batch": args.batch,
        "rounds": args.rounds,
        "storage": args.storage,
        "summary": summarize(v1 + v2),
        "rows": v1 + v2,
    }
    text = json.dumps(result, indent=1)
    print(json.dumps(result["summary"], indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
