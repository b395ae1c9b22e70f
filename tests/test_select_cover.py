"""Similarity graph and greedy max k-cover against brute-force oracles; GreeDi against the single worker."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from taudis.select.cover import (
    cover_embeddings,
    coverage_count,
    greedi_on_graph,
    greedy_cover,
    greedy_cover_bipartite,
)
from taudis.select.graph import Graph, bipartite_graph, induced_subgraph, similarity_graph, transpose

# ---------------------------------------------------------------- oracles (pure Python)


def dense_cos(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    y = y / np.linalg.norm(y, axis=1, keepdims=True)
    return x.astype(np.float64) @ y.astype(np.float64).T


def reference_greedy(cover_sets: list[set[int]], uncertainty: list[float], k: int) -> tuple[list[int], int]:
    """Recompute every gain at every step; ties: higher uncertainty, then lower index."""
    covered: set[int] = set()
    chosen: list[int] = []
    for _ in range(min(k, len(cover_sets))):
        best = None
        for i, s in enumerate(cover_sets):
            if i in chosen:
                continue
            key = (len(s - covered), uncertainty[i], -i)
            if best is None or key > best[0]:
                best = (key, i)
        assert best is not None
        chosen.append(best[1])
        covered |= cover_sets[best[1]]
    return chosen, len(covered)


def graph_from_adjacency(adj: np.ndarray) -> Graph:
    indptr = np.concatenate([[0], np.cumsum(adj.sum(axis=1))]).astype(np.int64)
    indices = np.concatenate([np.flatnonzero(row) for row in adj]).astype(np.int32) if adj.size else np.zeros(0)
    return Graph(indptr=indptr, indices=indices.astype(np.int32), num_cols=adj.shape[1])


def clustered(n: int, d: int, clusters: int, noise: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, d))
    x = centres[rng.integers(0, clusters, n)] / np.sqrt(d) + rng.standard_normal((n, d)) * noise
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


# ---------------------------------------------------------------- graph


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(0, 60),
    sigma=st.floats(-0.5, 0.95),
    tile=st.integers(1, 17),
    seed=st.integers(0, 10_000),
)
def test_graph_equals_dense_brute_force(n: int, sigma: float, tile: int, seed: int) -> None:
    x = clustered(n, 6, 4, 0.3, seed) if n else np.zeros((0, 6), np.float32)
    g = similarity_graph(x, sigma, tile=tile)
    assert g.num_rows == n and g.num_cols == n
    cos = dense_cos(x, x) if n else np.zeros((0, 0))
    want = cos >= sigma
    np.fill_diagonal(want, False)
    got = np.zeros((n, n), bool)
    for i in range(n):
        nb = g.neighbours(i)
        assert (np.diff(nb) > 0).all(), "rows are sorted, without duplicates"
        got[i, nb] = True
    clear = np.abs(cos - sigma) > 1e-5  # float32 products may round either way right at sigma
    assert (got == want)[clear].all()
    assert (got == got.T).all() and not got.diagonal().any()


def test_bipartite_graph_and_transpose() -> None:
    x, y = clustered(23, 5, 3, 0.3, 1), clustered(41, 5, 3, 0.3, 2)
    y[7] = x[4]  # row 4 "is" column 7: left out of its own row
    self_cols = np.full(23, -1)
    self_cols[4] = 7
    g = bipartite_graph(x, y, 0.6, self_cols=self_cols, tile=8)
    cos = dense_cos(x, y)
    want = cos >= 0.6
    want[4, 7] = False
    got = np.zeros_like(want)
    for i in range(23):
        got[i, g.neighbours(i)] = True
    clear = np.abs(cos - 0.6) > 1e-5
    assert (got == want)[clear].all()
    t = transpose(g)
    got_t = np.zeros((41, 23), bool)
    for j in range(41):
        got_t[j, t.neighbours(j)] = True
    assert (got_t == got.T).all()


@pytest.mark.parametrize("d", [8, 256])
def test_graph_at_sigma_one_and_minus_one(d: int) -> None:
    # cos is exactly 1 for duplicates and -1 for opposites: float32 rounding must not drop them.
    x = np.random.default_rng(0).standard_normal((300, d)).astype(np.float16)
    dup = similarity_graph(np.concatenate([x, x]), 1.0)
    assert all(300 + i in dup.neighbours(i) for i in range(300))
    assert dup.num_edges == 2 * 300  # and nothing else
    full = similarity_graph(np.concatenate([x, -x]), -1.0)
    assert full.num_edges == 600 * 599


def test_induced_subgraph() -> None:
    rng = np.random.default_rng(0)
    adj = rng.random((15, 15)) < 0.3
    adj = np.triu(adj, 1)
    adj = adj | adj.T
    nodes = np.array([9, 2, 14, 5])
    sub = induced_subgraph(graph_from_adjacency(adj), nodes)
    for a, na in enumerate(nodes):
        assert set(sub.neighbours(a).tolist()) == {b for b, nb in enumerate(nodes) if adj[na, nb]}


# ---------------------------------------------------------------- greedy cover


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 40),
    p=st.floats(0.0, 0.5),
    k=st.integers(0, 45),
    levels=st.integers(1, 4),
    seed=st.integers(0, 10_000),
)
def test_greedy_equals_exhaustive_reference(n: int, p: float, k: int, levels: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    adj = np.triu(rng.random((n, n)) < p, 1)
    adj = adj | adj.T
    u = rng.integers(0, levels, n).astype(float)  # few levels: many ties on uncertainty too
    result = greedy_cover(graph_from_adjacency(adj), u, k)
    sets = [set(np.flatnonzero(adj[i]).tolist()) | {i} for i in range(n)]
    chosen, covered = reference_greedy(sets, u.tolist(), k)
    assert result.chosen.tolist() == chosen
    assert result.covered == covered == coverage_count(graph_from_adjacency(adj), result.chosen)
    assert result.universe == n


@settings(max_examples=40, deadline=None)
@given(
    r=st.integers(1, 25),
    c=st.integers(1, 40),
    p=st.floats(0.0, 0.4),
    k=st.integers(0, 30),
    seed=st.integers(0, 10_000),
)
def test_bipartite_greedy_equals_reference(r: int, c: int, p: float, k: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    adj = rng.random((r, c)) < p
    self_elem = np.where(rng.random(r) < 0.7, rng.permutation(max(c, r))[:r], -1)
    self_elem[self_elem >= c] = -1
    for i, s in enumerate(self_elem):
        if s >= 0:
            adj[i, s] = False
    u = rng.integers(0, 3, r).astype(float)
    g = graph_from_adjacency(adj)
    result = greedy_cover_bipartite(g, self_elem, u, k)
    sets = [
        set(np.flatnonzero(adj[i]).tolist()) | ({int(self_elem[i])} if self_elem[i] >= 0 else set()) for i in range(r)
    ]
    chosen, covered = reference_greedy(sets, u.tolist(), k)
    assert result.chosen.tolist() == chosen
    assert result.covered == covered == coverage_count(g, result.chosen, self_elem)


def test_tie_break_by_uncertainty_then_index() -> None:
    empty = graph_from_adjacency(np.zeros((5, 5), bool))  # every gain is 1
    assert greedy_cover(empty, np.array([0.1, 0.9, 0.5, 0.9, 0.0]), 5).chosen.tolist() == [1, 3, 2, 0, 4]


def test_gains_drop_when_neighbours_get_covered() -> None:
    # Star 0-{1,2,3} and a path 3-4-5-6: 0 covers 4 nodes first; then 5 (covers 4, 5, 6) beats 4 (4, 5: 3 is covered).
    adj = np.zeros((7, 7), bool)
    for a, b in [(0, 1), (0, 2), (0, 3), (3, 4), (4, 5), (5, 6)]:
        adj[a, b] = adj[b, a] = True
    result = greedy_cover(graph_from_adjacency(adj), np.zeros(7), 2)
    assert result.chosen.tolist() == [0, 5] and result.covered == 7


def test_k_larger_than_nodes_and_empty_graph() -> None:
    g = graph_from_adjacency(np.zeros((3, 3), bool))
    assert greedy_cover(g, np.zeros(3), 10).chosen.tolist() == [0, 1, 2]
    none = greedy_cover(graph_from_adjacency(np.zeros((0, 0), bool)), np.zeros(0), 4)
    assert none.chosen.size == 0 and none.coverage == 1.0


def test_uncertainty_of_the_wrong_length_is_rejected() -> None:
    g = graph_from_adjacency(np.zeros((5, 5), bool))
    with pytest.raises(ValueError, match=r"uncertainty has shape \(3,\), expected \(5,\)"):
        greedy_cover(g, np.zeros(3), 2)
    with pytest.raises(ValueError, match=r"self_elem has shape \(4,\), expected \(5,\)"):
        greedy_cover_bipartite(g, np.arange(4), np.zeros(5), 2)


# ---------------------------------------------------------------- GreeDi


def test_greedi_close_to_single_worker_on_clustered_data() -> None:
    # k below the number of clusters, so the cover is far from saturated (single worker ~0.67)
    x = clustered(3000, 16, 60, 0.12, seed=5)
    u = np.random.default_rng(5).random(3000)
    g = similarity_graph(x, 0.8)
    single = greedy_cover(g, u, 40)
    assert single.coverage < 0.9
    assert single.covered == coverage_count(g, single.chosen)
    for parts in (2, 4, 8):
        on_graph = greedi_on_graph(g, u, 40, parts, seed=1)
        distributed = cover_embeddings(x, u, 40, 0.8, partitions=parts, seed=1)
        for res in (on_graph, distributed):
            assert res.chosen.size == 40 and len(set(res.chosen.tolist())) == 40
            assert res.covered == coverage_count(g, res.chosen)  # GreeDi's own count is the true coverage
            assert res.covered / single.covered >= 0.95


@pytest.mark.parametrize(("n", "k", "parts"), [(0, 3, 4), (3, 5, 8), (10, 0, 2), (1, 1, 3)])
def test_greedi_small_and_empty(n: int, k: int, parts: int) -> None:
    # More parts than nodes leaves empty parts; both GreeDi entry points agree with the single worker.
    x = clustered(n, 4, 2, 0.3, 0) if n else np.zeros((0, 4), np.float32)
    u = np.linspace(0.0, 1.0, n)
    g = similarity_graph(x, 0.8)
    single = greedy_cover(g, u, k)
    for res in (greedi_on_graph(g, u, k, parts), cover_embeddings(x, u, k, 0.8, partitions=parts)):
        assert res.universe == n and res.chosen.size == single.chosen.size == min(k, n)
        assert res.covered == coverage_count(g, res.chosen)
        if k >= n:
            assert res.covered == single.covered == n


def test_a_graph_that_would_not_fit_in_memory_is_refused_before_it_is_built(monkeypatch: pytest.MonkeyPatch) -> None:
    """Post-ReLU embeddings link nearly every pair at sigma 0.8: on a large pool a pod would be killed
    without a word, so the graph is refused up front with the estimate and what makes it smaller."""
    from taudis.select import graph as graph_module

    rng = np.random.default_rng(0)
    dense = np.maximum(rng.standard_normal((3000, 16)) + 2.0, 0).astype(np.float32)
    edges = 3000 * 2999 // 2
    monkeypatch.setattr(graph_module, "available_memory", lambda: edges * graph_module.BYTES_PER_EDGE // 4)
    with pytest.raises(graph_module.GraphTooLargeError, match=r"sigma 0\.8 would hold about .* GiB.*whiten"):
        similarity_graph(dense, 0.8)
    with pytest.raises(graph_module.GraphTooLargeError, match="3,000 x 3,000"):
        bipartite_graph(dense, dense, 0.8)
    sparse = rng.standard_normal((3000, 16)).astype(np.float32)  # centred: few pairs within 0.8
    assert 0 < similarity_graph(sparse, 0.8).num_edges < edges // 4  # fits the same memory: built
    monkeypatch.setattr(graph_module, "available_memory", lambda: None)  # unknown: built as before
    assert similarity_graph(dense[:300], 0.8).num_edges > 0
