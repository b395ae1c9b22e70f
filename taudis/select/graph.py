"""Cosine-similarity graphs (TAUDIS step 2): an edge where cos(e_i, e_j) >= sigma.

The graphs are exact and built in tiles (``tile`` rows by ``tile * PANEL`` columns) so that
memory stays bounded: each tile is one float32 BLAS product of two blocks of unit vectors, and a
numba kernel (rows split over threads) turns the tile's entries at or above the threshold into edges. The
symmetric graph computes only the tiles on or above the diagonal (about half the products) and
mirrors their edges. The products are float32, whose rounding (up to about 1e-6 for unit vectors
of a few hundred dimensions) could otherwise drop pairs at exactly cos = sigma, e.g. duplicate
embeddings at sigma = 1 or opposite ones at sigma = -1; so an entry counts as an edge when it is
at least sigma - COS_ATOL. Graphs are CSR (``indptr``, ``indices``) with each row's
neighbours sorted ascending and no self-loops: that a node covers itself is the cover's business.
"""

from __future__ import annotations

import itertools
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numba
import numpy as np

# Tiles are TILE rows by TILE * PANEL columns: a 1024 x 8192 float32 tile is 32 MiB (plus a
# 32 MiB int32 scratch buffer): wide enough for BLAS to run near its peak, and short enough that
# the half-wasted diagonal blocks cost little (N * TILE * d / 2 extra multiply-adds).
TILE = 1024
PANEL = 8
# Slack under sigma for float32 rounding of the cosines (see the module docstring).
COS_ATOL = 5e-6


@dataclass(frozen=True)
class Graph:
    """A sparse graph in CSR form: row ``i``'s neighbours are ``indices[indptr[i]:indptr[i+1]]``.

    ``num_cols`` is the number of column nodes (equal to the rows for a symmetric graph).
    """

    indptr: np.ndarray  # int64 (num_rows + 1,)
    indices: np.ndarray  # int32 (num_edges,)
    num_cols: int

    @property
    def num_rows(self) -> int:
        return int(self.indptr.shape[0] - 1)

    @property
    def num_edges(self) -> int:
        return int(self.indices.shape[0])

    def neighbours(self, i: int) -> np.ndarray:
        return self.indices[self.indptr[i] : self.indptr[i + 1]]


def unit_rows(x: np.ndarray) -> np.ndarray:
    """float32 copy of ``x`` with each row scaled to unit L2 norm (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


@numba.njit(cache=True, nogil=True)
def _scan_rows(
    sims: np.ndarray,
    sigma: np.float32 | float,
    row0: int,
    col0: int,
    upper_only: bool,
    skip: np.ndarray,
    buf: np.ndarray,
    counts: np.ndarray,
    r0: int,
    r1: int,
) -> None:
    """Rows r0..r1 of a tile: write each row's columns >= sigma into its own slice of ``buf``."""
    m = sims.shape[1]
    for i in range(r0, r1):
        c = 0
        base = i * m
        start = max(0, row0 + i + 1 - col0) if upper_only else 0
        own = skip[i] - col0  # the row's own column within the tile, if any
        for j in range(start, m):
            if sims[i, j] >= sigma and j != own:
                buf[base + c] = col0 + j
                c += 1
        counts[i] = c


@numba.njit(cache=True, nogil=True)
def _compact_rows(
    buf: np.ndarray, m: int, counts: np.ndarray, offsets: np.ndarray, row0: int, rows: np.ndarray, cols: np.ndarray
) -> None:
    for i in range(counts.shape[0]):
        o = offsets[i]
        for t in range(counts[i]):
            rows[o + t] = row0 + i
            cols[o + t] = buf[i * m + t]


class _TileThresholder:
    """Turns tiles of similarities into edge lists, the rows split over threads.

    The numba kernels release the GIL, so plain threads run them in parallel (no OpenMP: a
    process that built a graph can still fork safely).
    """

    def __init__(self, rows: int, cols: int, sigma: float):
        self.buf = np.empty(max(1, rows * cols), np.int32)
        self.sigma = np.float32(sigma - COS_ATOL)
        self.workers = max(1, min(4, len(os.sched_getaffinity(0))))
        self.pool = ThreadPoolExecutor(self.workers) if self.workers > 1 else None

    def __call__(
        self, sims: np.ndarray, row0: int, col0: int, upper_only: bool, skip: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Global (row, col) pairs of the tile's entries >= sigma; ``upper_only`` keeps col > row.

        ``skip[r]`` is a column left out of row r (-1: none), so a node is not its own neighbour.
        """
        n, m = sims.shape
        counts = np.empty(n, np.int64)
        args = (sims, self.sigma, row0, col0, upper_only, skip, self.buf, counts)
        if self.pool is None or n < 2 * self.workers:
            _scan_rows(*args, 0, n)
        else:
            bounds = np.linspace(0, n, self.workers + 1).astype(int)
            jobs = [self.pool.submit(_scan_rows, *args, int(a), int(b)) for a, b in itertools.pairwise(bounds)]
            for job in jobs:
                job.result()
        offsets = np.zeros(n + 1, np.int64)
        np.cumsum(counts, out=offsets[1:])
        rows = np.empty(offsets[-1], np.int32)
        cols = np.empty(offsets[-1], np.int32)
        _compact_rows(self.buf, m, counts, offsets, row0, rows, cols)
        return rows, cols

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()


@numba.njit(cache=True)
def _csr_from_pairs(num_rows: int, rows: np.ndarray, cols: np.ndarray, mirror: bool) -> tuple[np.ndarray, np.ndarray]:
    """CSR with sorted rows from (row, col) pairs, adding (col, row) too when ``mirror``."""
    degree = np.zeros(num_rows + 1, np.int64)
    for e in range(rows.shape[0]):
        degree[rows[e] + 1] += 1
        if mirror:
            degree[cols[e] + 1] += 1
    indptr = np.cumsum(degree)
    fill = indptr[:-1].copy()
    indices = np.empty(indptr[-1], np.int32)
    for e in range(rows.shape[0]):
        r, c = rows[e], cols[e]
        indices[fill[r]] = c
        fill[r] += 1
        if mirror:
            indices[fill[c]] = r
            fill[c] += 1
    for r in range(num_rows):
        indices[indptr[r] : indptr[r + 1]].sort()
    return indptr, indices


# Bytes a graph holds at its peak per edge it stores (one direction): the tiles' int32 (row, col)
# pairs, their concatenated copy, the CSR indices, and the cover's transposed index.
BYTES_PER_EDGE = 28
SAMPLED_PAIRS = 200_000  # pairs drawn to estimate a large graph's edges before building it
SAMPLE_CHUNK = 10_000


class GraphTooLargeError(MemoryError):
    """The graph would not fit in this machine's memory; the message says how to make it smaller."""


def check_fits_in_memory(x: np.ndarray, y: np.ndarray, sigma: float, *, symmetric: bool) -> None:
    """Refuse, before building it, a graph whose edges would not fit in the memory left.

    Mask-head embeddings are post-ReLU, so their cosines crowd near 1 and at sigma 0.8 most pairs
    can be edges: a graph on every instance of a large pool (diversity-only, ``universe=pool``)
    would then need tens of GiB, and a pod would be killed without a word. The edges are
    estimated from a sample of pairs (the unit rows ``x`` and ``y``).

    Raises:
        GraphTooLargeError: naming the estimate, the memory left and what makes the graph smaller.
    """
    n, m = x.shape[0], y.shape[0]
    pairs = n * (n - 1) // 2 if symmetric else n * m
    available = available_memory()
    if available is None or pairs * BYTES_PER_EDGE <= available // 2:
        return  # even a complete graph fits: nothing to estimate
    rng = np.random.default_rng(0)
    i, j = rng.integers(0, n, SAMPLED_PAIRS), rng.integers(0, m, SAMPLED_PAIRS)
    if symmetric:
        keep = i != j
        i, j = i[keep], j[keep]
    edges = 0
    for start in range(0, i.size, SAMPLE_CHUNK):  # a chunk's rows at a time: memory is short here
        rows, cols = i[start : start + SAMPLE_CHUNK], j[start : start + SAMPLE_CHUNK]
        edges += int(np.count_nonzero(np.einsum("ij,ij->i", x[rows], y[cols]) >= sigma - COS_ATOL))
    density = edges / i.size if i.size else 0.0
    needed = density * pairs * BYTES_PER_EDGE
    if needed <= available:
        return
    raise GraphTooLargeError(
        f"the similarity graph of {n:,} x {m:,} embeddings at sigma {sigma:g} would hold about "
        f"{density * pairs:,.0f} edges ({density:.0%} of the pairs are within sigma), about "
        f"{needed / 2**30:,.1f} GiB, more than the {available / 2**30:,.1f} GiB this machine has left: "
        "raise sigma, whiten the embeddings (whiten, with sigma 0.3 to 0.5), split the cover with "
        "partitions (GreeDi), or cover the candidates rather than the pool (universe=candidates)"
    )


def available_memory() -> int | None:
    """Bytes this process may still allocate: the least of the machine's available memory and its
    cgroup's (a container's) limit less its usage; None where neither can be read."""
    limits = []
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    limits.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError):
        pass
    try:
        with open("/sys/fs/cgroup/memory.max") as limit, open("/sys/fs/cgroup/memory.current") as used:
            text, current = limit.read().strip(), int(used.read().strip())
        if text != "max":
            # The page cache of files read (shards, images) counts as used but is given back on
            # demand: leave out its inactive part, as the kubelet does.
            limits.append(max(0, int(text) - max(0, current - _inactive_file())))
    except (OSError, ValueError):
        pass
    return min(limits) if limits else None


def _inactive_file() -> int:
    try:
        with open("/sys/fs/cgroup/memory.stat") as stat:
            for line in stat:
                key, _, value = line.partition(" ")
                if key == "inactive_file":
                    return int(value)
    except (OSError, ValueError):
        pass
    return 0


def _concat(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(0, np.int32)


def similarity_graph(embeddings: np.ndarray, sigma: float, *, tile: int = TILE, normalise: bool = True) -> Graph:
    """The exact symmetric graph on the rows of ``embeddings``: an edge where cos >= sigma.

    Only tiles on or above the diagonal are multiplied (about N^2 d / 2 multiply-adds, plus half
    a tile's worth per row block); peak extra memory is one float32 tile and one int32 scratch
    tile (32 MiB each at the default size) plus the edges.

    Args:
        embeddings: (N, d) vectors; rows are renormalised to unit length (float32) unless
            ``normalise`` is False (then they must already be unit vectors).
        sigma: cosine threshold in [-1, 1].
        tile: rows per tile (columns per tile: ``tile * PANEL``).

    Returns:
        A Graph with N rows and N columns, symmetric, without self-loops.
    """
    x = unit_rows(embeddings) if normalise else np.ascontiguousarray(embeddings, dtype=np.float32)
    n = x.shape[0]
    if n >= np.iinfo(np.int32).max:
        raise ValueError(f"{n} nodes exceed the int32 node ids of the graph")
    check_fits_in_memory(x, x, sigma, symmetric=True)
    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    no_skip = np.full(tile, -1, np.int64)
    width = min(tile * PANEL, n)
    threshold = _TileThresholder(min(tile, n), width, sigma)
    try:
        for i0 in range(0, n, tile):
            xi = x[i0 : i0 + tile]
            for j0 in range(i0, n, width):
                r, c = threshold(xi @ x[j0 : j0 + width].T, i0, j0, True, no_skip)
                rows.append(r)
                cols.append(c)
    finally:
        threshold.close()
    indptr, indices = _csr_from_pairs(n, _concat(rows), _concat(cols), True)
    return Graph(indptr=indptr, indices=indices, num_cols=n)


def bipartite_graph(
    rows_x: np.ndarray, cols_y: np.ndarray, sigma: float, *, self_cols: np.ndarray | None = None, tile: int = TILE
) -> Graph:
    """Edges from each row of ``rows_x`` to each row of ``cols_y`` with cos >= sigma.

    Args:
        rows_x: (R, d) vectors (renormalised here).
        cols_y: (C, d) vectors (renormalised here).
        sigma: cosine threshold.
        self_cols: int (R,), for each row the column that is the same node (-1: none); that
            column is left out of the row, since covering oneself is the cover's business.
        tile: rows per tile (columns per tile: ``tile * PANEL``).
    """
    x, y = unit_rows(rows_x), unit_rows(cols_y)
    r_total, c_total = x.shape[0], y.shape[0]
    check_fits_in_memory(x, y, sigma, symmetric=False)
    skip_all = np.full(r_total, -1, np.int64) if self_cols is None else np.asarray(self_cols, dtype=np.int64)
    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    width = min(tile * PANEL, c_total)
    threshold = _TileThresholder(min(tile, r_total), width, sigma)
    try:
        for i0 in range(0, r_total, tile):
            xi = x[i0 : i0 + tile]
            skip = np.ascontiguousarray(skip_all[i0 : i0 + tile])
            for j0 in range(0, c_total, width):
                r, c = threshold(xi @ y[j0 : j0 + width].T, i0, j0, False, skip)
                rows.append(r)
                cols.append(c)
    finally:
        threshold.close()
    indptr, indices = _csr_from_pairs(r_total, _concat(rows), _concat(cols), False)
    return Graph(indptr=indptr, indices=indices, num_cols=c_total)


def transpose(graph: Graph) -> Graph:
    """The transposed graph (columns become rows), rows sorted."""
    rows = np.repeat(np.arange(graph.num_rows, dtype=np.int32), np.diff(graph.indptr))
    indptr, indices = _csr_from_pairs(graph.num_cols, graph.indices.astype(np.int32), rows, False)
    return Graph(indptr=indptr, indices=indices, num_cols=graph.num_rows)


@numba.njit(cache=True)
def _induced(indptr: np.ndarray, indices: np.ndarray, nodes: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    local = np.full(n, -1, np.int64)
    for k in range(nodes.shape[0]):
        local[nodes[k]] = k
    new_ptr = np.zeros(nodes.shape[0] + 1, np.int64)
    for k in range(nodes.shape[0]):
        c = 0
        for e in range(indptr[nodes[k]], indptr[nodes[k] + 1]):
            if local[indices[e]] >= 0:
                c += 1
        new_ptr[k + 1] = new_ptr[k] + c
    new_idx = np.empty(new_ptr[-1], np.int32)
    for k in range(nodes.shape[0]):
        p = new_ptr[k]
        for e in range(indptr[nodes[k]], indptr[nodes[k] + 1]):
            loc = local[indices[e]]
            if loc >= 0:
                new_idx[p] = loc
                p += 1
        new_idx[new_ptr[k] : new_ptr[k + 1]].sort()
    return new_ptr, new_idx


def induced_subgraph(graph: Graph, nodes: np.ndarray) -> Graph:
    """The symmetric graph restricted to ``nodes`` (renumbered 0..len(nodes)-1 in that order)."""
    nodes = np.asarray(nodes, dtype=np.int64)
    indptr, indices = _induced(graph.indptr, graph.indices, nodes, graph.num_rows)
    return Graph(indptr=indptr, indices=indices, num_cols=int(nodes.shape[0]))
