"""Learning curves: mask AP (left) and box AP (right) against labelled images, one line per strategy.

Drawn with matplotlib's object API on the Agg canvas (no pyplot, so no global figure state and no
display needed).
"""

from __future__ import annotations

import io
import math
import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from taudis.report.inputs import validate_history

# Pixel size of the PNG: FIGSIZE inches at DPI, no tight bounding box, so the size is exact.
FIGSIZE = (9.0, 3.6)
DPI = 100
_PALETTE = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
# Fixed colours for the strategies every campaign compares, so pages agree with each other.
_FIXED = {"taudis": ("tab:blue", "o"), "random": ("tab:gray", "s")}


def strategy_styles(strategies: Sequence[str]) -> dict[str, tuple[str, str]]:
    """Colour and marker per strategy: fixed for taudis and random, the others by sorted name."""
    styles = {s: _FIXED[s] for s in strategies if s in _FIXED}
    others = sorted(s for s in set(strategies) if s not in _FIXED)
    for i, name in enumerate(others):
        styles[name] = (_PALETTE[(i + 1) % len(_PALETTE)], _MARKERS[(i + 2) % len(_MARKERS)])
    return styles


def _legend_order(strategy: str) -> tuple[int, str]:
    # taudis first, the random baseline second, the other baselines by name.
    return ({"taudis": 0, "random": 1}.get(strategy, 2), strategy)


def curve_points(history: Sequence[dict[str, Any]], metric: str) -> dict[str, tuple[np.ndarray, ...]]:
    """Per strategy: labelled image counts (sorted) with the mean, min and max of ``metric`` there.

    Several records at the same count (seeds, repeated runs) are averaged over their finite values;
    a count with none stays NaN, which leaves a gap in the line.
    """
    grouped: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for record in history:
        grouped[record["strategy"]][int(record["labelled_images"])].append(float(record[metric]))
    out: dict[str, tuple[np.ndarray, ...]] = {}
    for strategy, by_count in grouped.items():
        counts = np.array(sorted(by_count), dtype=float)
        stats = []
        for count in sorted(by_count):
            finite = [v for v in by_count[count] if math.isfinite(v)]
            stats.append((np.mean(finite), min(finite), max(finite)) if finite else (math.nan,) * 3)
        mean, low, high = (np.array(col, dtype=float) for col in zip(*stats, strict=True))
        out[strategy] = (counts, mean, low, high)
    return out


def learning_curve_figure(history: Sequence[dict[str, Any]], *, title: str | None = None) -> Figure:
    """The learning-curve figure (see :func:`learning_curve_png`)."""
    records = validate_history(list(history))
    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    styles = strategy_styles([r["strategy"] for r in records])
    for ax, metric, label in zip(fig.subplots(1, 2), ("mask_ap", "box_ap"), ("mask AP", "box AP"), strict=True):
        points = curve_points(records, metric)
        any_finite = False
        for strategy in sorted(points, key=_legend_order):
            counts, mean, low, high = points[strategy]
            colour, marker = styles[strategy]
            ax.plot(counts, mean, color=colour, marker=marker, markersize=5, linewidth=1.6, label=strategy)
            if np.any(high > low):
                ax.fill_between(counts, low, high, color=colour, alpha=0.15, linewidth=0)
            any_finite = any_finite or bool(np.isfinite(mean).any())
        if not any_finite:
            # Nothing evaluated yet: an empty panel that says so, not a misleading autoscaled axis.
            ax.set_ylim(0, 100)
            ax.text(0.5, 0.5, "not evaluated yet", transform=ax.transAxes, ha="center", va="center", color="0.4")
        ax.set_xlabel("labelled images")
        ax.set_ylabel(f"{label} (0-100)")
        ax.set_title(label)
        ax.grid(True, alpha=0.3)
        if points:
            ax.legend(loc="lower right", fontsize="small")
    if title:
        fig.suptitle(title)
    return fig


def learning_curve_bytes(history: Sequence[dict[str, Any]], *, title: str | None = None) -> bytes:
    """The learning curve as PNG bytes (for inlining into HTML)."""
    fig = learning_curve_figure(history, title=title)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def learning_curve_png(
    history: Sequence[dict[str, Any]], out_path: str | os.PathLike[str], *, title: str | None = None
) -> Path:
    """Write the learning curve of a campaign as a PNG.

    Two panels: mask AP (left) and box AP (right) against labelled images, one line with markers
    per strategy; records at the same labelled count are averaged, with their min-max range shaded.
    NaN (not evaluated) leaves a gap; a single point shows as a marker.

    File layout: one PNG of ``FIGSIZE * DPI`` pixels (900 x 360) at ``out_path``; parent folders
    are created.

    Args:
        history: one dict per completed round: strategy, labelled_images, mask_ap, box_ap (0-100,
            None or NaN when not evaluated), optionally round.
        out_path: where to write the PNG.
        title: optional title over both panels.

    Returns:
        ``out_path`` as a Path.

    Raises:
        ReportInputError: a history record breaks its contract.
    """
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(learning_curve_bytes(history, title=title))
    return out
