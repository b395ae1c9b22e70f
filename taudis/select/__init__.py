"""Selection: which images to label next (TAUDIS and its baselines). numpy + numba only.

``select(instances_dir, budget, strategy)`` is the entry point; the four file-based stages for
the pipeline are in :mod:`taudis.select.stages`; the output type is :class:`Selection`.
"""

from taudis.select.pool import STRATEGIES
from taudis.select.selection import ChosenInstance, SelectedImage, Selection, SelectionFormatError
from taudis.select.strategies import select
from taudis.select.uncertainty import AGGREGATIONS, DEFAULT_METRIC, METRICS

__all__ = [
    "AGGREGATIONS",
    "DEFAULT_METRIC",
    "METRICS",
    "STRATEGIES",
    "ChosenInstance",
    "SelectedImage",
    "Selection",
    "SelectionFormatError",
    "select",
]
