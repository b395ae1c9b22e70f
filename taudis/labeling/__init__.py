"""The labelling tools' formats, both ways: tasks out for annotators, and their labels back in.

Out: ``export_for_labeling`` (tasks.py) writes COCO pre-annotations (coco.py), a Label Studio task
list and labelling config (labelstudio.py), a CVAT COCO 1.0 archive (cvat.py) and a manifest.
In: ``read_labels`` (read.py) reads any of the tools' exports into ``ToolLabels`` (toollabels.py),
CVAT's own XML with cvat_xml.py.
``taudis labelstudio`` (labelstudio_sync.py) pushes tasks into a Label Studio project and pulls
its finished annotations back.
"""

from taudis.labeling.coco import build_preannotations
from taudis.labeling.cvat import build_cvat_archive
from taudis.labeling.labelstudio import build_tasks, label_config, mask_polygons
from taudis.labeling.manifest import build_manifest
from taudis.labeling.predictions import ExportError, Prediction, read_predictions
from taudis.labeling.read import read_labels
from taudis.labeling.tasks import export_for_labeling, read_selection
from taudis.labeling.toollabels import ToolAnnotation, ToolImage, ToolLabels

__all__ = [
    "ExportError",
    "Prediction",
    "ToolAnnotation",
    "ToolImage",
    "ToolLabels",
    "build_cvat_archive",
    "build_manifest",
    "build_preannotations",
    "build_tasks",
    "export_for_labeling",
    "label_config",
    "mask_polygons",
    "read_labels",
    "read_predictions",
    "read_selection",
]
