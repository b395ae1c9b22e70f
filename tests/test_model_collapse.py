"""The collapse check on training histories measured in the benchmark (cells dataset, seed 1)."""

from __future__ import annotations

from typing import Any

from taudis.model.collapse import collapse_reason


def run(first_cls: float, last_cls: float, iterations: int = 500, start_iter: int = 0) -> dict[str, Any]:
    """metrics.json of a run whose classification loss went from ``first_cls`` to ``last_cls``."""
    history = [{"iter": 20, "loss_cls": first_cls}, {"iter": iterations, "loss_cls": last_cls}]
    return {
        "iterations": iterations,
        "start_iter": start_iter,
        "loss_history": history,
        "losses": {"loss_cls": last_cls},
    }


def test_the_collapsed_run_is_caught_and_the_healthy_ones_pass() -> None:
    # 50 images, 500 iterations: loss_cls 0.561 -> 0.604, mask AP 1.5 (23.1 at 30 images).
    reason = collapse_reason(run(0.561, 0.604), 0.8, 200)
    assert reason is not None and "0.561" in reason and "0.604" in reason and "1.08" in reason
    # The same campaign's healthy runs (30 and 70 images) and the highest ratio seen (0.58).
    for first, last in [(0.498, 0.224), (0.546, 0.228), (0.541, 0.315)]:
        assert collapse_reason(run(first, last), 0.8, 200) is None


def test_runs_that_cannot_be_judged_are_not() -> None:
    assert collapse_reason(run(0.5, 0.6, iterations=100), 0.8, 200) is None, "too short to have learnt"
    assert collapse_reason(run(0.5, 0.6, start_iter=300), 0.8, 200) is None, "resumed: no history from the start"
    assert collapse_reason(run(0.5, 0.6), 0.0, 200) is None, "a ratio of 0 turns the check off"
    no_classifier = run(0.5, 0.6) | {"losses": {"loss_mask": 0.3}}
    assert collapse_reason(no_classifier, 0.8, 200) is None
    assert collapse_reason({"iterations": 500, "loss_history": []}, 0.8, 200) is None
