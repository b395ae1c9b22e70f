"""Greedy maximum k-cover (TAUDIS step 2) and GreeDi for pools that do not fit one worker.

A chosen node covers itself and its neighbours. Each step takes the node that covers the most
still-uncovered universe elements; ties go to the higher uncertainty, then the lower index. The
greedy is exact and incremental: every node's gain (its uncovered elements) is kept up to date
by decrementing the gains of all nodes that cover an element when that element becomes covered,
and a max-heap keyed by (gain, tie-break rank) with lazy re-insertion finds the best node (gains
only fall, so an entry whose stored gain equals the node's current gain is the true maximum).
Work is O(edges + k log N).

Universe (which elements count as covered):

- ``"candidates"`` (default): the candidates themselves; the graph is the symmetric candidate graph.
- ``"pool"``: every instance of the pool; a candidate covers the pool instances within sigma of
  it. This rewards candidates that represent much of the pool, but its graph is candidates x
  pool (R x N x d multiply-adds), far dearer than the candidates' graph.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass

import numba
import numpy as np

from taudis.select.graph import Graph, bipartite_graph, induced_subgraph, similarity_graph, transpose


@dataclass(frozen=True)
class CoverResult:
    """The chosen nodes in choice order and how much of the universe they cover."""

    chosen: np.ndarray  # int64 (k,), node indices in choice order
    covered: int  # universe elements covered
    universe: int  # universe size

    @property
    def coverage(self) -> float:
        return self.covered / self.universe if self.universe else 1.0


def _check_length(values: np.ndarray, n: int, name: str = "uncertainty") -> None:
    # The numba greedy indexes these per node without bounds checks: a short array reads garbage.
    if np.shape(values) != (n,):
        raise ValueError(f"{name} has shape {np.shape(values)}, expected ({n},): one value per graph row")


def tie_break_rank(uncertainty: np.ndarray) -> np.ndarray:
    """Rank of each node in the tie-break order: higher uncertainty first, then lower index."""
    u = np.asarray(uncertainty, dtype=np.float64)
    order = np.lexsort((np.arange(u.shape[0]), -u))
    rank = np.empty(u.shape[0], np.int64)
    rank[order] = np.arange(u.shape[0])
    return rank


@numba.njit(cache=True)
def _greedy(
    fwd_ptr: np.ndarray,
    fwd_idx: np.ndarray,
    rev_ptr: np.ndarray,
    rev_idx: np.ndarray,
    self_elem: np.ndarray,
    self_owner: np.ndarray,
    rank: np.ndarray,
    k: int,
) -> tuple[np.ndarray, int]:
    """Exact greedy over choosers that cover elements (fwd) plus their own element (self_elem).

    ``rev`` maps each element to the choosers whose rows hold it; ``self_owner[u]`` is the chooser
    whose own element is u (-1: none). Heap keys are (-gain, rank): min-heap = max gain, then rank.
    """
    n = fwd_ptr.shape[0] - 1
    gain = np.empty(n, np.int64)
    for i in range(n):
        gain[i] = fwd_ptr[i + 1] - fwd_ptr[i] + (1 if self_elem[i] >= 0 else 0)
    heap = [(-gain[i], rank[i], i) for i in range(n)]
    heapq.heapify(heap)
    covered = np.zeros(self_owner.shape[0], np.bool_)
    taken = np.zeros(n, np.bool_)
    chosen = np.empty(k, np.int64)
    num_covered = 0
    picked = 0
    while picked < k and len(heap) > 0:
        neg_gain, r, v = heapq.heappop(heap)
        if taken[v]:
            continue
        if -neg_gain != gain[v]:
            heapq.heappush(heap, (-gain[v], r, v))  # stale: gains only fall, so re-queue
            continue
        taken[v] = True
        chosen[picked] = v
        picked += 1
        for t in range(fwd_ptr[v], fwd_ptr[v + 1] + 1):
            u = self_elem[v] if t == fwd_ptr[v + 1] else fwd_idx[t]
            if u < 0 or covered[u]:
                continue
            covered[u] = True
            num_covered += 1
            for e in range(rev_ptr[u], rev_ptr[u + 1]):
                gain[rev_idx[e]] -= 1
            if self_owner[u] >= 0:
                gain[self_owner[u]] -= 1
    return chosen[:picked], num_covered


def greedy_cover(graph: Graph, uncertainty: np.ndarray, k: int) -> CoverResult:
    """Greedy max k-cover on a symmetric graph whose nodes are also the universe.

    Args:
        graph: symmetric, no self-loops (a node covers itself implicitly).
        uncertainty: (N,) tie-break values, higher wins.
        k: nodes to choose (capped at N).
    """
    n = graph.num_rows
    _check_length(uncertainty, n)
    k = max(0, min(int(k), n))
    ident = np.arange(n, dtype=np.int64)
    chosen, covered = _greedy(
        graph.indptr, graph.indices, graph.indptr, graph.indices, ident, ident, tie_break_rank(uncertainty), k
    )
    return CoverResult(chosen=chosen, covered=int(covered), universe=n)


def greedy_cover_bipartite(
    graph: Graph, self_elem: np.ndarray, uncertainty: np.ndarray, k: int, *, reverse: Graph | None = None
) -> CoverResult:
    """Greedy max k-cover where rows (choosers) cover columns (universe elements).

    Args:
        graph: chooser -> covered elements (without the chooser's own element).
        self_elem: (R,) the element each chooser is itself (-1: none); it covers it too.
        uncertainty: (R,) tie-break values.
        k: choosers to choose.
        reverse: the transpose of ``graph`` if already built.
    """
    r = graph.num_rows
    _check_length(uncertainty, r)
    _check_length(self_elem, r, "self_elem")
    k = max(0, min(int(k), r))
    rev = transpose(graph) if reverse is None else reverse
    self_elem = np.asarray(self_elem, dtype=np.int64)
    owner = np.full(graph.num_cols, -1, np.int64)
    has = self_elem >= 0
    owner[self_elem[has]] = np.flatnonzero(has)
    chosen, covered = _greedy(
        graph.indptr, graph.indices, rev.indptr, rev.indices, self_elem, owner, tie_break_rank(uncertainty), k
    )
    return CoverResult(chosen=chosen, covered=int(covered), universe=graph.num_cols)


def coverage_count(graph: Graph, chosen: np.ndarray, self_elem: np.ndarray | None = None) -> int:
    """Elements covered by ``chosen``, recomputed from scratch (independent of the greedy).

    For a symmetric graph leave ``self_elem`` None (node i covers element i).
    """
    covered = np.zeros(graph.num_cols, np.bool_)
    for v in np.asarray(chosen, dtype=np.int64).tolist():
        covered[graph.neighbours(v)] = True
        own = v if self_elem is None else int(self_elem[v])
        if own >= 0:
            covered[own] = True
    return int(covered.sum())


def cover_embeddings(
    embeddings: np.ndarray, uncertainty: np.ndarray, k: int, sigma: float, *, partitions: int = 1, seed: int = 0
) -> CoverResult:
    """Greedy max k-cover of embedded nodes (universe = the nodes), single worker or GreeDi.

    With ``partitions`` > 1 this is GreeDi (Mirzasoleiman et al. 2013, see :func:`_greedi`): each
    part (one worker) builds its own graph, and the final greedy scores the union's picks against
    all nodes (the union's rows of the cos >= sigma graph). No worker builds the full N x N graph.
    """
    if partitions <= 1:
        return greedy_cover(similarity_graph(embeddings, sigma), uncertainty, k)
    return _greedi(
        embeddings.shape[0],
        uncertainty,
        k,
        partitions,
        seed,
        part_graph=lambda part: similarity_graph(embeddings[part], sigma),
        union_rows=lambda union: bipartite_graph(embeddings[union], embeddings, sigma, self_cols=union),
    )


def greedi_on_graph(graph: Graph, uncertainty: np.ndarray, k: int, partitions: int, seed: int = 0) -> CoverResult:
    """GreeDi on an already built symmetric graph (for tests and benchmarks): see cover_embeddings."""
    return _greedi(
        graph.num_rows,
        uncertainty,
        k,
        max(1, partitions),
        seed,
        part_graph=lambda part: induced_subgraph(graph, part),
        union_rows=lambda union: induced_rows(graph, union),
    )


def _greedi(
    n: int,
    uncertainty: np.ndarray,
    k: int,
    partitions: int,
    seed: int,
    *,
    part_graph: Callable[[np.ndarray], Graph],
    union_rows: Callable[[np.ndarray], Graph],
) -> CoverResult:
    """GreeDi: split the n nodes at random (``seed``) into ``partitions`` parts, pick k greedily in
    each part (``part_graph(part)``: the part's symmetric graph, nodes renumbered in part order),
    then pick k from the union of those picks by a greedy scored on the whole universe
    (``union_rows(union)``: the union's rows against all n nodes, without the self column).
    """
    uncertainty = np.asarray(uncertainty, dtype=np.float64)
    _check_length(uncertainty, n)
    parts = np.array_split(np.random.default_rng(seed).permutation(n), partitions)
    picks = []
    for part in parts:
        part = np.sort(part)
        local = greedy_cover(part_graph(part), uncertainty[part], k)
        picks.append(part[local.chosen])
    union = np.sort(np.concatenate(picks))
    final = greedy_cover_bipartite(union_rows(union), union, uncertainty[union], k)
    return CoverResult(chosen=union[final.chosen], covered=final.covered, universe=n)


def induced_rows(graph: Graph, rows: np.ndarray) -> Graph:
    """The given rows of ``graph`` (all columns kept), in that order."""
    rows = np.asarray(rows, dtype=np.int64)
    starts, stops = graph.indptr[rows], graph.indptr[rows + 1]
    lengths = stops - starts
    indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    idx = np.concatenate([graph.indices[a:b] for a, b in zip(starts, stops, strict=True)]) if rows.size else None
    indices = idx.astype(np.int32) if idx is not None else np.zeros(0, np.int32)
    return Graph(indptr=indptr, indices=indices, num_cols=graph.num_cols)
