"""The labelling tools' formats, both ways: tasks out for annotators, and their labels back in."""

from taudis.labeling.coco import build_preannotations
from taudis.labeling.cvat import build_cvat_archive
from taudis.labeling.labelstudio import build_tasks, label_config, mask_polygons
from taudis.labeling.manifest import build_manifest
from taudis.labeling.predictions import ExportError, Prediction, read_predictions
from taudis.labeling.tasks import export_for_labeling, read_selection

__all__ = [
    "ExportError",
    "Prediction",
    "build_cvat_archive",
    "build_manifest",
    "build_preannotations",
    "build_tasks",
    "export_for_labeling",
    "label_config",
    "mask_polygons",
    "read_predictions",
    "read_selection",
]
