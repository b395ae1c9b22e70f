"""Did a training run collapse? The check that keeps a degenerate model out of a round.

Trained from scratch at a high learning rate, Mask R-CNN now and then falls into a degenerate
state early on: the box classifier stops separating objects from background, its loss climbs back
to the base-rate entropy and stays there, and the model scores near zero AP. Seen in the
benchmark on the cells dataset (seed 1, 50 images, 500 iterations): the classification loss went
from 0.56 to 0.60 while every healthy run of that campaign ended at 0.11-0.58 of its start, and the
model's mask AP fell from 23.1 (30 images) to 1.5, then 31.9 at 70 images. Left alone, such a
model chooses a round's images and goes unnoticed until the labels are paid for; retraining with
another seed avoids it (train.py does that, TAUDIS.COLLAPSE).

Only runs trained from scratch in one go are judged: a fine-tuned model starts with a low loss,
and a resumed run's history does not reach back to its start.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class TrainingCollapsedError(RuntimeError):
    """Every attempt of a training run collapsed (see :func:`collapse_reason`)."""


def collapse_reason(metrics: Mapping[str, Any], max_ratio: float, min_iters: int) -> str | None:
    """Why the run behind ``metrics`` (train.py's metrics.json) collapsed, or None if it did not.

    Collapsed: the box classification loss at the end (median of the last log window) is at least
    ``max_ratio`` of its value in the first log window. Runs shorter than ``min_iters``, resumed
    runs and models without a ``loss_cls`` are not judged; ``max_ratio`` <= 0 judges none.
    """
    history = metrics.get("loss_history") or []
    if max_ratio <= 0 or metrics.get("start_iter") or int(metrics.get("iterations", 0)) < min_iters or len(history) < 2:
        return None
    first, last = history[0].get("loss_cls"), (metrics.get("losses") or {}).get("loss_cls")
    if first is None or last is None or first <= 0:
        return None
    ratio = last / first
    if ratio < max_ratio:
        return None
    return (
        f"the box classification loss went from {first:.3f} (first {history[0]['iter']} iterations) to "
        f"{last:.3f} at iteration {metrics['iterations']} ({ratio:.2f} of its start; a run that learns "
        f"ends below {max_ratio:g})"
    )
