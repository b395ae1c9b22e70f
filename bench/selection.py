"""Selection benchmark: cover vs apricot, graph build vs a plain matmul, 1M-instance TAUDIS run.

One command prints all three parts side by side::

    .venv/bin/python bench/selection.py            # full: N = 10k and 50k, 1M-instance pool
    .venv/bin/python bench/selection.py --quick    # N = 10k only, 100k-instance pool

(a) Greedy max k-cover (taudis, exact incremental, numba) against apricot-select's
    MaxCoverageSelection with its default optimizer ('two-stage'), 'lazy', and the exact
    'naive' greedy, on the same cos >= sigma graph (each node covers itself and its
    neighbours), k = 1% and 10% of N. Coverage of every result is recomputed by one function.
(b) The symmetric tiled graph build as GFLOP/s, counting the useful work of a symmetric build:
    N^2 d / 2 multiply-adds = N^2 d flops. Beside it, measured alternately in the same run: the
    build's own sequence of BLAS tile products without the thresholding (executed flops), and a
    plain 4096 x d by d x 4096 numpy float32 matmul.
(c) select(strategy="taudis") on a synthetic pool (28 x 28 float16 masks, 256-d float16
    embeddings), B = 10,000, in a fresh child process: wall time and peak RSS (ru_maxrss, which
    counts the memory-mapped shard pages it touched). Generating the pool is not timed; it is
    cached under --cache (default runs/bench-cache, ignored by git).
(d) GreeDi's coverage as a ratio to the single-worker greedy's on the same clustered data, with
    2, 4 and 8 partitions (each part builds its own graph; the final greedy scores the union's
    picks against all nodes).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import queue as queue_module
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from taudis.data.synthetic_instances import PoolSpec, shard_columns, write_pool  # noqa: E402
from taudis.select.cover import cover_embeddings, coverage_count, greedy_cover  # noqa: E402
from taudis.select.graph import PANEL, TILE, Graph, similarity_graph, unit_rows  # noqa: E402

SIGMA = 0.8
DIM = 256


def embeddings(n: int, seed: int = 0) -> np.ndarray:
    """Clustered unit embeddings from the synthetic pool generator (tiny masks: only embeddings matter)."""
    cols = shard_columns(PoolSpec(num_instances=n, seed=seed, mask_size=2, embedding_dim=DIM), 0, 0)
    return np.asarray(cols["embeddings"], dtype=np.float32)


def best_time(fn, repeats: int = 3) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


# ---------------------------------------------------------------- (a)


def apricot_matrix(graph: Graph):  # type: ignore[no-untyped-def]
    """The graph plus the identity as a scipy CSR matrix: row i = the elements node i covers."""
    from scipy.sparse import csr_matrix, identity

    n = graph.num_rows
    adj = csr_matrix((np.ones(graph.num_edges), graph.indices, graph.indptr), shape=(n, n))
    return (adj + identity(n, format="csr")).tocsr().astype(np.float64)


def _apricot_child(matrix, k: int, optimizer: str, queue) -> None:  # type: ignore[no-untyped-def]
    from apricot import MaxCoverageSelection

    selector = MaxCoverageSelection(k, optimizer=optimizer)
    t = time.perf_counter()
    selector.fit(matrix)
    queue.put((np.asarray(selector.ranking, dtype=np.int64), time.perf_counter() - t))


def run_apricot(matrix, k: int, optimizer: str, limit_s: float) -> tuple[np.ndarray | None, float]:  # type: ignore[no-untyped-def]
    """apricot in a fresh (spawned) child, stopped after ``limit_s`` of its run (then (None, limit_s)).

    Spawned, not forked: a fresh interpreter, so the child shares no state (threads, caches) with this one.
    """
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=_apricot_child, args=(matrix, k, optimizer, queue))
    child.start()
    try:
        chosen, secs = queue.get(timeout=limit_s + 20)  # + the child's start-up (imports)
    except queue_module.Empty:
        chosen, secs = None, limit_s
    child.kill()
    child.join()
    return chosen, secs


def bench_cover(sizes: list[int], limit_s: float) -> None:
    print("\n(a) greedy max k-cover vs apricot MaxCoverageSelection (same graph, sigma 0.8, d 256)")
    print(
        f"    apricot runs are stopped after {limit_s:.0f} s; coverage = covered nodes / N, recomputed for every method"
    )
    print(
        f"{'N':>7} {'edges':>10} {'k':>6} {'method':>16} {'time s':>9} {'coverage':>9} {'vs exact':>9} "
        f"{'exact/this':>11}"
    )
    for n in sizes:
        x = embeddings(n)
        graph = similarity_graph(x, SIGMA)
        u = np.random.default_rng(1).random(n)
        matrix = apricot_matrix(graph)
        greedy_cover(graph, u, 1)  # compile (cached) outside the timing
        for k in (max(1, n // 100), n // 10):
            taudis_time = best_time(lambda g=graph, u=u, k=k: greedy_cover(g, u, k))
            rows: list[tuple[str, float, int | None]] = [
                ("taudis greedy", taudis_time, coverage_count(graph, greedy_cover(graph, u, k).chosen))
            ]
            for name, opt in (("apricot default", "two-stage"), ("apricot lazy", "lazy"), ("apricot exact", "naive")):
                chosen, secs = run_apricot(matrix, k, opt, limit_s)
                rows.append((name, secs, None if chosen is None else coverage_count(graph, chosen)))
            exact_time, exact_cov = rows[-1][1], rows[-1][2]
            for name, secs, cov in rows:
                timed_out = cov is None
                t_text = f">{secs:.0f}" if timed_out else f"{secs:.4f}"
                c_text = "stopped" if cov is None else f"{cov / n:.4f}"
                d_text = "" if cov is None or exact_cov is None else f"{(cov - exact_cov) / exact_cov:+.2%}"
                ratio = exact_time / secs
                r_text = "" if timed_out else (f">{ratio:.0f}x" if exact_cov is None else f"{ratio:.1f}x")
                print(
                    f"{n:>7} {graph.num_edges:>10} {k:>6} {name:>16} {t_text:>9} {c_text:>9} {d_text:>9} {r_text:>11}"
                )


# ---------------------------------------------------------------- (b)


def plain_tile_products(x: np.ndarray) -> float:
    """The build's exact sequence of BLAS products, without thresholding; returns the flops executed."""
    n, flops = x.shape[0], 0.0
    width = min(TILE * PANEL, n)
    for i0 in range(0, n, TILE):
        xi = x[i0 : i0 + TILE]
        for j0 in range(i0, n, width):
            yj = x[j0 : j0 + width]
            _ = xi @ yj.T
            flops += 2.0 * xi.shape[0] * yj.shape[0] * x.shape[1]
    return flops


def bench_graph(sizes: list[int]) -> None:
    print("\n(b) symmetric tiled graph build vs plain numpy float32 matmul (same run, alternating)")
    print("    build GFLOP/s counts the useful work of a symmetric build: N^2*d/2 multiply-adds = N^2*d flops")
    rng = np.random.default_rng(0)
    a = rng.standard_normal((4096, DIM), dtype=np.float32)
    b = rng.standard_normal((DIM, 4096), dtype=np.float32)
    for n in sizes:
        x = unit_rows(embeddings(n))
        similarity_graph(x[:100], SIGMA)  # compile (cached)
        repeats = 2 if n > 20_000 else 3
        build, plain, square = [], [], []
        for _ in range(repeats):
            square.append(best_time(lambda: a @ b, repeats=3))
            t = time.perf_counter()
            executed = plain_tile_products(x)
            plain.append(time.perf_counter() - t)
            t = time.perf_counter()
            graph = similarity_graph(x, SIGMA, normalise=False)
            build.append(time.perf_counter() - t)
        useful = float(n) * n * DIM
        g_build = useful / min(build) / 1e9
        g_plain = executed / min(plain) / 1e9
        g_square = 2 * 4096 * 4096 * DIM / min(square) / 1e9
        print(
            f"  N={n:>6} ({graph.num_edges:,} edges): build {min(build):6.2f} s = {g_build:6.1f} GFLOP/s | "
            f"the same tile products alone {min(plain):6.2f} s = {g_plain:6.1f} GFLOP/s -> "
            f"build at {g_build / g_plain:5.1%} | "
            f"plain 4096x{DIM}x4096 matmul {g_square:6.1f} GFLOP/s -> build at {g_build / g_square:5.1%}"
        )


# ---------------------------------------------------------------- (d)


def bench_greedi(sizes: list[int]) -> None:
    print("\n(d) GreeDi (partition, greedy per part, greedy over the union) vs the single-worker greedy")
    for n in sizes:
        x = embeddings(n)
        u = np.random.default_rng(1).random(n)
        graph = similarity_graph(x, SIGMA)
        for k in (max(1, n // 100), n // 10):
            single = greedy_cover(graph, u, k).covered
            cells = []
            for parts in (2, 4, 8):
                t = time.perf_counter()
                res = cover_embeddings(x, u, k, SIGMA, partitions=parts, seed=0)
                secs = time.perf_counter() - t
                cells.append(f"{parts} parts {coverage_count(graph, res.chosen) / single:.4f} ({secs:.1f} s)")
            print(f"  N={n:>6} k={k:>5}: coverage ratio to single worker: " + ", ".join(cells))


# ---------------------------------------------------------------- (c)

_CHILD = """
import json, resource, sys, time
from taudis.select import select
from taudis.select.uncertainty import score_pool
t = time.perf_counter()
sel = select(sys.argv[1], int(sys.argv[2]))
total = time.perf_counter() - t
t = time.perf_counter()
score_pool(sys.argv[1], ["seg_entropy"])
score = time.perf_counter() - t
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out = {"total": total, "score_again": score, "maxrss_kib": rss, "stats": sel.stats, "images": len(sel.images)}
print(json.dumps(out))
"""


def bench_pool(num_instances: int, budget: int, cache: Path) -> None:
    spec = PoolSpec(num_instances=num_instances, num_shards=max(1, num_instances // 62_500), seed=0)
    pool = cache / f"pool-{num_instances}-s{spec.seed}-{spec.num_shards}shards"
    print(f"\n(c) taudis select on a {num_instances:,}-instance pool (28x28 masks, {DIM}-d), B = {budget:,}")
    t = time.perf_counter()
    write_pool(pool, spec, skip_existing=True)
    print(f"  pool at {pool} ready in {time.perf_counter() - t:.1f} s (generation/caching, not timed below)")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_WAIT_POLICY": "PASSIVE"}
    for run in (1, 2):
        out = subprocess.run(
            [sys.executable, "-c", _CHILD, str(pool), str(budget)], env=env, capture_output=True, text=True, check=True
        )
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(
            f"  run {run}: select {r['total']:6.2f} s wall, peak RSS {r['maxrss_kib'] / 2**20:5.2f} GiB "
            f"(a second scoring pass alone: {r['score_again']:.2f} s); {r['images']} images, stats {r['stats']}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/selection.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="N=10k only, a 100k-instance pool")
    parser.add_argument("--cache", type=Path, default=ROOT / "runs" / "bench-cache", help="where pools are cached")
    parser.add_argument("--parts", default="abdc", help="which parts to run, e.g. 'ab'")
    parser.add_argument("--apricot-limit", type=float, default=300.0, help="seconds before an apricot run is stopped")
    args = parser.parse_args(argv)
    sizes = [10_000] if args.quick else [10_000, 50_000]
    print(f"cpus: {os.cpu_count()}, load average {os.getloadavg()[0]:.2f} (other processes share these cores)")
    if "a" in args.parts:
        bench_cover(sizes, limit_s=args.apricot_limit)
    if "b" in args.parts:
        bench_graph(sizes)
    if "d" in args.parts:
        bench_greedi(sizes)
    if "c" in args.parts:
        bench_pool(100_000 if args.quick else 1_000_000, 1_000 if args.quick else 10_000, args.cache)
    return 0


if __name__ == "__main__":
    sys.exit(main())
