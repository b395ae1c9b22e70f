"""The Selection: which images to label next, why, and the instances that voted for them.

Every strategy returns one, and other components (export, reports, the ledger) consume its JSON,
schema ``taudis.selection`` version 1::

    {"schema": "taudis.selection", "version": 1, "strategy": "taudis",
     "params": {"alpha", "beta", "sigma", "metric", "aggregation", "seed"}, "budget": B,
     "images": [{"image_id", "rank", "votes", "uncertainty", "filled", "reason"}, ...],  # selection order
     "instances": [{"image_id", "instance", "uncertainty"}, ...],                        # choice order
     "notes": [str, ...],
     "stats": {"pool_images", "pool_instances", "candidates", "chosen_instances", "filled", "coverage"}}

``images[].uncertainty`` is the image-level uncertainty (the chosen metric aggregated over all of
the image's instances with the chosen aggregation; 0 for an image without instances);
``rank`` counts from 1; ``votes`` is the number of chosen instances on the image. The JSON is
written with sorted keys and floats rounded to 12 significant digits, so equal selections give
byte-identical files.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCHEMA = "taudis.selection"
VERSION = 1
_FLOAT_DIGITS = 12


class SelectionFormatError(ValueError):
    """A selection file breaks the schema; the message names the file (if any) and the field."""


@dataclass(frozen=True)
class SelectedImage:
    image_id: int
    rank: int
    votes: int
    uncertainty: float
    filled: bool
    reason: str


@dataclass(frozen=True)
class ChosenInstance:
    image_id: int
    instance: int
    uncertainty: float


@dataclass(frozen=True)
class Selection:
    """A strategy's output (see the module docstring for the JSON layout)."""

    strategy: str
    params: dict[str, Any]
    budget: int
    images: list[SelectedImage]
    instances: list[ChosenInstance] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def image_ids(self) -> list[int]:
        """The chosen image ids in selection order."""
        return [im.image_id for im in self.images]

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "version": VERSION,
            "strategy": self.strategy,
            "params": _clean(self.params),
            "budget": int(self.budget),
            "images": [_clean(vars(im)) for im in self.images],
            "instances": [_clean(vars(ins)) for ins in self.instances],
            "notes": list(self.notes),
            "stats": _clean(self.stats),
        }

    def to_json(self) -> str:
        """Deterministic JSON text (sorted keys, rounded floats, one trailing newline)."""
        return json.dumps(self.to_dict(), sort_keys=True, indent=1, allow_nan=False) + "\n"

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "selection") -> Selection:
        """Parse and check a selection dictionary.

        Raises:
            SelectionFormatError: naming ``source`` and the offending field.
        """
        if not isinstance(data, dict):
            raise SelectionFormatError(f"{source}: not a JSON object")
        if data.get("schema") != SCHEMA:
            raise SelectionFormatError(f"{source}: field 'schema' is {data.get('schema')!r}, expected {SCHEMA!r}")
        if data.get("version") != VERSION:
            raise SelectionFormatError(
                f"{source}: field 'version' is {data.get('version')!r}, this taudis reads {VERSION}"
            )
        for key in ("strategy", "params", "budget", "images", "instances", "notes", "stats"):
            if key not in data:
                raise SelectionFormatError(f"{source}: missing field {key!r}")
        try:
            images = [SelectedImage(**_only(im, SelectedImage)) for im in data["images"]]
        except (TypeError, KeyError) as err:
            raise SelectionFormatError(f"{source}: field 'images': {err}") from err
        try:
            instances = [ChosenInstance(**_only(ins, ChosenInstance)) for ins in data["instances"]]
        except (TypeError, KeyError) as err:
            raise SelectionFormatError(f"{source}: field 'instances': {err}") from err
        return cls(
            strategy=str(data["strategy"]),
            params=dict(data["params"]),
            budget=int(data["budget"]),
            images=images,
            instances=instances,
            notes=[str(n) for n in data["notes"]],
            stats=dict(data["stats"]),
        )

    @classmethod
    def from_json(cls, text: str, *, source: str = "selection") -> Selection:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise SelectionFormatError(f"{source}: not valid JSON: {err}") from err
        return cls.from_dict(data, source=source)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the JSON to ``path`` (atomically: a temporary sibling renamed into place)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_dir():
            raise IsADirectoryError(f"{path} is a folder: --out names the selection's JSON file")
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            tmp.write_text(self.to_json())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)  # nothing half written is left beside it
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Selection:
        path = Path(path)
        return cls.from_json(path.read_text(), source=str(path))


def _only(item: Any, kind: type) -> dict[str, Any]:
    names = kind.__dataclass_fields__  # type: ignore[attr-defined]
    if not isinstance(item, dict):
        raise TypeError(f"entry {item!r} is not an object")
    missing = [n for n in names if n not in item]
    if missing:
        raise KeyError(f"entry lacks {missing}")
    return {n: item[n] for n in names}


def _clean(value: Any) -> Any:
    """Plain JSON values: numpy scalars to Python, floats rounded to fixed significant digits."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if hasattr(value, "item"):  # numpy scalar
        value = value.item()
    if isinstance(value, float):
        return float(f"{value:.{_FLOAT_DIGITS}g}")
    return value
