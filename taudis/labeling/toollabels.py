"""What a labelling tool's export holds, in one shape whatever the tool: images, instances, problems.

Every reader (``taudis.labeling.labelstudio``, ``.cvat``, ``.cvat_xml``, ``.coco``) returns a :class:`ToolLabels`;
``taudis.labeling.read.read_labels`` picks the reader from the file's content. The types say only
what the file says: matching its images to the pool (by file name, checked against any pool id it
carries) and its categories to the pool's (by name) is the ingest's job.

Contract:

- :class:`ToolImage` ``index`` is the image's position in the file (a task's position in a Label
  Studio export, an image's in a COCO ``images`` list), for messages. ``record`` names it the
  way the tool does ("task 17", "image id 3 (index 0)"). ``ref`` is the tool's reference to the
  image, normalised by :func:`taudis.labeling.labelstudio.normalise_ref` (URL-decoded; a Label
  Studio local-files URL reduced to its ``?d=`` path; an uploaded file's name stripped of Label
  Studio's upload folder and 8-hex prefix; ``gs://`` and ``http(s)://`` URLs kept whole). ``tool_id``
  is the tool's own id of the image (task id, COCO image id), ``pool_id`` a taudis pool image id
  that the file carries explicitly (the ``image_id`` that ``export_for_labeling`` writes into each
  Label Studio task's data), else None. ``ids_are_pool_ids`` is True only for plain COCO, whose
  image ids are meant to be the pool's; tools that renumber (Label Studio's COCO export, CVAT)
  and Label Studio's task ids give False. ``height`` and ``width`` are the size the file states
  (None when it states none, e.g. a Label Studio task without results). ``renamed`` is the rule
  by which the tool rewrote the file's name when it was uploaded to it (Label Studio's), None
  when the name is the file's own: the ingest applies it to the pool's names to match.
- :class:`ToolAnnotation` is one instance: ``image`` indexes ``ToolLabels.images`` (not the file);
  ``category`` is the category's name, never a tool's number; ``segmentation`` is COCO polygons in
  pixels (a list of flat ``[x0, y0, x1, y1, ...]`` lists; several for an instance in parts) or a
  compressed COCO RLE ``{"size": [h, w], "counts": str}``; ``bbox`` is ``[x, y, w, h]`` in pixels as
  the file gives it, None when the file has none; ``iscrowd`` is 0 or 1.
- :class:`ToolLabels` ``format`` is one of :data:`FORMATS`; ``problems`` lists every format-level
  problem found (each naming the file, the record and the field); a file that cannot be parsed
  at all gives exactly one problem and no images. Records with a problem are left out of
  ``images`` / ``annotations``, so a file with problems must be refused whole, never half-read.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from taudis.data.labels import LabelProblem, LabelValidationError

FORMATS = ("coco", "cvat-coco", "cvat-xml", "labelstudio-json", "labelstudio-coco")


@dataclass(frozen=True)
class ToolImage:
    """One labelled image as the tool's file names it."""

    index: int
    record: str
    ref: str
    tool_id: int | None
    pool_id: int | None
    ids_are_pool_ids: bool
    height: int | None
    width: int | None
    renamed: Callable[[str], str] | None = None
    upload: str | None = None  # the name an upload would have, where ``ref`` may be one (see match_image)


@dataclass(frozen=True)
class ToolAnnotation:
    """One instance: its image (index into ``ToolLabels.images``), category name and mask."""

    image: int
    record: str
    category: str
    segmentation: list[list[float]] | dict[str, Any]
    bbox: list[float] | None
    iscrowd: int


@dataclass(frozen=True)
class ToolLabels:
    """Everything one export file holds, and every problem found in it."""

    uri: str
    format: str
    images: tuple[ToolImage, ...]
    annotations: tuple[ToolAnnotation, ...]
    problems: tuple[LabelProblem, ...]

    def raise_for_problems(self) -> None:
        """Raise LabelValidationError listing every problem, if there is any."""
        if self.problems:
            raise LabelValidationError(self.problems)


class Problems:
    """The problems of one file, collected as a reader finds them (``prefix`` goes before each record)."""

    def __init__(self, uri: str, prefix: str = ""):
        self.uri, self.prefix = uri, prefix
        self.items: list[LabelProblem] = []

    def add(self, record: str, field: str, message: str) -> None:
        self.items.append(LabelProblem(self.uri, self.prefix + record, field, message))

    def __len__(self) -> int:
        return len(self.items)


def unreadable(uri: str, fmt: str, message: str) -> ToolLabels:
    """The result for a file that cannot be parsed at all: one problem, nothing else."""
    return ToolLabels(uri, fmt, (), (), (LabelProblem(uri, "document", "", message),))


def merge_labels(uri: str, fmt: str, parts: Sequence[ToolLabels]) -> ToolLabels:
    """Several documents of one file (an archive's subsets) as one: image indices shifted."""
    images: list[ToolImage] = []
    annotations: list[ToolAnnotation] = []
    problems: list[LabelProblem] = []
    for part in parts:
        offset = len(images)
        images += part.images
        annotations += [replace(ann, image=ann.image + offset) for ann in part.annotations]
        problems += part.problems
    return ToolLabels(uri, fmt, tuple(images), tuple(annotations), tuple(problems))
