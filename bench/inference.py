"""Benchmark: taudis inference (uncertainty inputs + embeddings, instance shard) vs plain detectron2.

In one run, on the same model and the same images:

1. training seconds per iteration of the config (default: the slim CPU model) on the synthetic
   dataset's labelled images, after a short warm-up;
2. images/s of plain detectron2 inference: DefaultPredictor, one image at a time, reading each
   image with detectron2's reader (binary masks pasted at full size, as users run it);
3. images/s of taudis.model.infer.infer_instances (batch size 1 and --batch-size), which writes the
   instance shard (class probabilities, 28x28 mask probabilities, embeddings).

Plain and taudis runs alternate for --repeats rounds and the best time of each is kept, so that
load from other processes on a shared machine hurts both alike. Target: taudis at most 10% slower.

    OMP_WAIT_POLICY=PASSIVE python bench/inference.py [--images 100] [--train-iters 60] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100, help="pool images to infer (default 100)")
    parser.add_argument("--train-iters", type=int, default=60, help="training iterations (default 60)")
    parser.add_argument("--warmup-iters", type=int, default=10, help="iterations left out of s/iter (default 10)")
    parser.add_argument("--batch-size", type=int, default=4, help="taudis batch size (default 4)")
    parser.add_argument("--repeats", type=int, default=3, help="alternating timing rounds (default 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--config", default=None, help="detectron2 config (default: the slim CPU config)")
    parser.add_argument("--model", default=None, help="reuse a trained model directory instead of training")
    parser.add_argument("--work", default=None, help="working directory (default: a temporary one)")
    parser.add_argument("--out", default=None, help="also write the results JSON here")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from detectron2.data.detection_utils import read_image
    from detectron2.engine import DefaultPredictor

    from taudis.data.coco import load_coco, subset_coco, write_coco
    from taudis.data.synth import make_synthetic_dataset
    from taudis.model.config import CPU_CONFIG, model_config
    from taudis.model.infer import infer_instances
    from taudis.model.train import train_model

    work = Path(args.work or tempfile.mkdtemp(prefix="taudis-bench-"))
    data = work / "data"
    if not (data / "dataset.json").is_file():
        make_synthetic_dataset(data, num_images=max(300, args.images + 80))
    config = args.config or CPU_CONFIG
    results: dict[str, object] = {"threads": args.threads, "config": Path(config).name, "device": "cpu"}

    model_dir = Path(args.model) if args.model else work / "model"
    if not args.model:
        shutil.rmtree(model_dir, ignore_errors=True)
        seen: list[float] = []

        def stamp(_: int) -> None:
            seen.append(time.perf_counter())

        train_model(
            str(data / "annotations/train.json"),
            str(data / "images"),
            str(model_dir),
            config=config,
            opts=["TAUDIS.SCHEDULE.ENABLED", "False", "SOLVER.MAX_ITER", str(args.train_iters)],
            on_iteration=stamp,
        )
        timed = seen[args.warmup_iters :]
        results["train_seconds_per_iter"] = round((timed[-1] - timed[0]) / (len(timed) - 1), 4)
        results["train_iters_timed"] = len(timed) - 1
        results["ims_per_batch"] = int(model_config(model_dir).SOLVER.IMS_PER_BATCH)

    pool = load_coco(data / "annotations/pool.json")
    chosen = sorted(img["id"] for img in pool["images"])[: args.images]
    subset = write_coco(subset_coco(pool, chosen, keep_annotations=False), work / "bench_pool.json")
    files = [str(data / "images" / img["file_name"]) for img in load_coco(subset)["images"]]

    cfg = model_config(model_dir)
    predictor = DefaultPredictor(cfg)

    def plain() -> tuple[float, int]:
        started, count = time.perf_counter(), 0
        with torch.inference_mode():
            for file in files:
                count += len(predictor(read_image(file, format=cfg.INPUT.FORMAT))["instances"])
        return time.perf_counter() - started, count

    def taudis(batch_size: int) -> tuple[float, int]:
        out = work / f"shards-{batch_size}"
        shutil.rmtree(out, ignore_errors=True)
        started = time.perf_counter()
        path = infer_instances(str(model_dir), str(subset), str(data / "images"), str(out), batch_size=batch_size)
        elapsed = time.perf_counter() - started
        return elapsed, int(json.loads((path / "header.json").read_text())["num_instances"])

    plain()  # warm-up: first-call allocations and lazy imports
    times: dict[str, list[float]] = {"plain": [], "taudis_b1": [], f"taudis_b{args.batch_size}": []}
    counts: dict[str, int] = {}
    for _ in range(args.repeats):
        for name in times:
            batch = int(name.split("_b")[1]) if name.startswith("taudis") else 0
            elapsed, count = taudis(batch) if batch else plain()
            times[name].append(elapsed)
            counts[name] = count
    for name, values in times.items():
        results[f"{name}_images_per_s"] = round(len(files) / min(values), 2)
        results[f"{name}_instances"] = counts[name]
    best_taudis = min(min(times["taudis_b1"]), min(times[f"taudis_b{args.batch_size}"]))
    results["images"] = len(files)
    results["taudis_b1_slowdown"] = round(min(times["taudis_b1"]) / min(times["plain"]) - 1, 4)
    results["taudis_best_slowdown"] = round(best_taudis / min(times["plain"]) - 1, 4)
    results["note"] = "taudis times include loading the model, writing the shard and its validation"
    text = json.dumps(results, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
