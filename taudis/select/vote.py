"""Majority vote (TAUDIS step 3): from chosen instances to images, with a documented fill.

Each pool image gets one vote per chosen instance on it. Images with votes are ranked by votes
(more first), then by the summed uncertainty of their chosen instances (higher first), then by
image id (lower first); the top B are taken. If fewer than B images have a vote, the rest are
filled from the other pool images by image-level uncertainty (higher first, then lower image id);
images with no predicted instance have uncertainty 0 and come after every image that has one.
Every image's reason is recorded, and a fill is also stated in the notes.
"""

from __future__ import annotations

import numpy as np

from taudis.select.selection import SelectedImage
from taudis.select.uncertainty import DEFAULT_METRIC


def fill_order(image_ids: np.ndarray, image_uncertainty: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Positions of images in fill order: with instances first, then uncertainty desc, then id asc."""
    return np.lexsort((image_ids, -np.asarray(image_uncertainty, dtype=np.float64), counts == 0))


def fill_reason(uncertainty: float, count: int, aggregation: str, metric: str) -> str:
    if count == 0:
        return "no predicted instance: image uncertainty 0, ranked after every image with instances"
    return f"image uncertainty {uncertainty:.6g} ({aggregation} of {metric} over {count} instances)"


def vote(
    image_ids: np.ndarray,
    image_uncertainty: np.ndarray,
    counts: np.ndarray,
    chosen_image: np.ndarray,
    chosen_uncertainty: np.ndarray,
    budget: int,
    *,
    aggregation: str = "mean",
    metric: str = DEFAULT_METRIC,
) -> tuple[list[SelectedImage], int, list[str]]:
    """Rank pool images by votes of chosen instances and fill up to ``budget``.

    Args:
        image_ids: int64 (M,) the pool's images, sorted.
        image_uncertainty: (M,) image-level uncertainty (for the fill and the report).
        counts: (M,) instances per image.
        chosen_image: (k,) image id of each chosen instance (every one a pool image).
        chosen_uncertainty: (k,) uncertainty of each chosen instance.
        budget: images to select (capped at M).

    Returns:
        (the selected images in order, how many were filled, notes).
    """
    m = image_ids.shape[0]
    budget = min(int(budget), m)
    chosen_image = np.asarray(chosen_image, dtype=np.int64)
    pos = np.searchsorted(image_ids, chosen_image)
    outside = (pos >= m) | (image_ids[np.minimum(pos, m - 1)] != chosen_image) if m else np.ones(pos.shape, bool)
    if outside.any():
        i = int(np.flatnonzero(outside)[0])
        raise ValueError(f"chosen instance {i} lies on image {int(chosen_image[i])}, which is not in the pool")
    votes = np.bincount(pos, minlength=m)
    summed = np.bincount(pos, weights=np.asarray(chosen_uncertainty, dtype=np.float64), minlength=m)
    voted = np.flatnonzero(votes > 0)
    voted = voted[np.lexsort((image_ids[voted], -summed[voted], -votes[voted]))][:budget]
    images = [
        SelectedImage(
            image_id=int(image_ids[p]),
            rank=r + 1,
            votes=int(votes[p]),
            uncertainty=float(image_uncertainty[p]),
            filled=False,
            reason=f"{int(votes[p])} chosen instance(s), summed uncertainty {summed[p]:.6g}",
        )
        for r, p in enumerate(voted.tolist())
    ]
    notes: list[str] = []
    need = budget - len(images)
    if need > 0:
        rest = np.flatnonzero(votes == 0)
        rest = rest[fill_order(image_ids[rest], image_uncertainty[rest], counts[rest])][:need]
        for p in rest.tolist():
            images.append(
                SelectedImage(
                    image_id=int(image_ids[p]),
                    rank=len(images) + 1,
                    votes=0,
                    uncertainty=float(image_uncertainty[p]),
                    filled=True,
                    reason="filled: " + fill_reason(float(image_uncertainty[p]), int(counts[p]), aggregation, metric),
                )
            )
        notes.append(
            f"only {len(voted)} images had a chosen instance, fewer than the budget {budget}: filled {need} "
            f"images by image-level uncertainty ({aggregation} of {metric}; images without instances last)"
        )
    return images, max(need, 0), notes
