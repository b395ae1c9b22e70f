"""Benchmark: do trainings agree across machines, natively and with portable numerics; at what cost?

In one run, on this machine: the same short training (the benchmark's config and 128 px synthetic
images, one thread, a fixed number of iterations) in a fresh process per setting:

- ``native``: torch's defaults (the kernels of this CPU);
- one layer pinned to AVX2 at a time (``aten``, ``mkl``, ``onednn``): which layers change the weights;
- ``portable``: taudis.model.numerics (TAUDIS_PORTABLE_NUMERICS=1), the path every AVX2 CPU has.

Each writes a digest of the trained weights and its seconds per iteration. A row per machine
(CPU model and flags), setting and environment (the variables the setting set, so that rows
measured under an earlier definition of a setting keep their meaning) is added to ``--out``
(bench/results/numerics.csv): run it on another machine and the portable rows' digests say
whether portable trainings agree there too, the native rows whether they would have anyway.

    OMP_WAIT_POLICY=PASSIVE nice python bench/numerics.py [--iters 40] [--repeats 2] [--settings ...]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from taudis.model import numerics  # noqa: E402

SETTINGS = {
    "native": {},
    "aten": {"ATEN_CPU_CAPABILITY": numerics.PORTABLE["ATEN_CPU_CAPABILITY"]},
    "mkl": {"MKL_CBWR": numerics.PORTABLE["MKL_CBWR"]},
    "onednn": {"ONEDNN_MAX_CPU_ISA": "AVX2"},
    "portable": numerics.portable_environment(),
}


def environment(setting: str) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(SETTINGS[setting].items()))


LAYERS = ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA", numerics.SWITCH)

# One training in a fresh process: the kernels are chosen when torch first runs one.
TRAIN = """
import hashlib, json
import torch
from taudis.model.train import train_model
m = train_model({ann!r}, {images!r}, {out!r}, opts={opts!r}, seed=0, resume=False)
state = torch.load({out!r} + "/model_final.pth", weights_only=True)["model"]
digest = hashlib.sha256(b"".join(state[k].numpy().tobytes() for k in sorted(state))).hexdigest()[:16]
print(json.dumps({{"digest": digest, "seconds_per_iter": m["seconds_per_iter"], "numerics": m["numerics"]}}))
"""


def train(setting: str, data: Path, opts: list[str]) -> dict[str, Any]:
    """Train on ``data``'s annotations/train.json with ``opts`` in a fresh process under one of
    SETTINGS (nothing else of the caller's kernel settings): the weights' digest, seconds per
    iteration and the numerics the training recorded."""
    with tempfile.TemporaryDirectory() as out:
        script = TRAIN.format(ann=str(data / "annotations" / "train.json"), images=str(data / "images"), out=out,
                              opts=opts)  # fmt: skip
        env = {k: v for k, v in os.environ.items() if k not in LAYERS}
        env |= {"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", **SETTINGS[setting]}
        done = subprocess.run([sys.executable, "-c", script], env=env, cwd=ROOT, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"{setting}: training failed:\n{done.stderr[-3000:]}")
        return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def _row(setting: str, mine: list[dict[str, Any]], iters: int, native: float) -> dict[str, Any]:
    """One setting's trainings: their digests (one when repeatable) and the best seconds per iteration."""
    digests = {str(r["digest"]) for r in mine}
    best = min(float(r["seconds_per_iter"]) for r in mine)
    return {"setting": setting, "environment": environment(setting), "iters": iters,
            "digest": " ".join(sorted(digests)), "repeatable": len(digests) == 1,
            "cpu_capability": mine[0]["numerics"]["cpu_capability"],
            "seconds_per_iter": round(best, 4), "vs_native": round(best / native, 3)}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=40, help="training iterations (default 40)")
    parser.add_argument("--repeats", type=int, default=2, help="trainings per setting, alternating (default 2)")
    parser.add_argument(
        "--settings",
        nargs="+",
        choices=list(SETTINGS),
        default=list(SETTINGS),
        help="the settings to run (default all; native is always run, the others' cost is against it)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "numerics.csv")
    args = parser.parse_args(argv)
    from taudis.data.synth import make_synthetic_dataset

    opts = ["TAUDIS.SCHEDULE.ENABLED", "False", "SOLVER.MAX_ITER", str(args.iters), "TAUDIS.NUM_THREADS", "1",
            "TAUDIS.LOG_PERIOD", str(args.iters)]  # fmt: skip
    where = {f"cpu_{k}": v for k, v in numerics.cpu().items()}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        make_synthetic_dataset(data, num_images=40, seed=0, initial_labeled=20)
        runs: dict[str, list[dict[str, Any]]] = {s: [] for s in SETTINGS if s == "native" or s in args.settings}
        for _ in range(args.repeats):  # alternating, so that other load on the machine hurts all alike
            for setting in runs:
                runs[setting].append(train(setting, data, opts))
    native = min(float(r["seconds_per_iter"]) for r in runs["native"])
    rows = [{**where, **_row(setting, mine, args.iters, native)} for setting, mine in runs.items()]
    for row in rows:
        print(json.dumps(row))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    old = list(csv.DictReader(args.out.open())) if args.out.is_file() else []
    same = ("cpu_vendor", "cpu_model", "cpu_flags", "setting", "environment", "iters")
    mine_keys = {tuple(str(r[k]) for k in same) for r in rows}
    kept = [r for r in old if tuple(r[k] for k in same) not in mine_keys]
    with args.out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows([*kept, *rows])
    return 0


if __name__ == "__main__":
    sys.exit(main())
