"""Read and check what a report shows: a selection, a learning-curve history and the pool's COCO images.

The report reads the selection file with plain JSON (it does not import ``taudis.select``), so this
module holds the report's view of the selection contract and checks it with errors that name the
file, the record and the field.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SELECTION_SCHEMA = "taudis.selection"
SELECTION_VERSION = 1

# Fields every chosen-image record must have, with the type a report needs.
_IMAGE_FIELDS: dict[str, type | tuple[type, ...]] = {
    "image_id": int,
    "rank": int,
    "votes": int,
    "uncertainty": (int, float),
    "filled": bool,
    "reason": str,
}
_INSTANCE_FIELDS: dict[str, type | tuple[type, ...]] = {"image_id": int, "instance": int, "uncertainty": (int, float)}
_HISTORY_FIELDS: dict[str, type | tuple[type, ...]] = {"strategy": str, "labelled_images": (int, float)}
_HISTORY_AP_FIELDS = ("mask_ap", "box_ap")


class ReportInputError(ValueError):
    """An input of a report breaks its contract; the message names the source, record and field."""

    def __init__(
        self, source: str | os.PathLike[str], message: str, *, record: str | None = None, field: str | None = None
    ):
        where = str(source)
        if record is not None:
            where += f", {record}"
        if field is not None:
            where += f", field {field!r}"
        super().__init__(f"{where}: {message}")
        self.source = str(source)
        self.record = record
        self.field = field


@dataclass(frozen=True)
class PoolImage:
    """One image of the pool as the COCO file lists it."""

    image_id: int
    file_name: str
    height: int
    width: int


def _read_json(path: str | os.PathLike[str]) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError as err:
        raise ReportInputError(path, "no such file") from err
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ReportInputError(path, f"not valid JSON: {err}") from err


def _check_type(value: Any, expected: type | tuple[type, ...], source: str, record: str, field: str) -> None:
    # bool is an int subclass: a True where a count belongs is a broken record, not a 1.
    is_bool = isinstance(value, bool)
    wants_bool = expected is bool or (isinstance(expected, tuple) and bool in expected)
    if not isinstance(value, expected) or (is_bool and not wants_bool):
        names = expected.__name__ if isinstance(expected, type) else " or ".join(t.__name__ for t in expected)
        raise ReportInputError(source, f"expected {names}, got {value!r}", record=record, field=field)


def _check_records(
    records: Any, fields: Mapping[str, type | tuple[type, ...]], source: str, name: str
) -> list[dict[str, Any]]:
    if not isinstance(records, list):
        raise ReportInputError(source, f"expected a list, got {type(records).__name__}", field=name)
    for i, record in enumerate(records):
        where = f"{name}[{i}]"
        if not isinstance(record, dict):
            raise ReportInputError(source, f"expected an object, got {record!r}", record=where)
        for field, expected in fields.items():
            if field not in record:
                raise ReportInputError(source, "missing", record=where, field=field)
            _check_type(record[field], expected, source, where, field)
    return records


def validate_selection(selection: Any, source: str | os.PathLike[str] = "selection") -> dict[str, Any]:
    """Check a selection dict against the parts of the contract a report uses.

    Required: ``schema`` (``taudis.selection``), ``version`` 1, ``strategy``, ``budget``, ``images``
    (each with image_id, rank, votes, uncertainty, filled, reason) and ``instances`` (each with
    image_id, instance, uncertainty). ``params``, ``notes`` and ``stats`` are optional and shown as
    they come.

    Returns:
        The same dict.

    Raises:
        ReportInputError: naming ``source``, the record (e.g. ``images[3]``) and the field.
    """
    src = str(source)
    if not isinstance(selection, dict):
        raise ReportInputError(src, f"expected a JSON object, got {type(selection).__name__}")
    if selection.get("schema") != SELECTION_SCHEMA:
        raise ReportInputError(
            src, f"not a {SELECTION_SCHEMA} file (schema {selection.get('schema')!r})", field="schema"
        )
    if selection.get("version") != SELECTION_VERSION:
        raise ReportInputError(
            src, f"unknown version {selection.get('version')!r} (reports read {SELECTION_VERSION})", field="version"
        )
    for field, expected in (("strategy", str), ("budget", int)):
        if field not in selection:
            raise ReportInputError(src, "missing", field=field)
        _check_type(selection[field], expected, src, "top level", field)
    for field in ("params", "stats"):
        if not isinstance(selection.get(field, {}), dict):
            raise ReportInputError(src, "expected an object", field=field)
    notes = selection.get("notes", [])
    if not isinstance(notes, list) or not all(isinstance(n, str) for n in notes):
        raise ReportInputError(src, "expected a list of strings", field="notes")
    _check_records(selection.get("images"), _IMAGE_FIELDS, src, "images")
    _check_records(selection.get("instances"), _INSTANCE_FIELDS, src, "instances")
    return selection


def load_selection(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check a selection JSON file (see :func:`validate_selection`)."""
    return validate_selection(_read_json(path), path)


def _as_ap(value: Any, source: str, record: str, field: str) -> float:
    if value is None:
        return math.nan
    _check_type(value, (int, float), source, record, field)
    return float(value)


def _as_count(value: Any, source: str, record: str, field: str) -> int:
    # Integers can arrive as floats (KFP's Collected turns List[int] into floats): accept 20.0, not 20.5.
    _check_type(value, (int, float), source, record, field)
    if isinstance(value, float) and not value.is_integer():
        raise ReportInputError(source, f"expected a whole number, got {value!r}", record=record, field=field)
    return int(value)


def validate_history(history: Any, source: str | os.PathLike[str] = "history") -> list[dict[str, Any]]:
    """Check a learning-curve history and return it with AP values as floats.

    Each record needs ``strategy`` (str) and ``labelled_images`` (a whole number; 20.0 is read as
    20, as KFP may deliver integers as floats); ``mask_ap`` and ``box_ap``
    (0-100) may be missing, None or NaN for a round that was not evaluated; ``round`` is optional.

    Returns:
        New dicts (the input is not modified), in the input order.

    Raises:
        ReportInputError: naming ``source``, the record (e.g. ``history[2]``) and the field.
    """
    src = str(source)
    records = _check_records(history, _HISTORY_FIELDS, src, "history")
    out = []
    for i, record in enumerate(records):
        where = f"history[{i}]"
        clean = dict(record)
        for field in _HISTORY_AP_FIELDS:
            clean[field] = _as_ap(record.get(field), src, where, field)
        for field in ("labelled_images", "round"):
            if field in record:
                clean[field] = _as_count(record[field], src, where, field)
        out.append(clean)
    return out


def load_pool_images(annotations: str | os.PathLike[str] | Mapping[str, Any]) -> dict[int, PoolImage]:
    """The pool's images by id, from a COCO JSON file or an already loaded COCO dict.

    Raises:
        ReportInputError: naming the file, the record (``images[i]``) and the field.
    """
    src = "annotations" if isinstance(annotations, Mapping) else str(annotations)
    coco = annotations if isinstance(annotations, Mapping) else _read_json(annotations)
    if not isinstance(coco, Mapping) or "images" not in coco:
        raise ReportInputError(src, "not a COCO file: no 'images' list", field="images")
    fields: dict[str, type | tuple[type, ...]] = {"id": int, "file_name": str, "height": int, "width": int}
    records = _check_records(coco["images"], fields, src, "images")
    pool: dict[int, PoolImage] = {}
    for i, record in enumerate(records):
        if record["height"] <= 0 or record["width"] <= 0:
            raise ReportInputError(src, "image size must be positive", record=f"images[{i}]", field="height")
        pool[record["id"]] = PoolImage(record["id"], record["file_name"], record["height"], record["width"])
    return pool


def selected_instances(selection: Mapping[str, Any]) -> set[tuple[int, int]]:
    """The chosen instances of a selection as (image_id, instance index) pairs."""
    return {(int(r["image_id"]), int(r["instance"])) for r in selection.get("instances", [])}


def finite_or_none(value: float | None) -> float | None:
    """``value`` if it is a finite number, else None (for "not evaluated" displays)."""
    if value is None or not math.isfinite(value):
        return None
    return float(value)


def format_ap(value: float | None) -> str:
    """An AP in 0-100 with one decimal, or ``n/a`` when it was not evaluated."""
    finite = finite_or_none(value)
    return "n/a" if finite is None else f"{finite:.1f}"


def format_value(value: Any) -> str:
    """A parameter or statistic for display: floats with up to 4 significant digits, the rest as str."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return "n/a" if not math.isfinite(value) else f"{value:.4g}"
    if isinstance(value, Sequence) and not isinstance(value, str):
        return ", ".join(format_value(v) for v in value)
    return str(value)
