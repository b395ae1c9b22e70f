"""Labelling tasks out: COCO pre-annotations, Label Studio tasks, a CVAT COCO 1.0 archive, a manifest."""

from taudis.export.coco import build_preannotations
from taudis.export.cvat import build_cvat_archive
from taudis.export.labeling import export_for_labeling, read_selection
from taudis.export.labelstudio import build_tasks, label_config, mask_polygons
from taudis.export.manifest import build_manifest
from taudis.export.predictions import ExportError, Prediction, read_predictions

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
