"""The campaign ledger: which images are labelled, pending or unlabelled, and every round's record.

The ledger is the campaign's one source of truth, stored as a small head document plus
immutable segments, so that an update writes what changed, not the whole pool:

    <campaign>/ledger.json                         the head (schema ``taudis.ledger``, version 2)
    <campaign>/ledger/<revision>-<random>.json     segments: one per update (schema ``taudis.ledger.segment``)

Head::

    {"schema": "taudis.ledger", "version": 2, "campaign": str,
     "revision": int,                    # +1 per applied update (0 at creation)
     "created": str, "updated": str,     # ISO 8601 UTC
     "counts": {"pool", "labelled", "pending", "unlabelled"[, "withdrawn"]},   # checked against the segments
     "segments": [name, ...],            # relative to the head's folder, applied in order
     "rounds": [{"round": int, "state": str, ... every field but "images"}, ...],
     "ops": [{"op_id": str, "kind": str, "revision": int, "at": str[, "brief": true]}, ...]}   # updates applied

Segment (``kind`` "snapshot" holds the whole state, "change" what one update changed)::

    {"schema": "taudis.ledger.segment", "version": 2, "revision": int, "kind": "snapshot" | "change",
     "pool": ids, "pending": ids, "parts": [part, ...], "round_images": {"<round>": [id, ...]},  # snapshot
     "withdrawn": ids,                                                                # snapshot, if any
     "pool_added": ids, "pool_removed": ids, "pending_added": ids, "pending_removed": ids,     # change
     "parts_added": [part, ...], "parts_removed": [op_id, ...], "round_images": {...},
     "withdrawn_added": ids}                                                          # change, if any

``ids`` are sorted image ids as inclusive ranges ``[[first, last], ...]`` (a contiguous pool is one
pair). A label part ``{"op_id", "name", "images": ids, "source"}`` names an immutable COCO file
(relative to the head's folder) holding the annotations of its images: the labelled set is the
union of the parts' images, so the labels and the ledger can never disagree about what is
labelled. A part leaves the ledger only when others take over its images (a correction:
taudis.campaign.labels.replace_labels), so an image once labelled stays labelled, unless it is withdrawn:
``withdrawn`` holds the images taken out of the campaign for good (a data-deletion request,
taudis.campaign.withdraw), outside the pool, their labels gone from the parts; an image never
leaves it. Round records and their images are written by taudis.campaign.

Every update is a compare-and-swap of the head (``taudis.storage.write_if_generation``): read the
head and its segments, apply a pure function, write the new segment under a fresh name, then
write the head only if its generation is unchanged; else read again and re-apply. An update
carries an op id that the head records; one whose op id is already there is not applied again,
so an update whose first attempt landed but whose answer was lost returns the landed state
instead of applying twice. A segment whose head write lost the race is never referenced, and
readers only follow the head, so they never see a half-applied update.

Cost: an update writes its change segment (O(images changed)) and the head (O(rounds + ops)); every
``COMPACT_AFTER`` segments the update writes one snapshot instead (O(pool), amortised), and deletes
the segments that the snapshot before it replaced (so a reader of a head 64 updates old still finds
its segments, and ``ledger/`` stays about two snapshots' worth). Reading costs O(pool) (the state)
and fetches each segment once per process (they are immutable).

A campaign of weekly rounds applies about a hundred updates a week, most of them with an op id
drawn for the call (a claim's renewal, a round's facts): such an op id guards only that call's own
retries, so an update made ``brief`` is kept among the latest ``BRIEF_OPS_KEPT`` only, and the head
does not grow with them for years. An op id derived from content (a label file's, a withdrawal's,
a round's commit) is kept for good: it is what makes a file dropped twice count once.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import os
import random
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from taudis.storage import uri as storage

log = logging.getLogger(__name__)

SCHEMA = "taudis.ledger"
SEGMENT_SCHEMA = "taudis.ledger.segment"
VERSION = 2
SEGMENT_DIR = "ledger"
COMPACT_AFTER = 64  # segments in the head before an update writes a snapshot instead of a change
BRIEF_OPS_KEPT = 256  # brief ops the head keeps (a retry checks its own op id within seconds)
DELETED_PER_SNAPSHOT = 256  # old segments a snapshot's update deletes at most
UPDATE_TIMEOUT_ENV = "TAUDIS_LEDGER_UPDATE_TIMEOUT"
DEFAULT_UPDATE_TIMEOUT = 300.0


class LedgerError(ValueError):
    """A ledger is invalid or an update breaks a rule; the message names the ledger and field."""

    def __init__(self, uri: str, message: str, *, field: str | None = None):
        where = f"ledger {uri}" + (f", field {field!r}" if field else "")
        super().__init__(f"{where}: {message}")
        self.uri = uri
        self.field = field


class LedgerConflictError(LedgerError):
    """The update could not win the compare-and-swap before its deadline."""


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class LabelPart:
    """One immutable file of labels: the annotations of ``images``, ingested by op ``op_id``."""

    op_id: str
    name: str  # relative to the ledger's folder, e.g. "labels/ingest-0123abcd.json"
    images: frozenset[int]
    source: str = ""  # where the labels came from (the annotators' file, "oracle", "seed")

    def to_json(self) -> dict[str, Any]:
        return {"op_id": self.op_id, "name": self.name, "images": encode_ids(self.images), "source": self.source}


@dataclass(frozen=True)
class Ledger:
    """One campaign's state (immutable: update functions return a new Ledger).

    ``labelled`` is derived: the union of the label parts' images.
    """

    campaign: str
    pool: frozenset[int]
    pending: frozenset[int] = frozenset()
    parts: tuple[LabelPart, ...] = ()
    rounds: tuple[dict[str, Any], ...] = ()
    ops: tuple[dict[str, Any], ...] = ()
    withdrawn: frozenset[int] = frozenset()  # taken out of the campaign for good, outside the pool
    revision: int = 0
    created: str = ""
    updated: str = ""
    uri: str = field(default="", compare=False)
    labelled: frozenset[int] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "labelled", frozenset().union(*(p.images for p in self.parts)))

    @property
    def unlabelled(self) -> frozenset[int]:
        """Pool images neither labelled nor pending: what selection may choose from."""
        return self.pool - self.labelled - self.pending

    @property
    def op_ids(self) -> frozenset[str]:
        return frozenset(str(op["op_id"]) for op in self.ops)

    def has_op(self, op_id: str) -> bool:
        """Whether the update with this op id was applied."""
        return op_id in self.op_ids

    def round(self, round_index: int) -> dict[str, Any] | None:
        """The record of round ``round_index``, if recorded."""
        return next((r for r in self.rounds if r["round"] == round_index), None)

    def part(self, op_id: str) -> LabelPart | None:
        return next((p for p in self.parts if p.op_id == op_id), None)

    def counts(self) -> dict[str, int]:
        counts = {
            "pool": len(self.pool),
            "labelled": len(self.labelled),
            "pending": len(self.pending),
            "unlabelled": len(self.unlabelled),
        }
        # Only where there is one: the heads of campaigns without any stay as they were, and a
        # taudis from before withdrawals refuses a head that has them instead of misreading it.
        return counts | ({"withdrawn": len(self.withdrawn)} if self.withdrawn else {})

    def to_json(self) -> dict[str, Any]:
        """The whole state as one document (for ``taudis ledger show --json``; not the stored form)."""
        return {
            "schema": SCHEMA,
            "version": VERSION,
            "campaign": self.campaign,
            "revision": self.revision,
            "created": self.created,
            "updated": self.updated,
            "counts": self.counts(),
            "pool": sorted(self.pool),
            "labelled": sorted(self.labelled),
            "pending": sorted(self.pending),
            "unlabelled": sorted(self.unlabelled),
            "withdrawn": sorted(self.withdrawn),
            "parts": [{**p.to_json(), "images": sorted(p.images)} for p in self.parts],
            "rounds": [dict(r) for r in self.rounds],
            "ops": [dict(o) for o in self.ops],
        }


# ----------------------------------------------------------------------------------- id ranges


def encode_ids(ids: Iterable[int]) -> list[list[int]]:
    """Sorted unique ids as inclusive ranges: ``{1, 2, 3, 7}`` -> ``[[1, 3], [7, 7]]``."""
    values = np.unique(np.fromiter((int(i) for i in ids), dtype=np.int64))
    if values.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(values) != 1)
    starts = np.r_[values[0], values[breaks + 1]]
    ends = np.r_[values[breaks], values[-1]]
    return [[int(a), int(b)] for a, b in zip(starts, ends, strict=True)]


def decode_ids(ranges: Any, uri: str, field_name: str) -> frozenset[int]:
    """The ids of ``encode_ids`` ranges.

    Raises:
        LedgerError: not a list of ``[first, last]`` integer pairs with first <= last.
    """
    if not isinstance(ranges, list):
        raise LedgerError(
            uri, f"expected a list of [first, last] ranges, got {type(ranges).__name__}", field=field_name
        )
    out: set[int] = set()
    for index, pair in enumerate(ranges):
        if not (
            isinstance(pair, list)
            and len(pair) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in pair)
            and pair[0] <= pair[1]
        ):
            raise LedgerError(uri, f"range {index} is {pair!r}, not [first, last] integers", field=field_name)
        out.update(range(pair[0], pair[1] + 1))
    return frozenset(out)


# ---------------------------------------------------------------------------------- segments


def _segment_uri(uri: str, name: str) -> str:
    return storage.join(folder_of(uri), name)


def folder_of(uri: str) -> str:
    """The folder holding the ledger head (segments and label parts are named relative to it)."""
    text = str(uri).rstrip("/")
    return text.rsplit("/", 1)[0] if "/" in text else "."


_segment_cache: dict[str, dict[str, Any]] = {}
_segment_cache_lock = threading.Lock()


class _MissingSegmentError(LedgerError):
    """A segment the head names is gone: damage, unless the head moved on (a snapshot deletes the
    segments two snapshots old) while it was read: then reading the head again finds its own."""


def _read_segment(uri: str) -> dict[str, Any]:
    """A segment's document (cached: segments are immutable and uniquely named)."""
    with _segment_cache_lock:
        cached = _segment_cache.get(uri)
    if cached is not None:
        return cached
    try:
        doc = json.loads(storage.read_bytes(uri))
    except storage.NotFoundError as err:
        raise _MissingSegmentError(uri, "a segment the head lists is missing") from err
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise LedgerError(uri, f"segment is not valid JSON: {err}") from err
    if not isinstance(doc, dict) or doc.get("schema") != SEGMENT_SCHEMA or doc.get("version") != VERSION:
        raise LedgerError(uri, f"not a {SEGMENT_SCHEMA} version {VERSION} document", field="schema")
    with _segment_cache_lock:
        if len(_segment_cache) > 4096:
            _segment_cache.clear()
        _segment_cache[uri] = doc
    return doc


@dataclass
class _State:
    pool: set[int] = field(default_factory=set)
    pending: set[int] = field(default_factory=set)
    parts: list[LabelPart] = field(default_factory=list)
    round_images: dict[int, list[int]] = field(default_factory=dict)
    withdrawn: set[int] = field(default_factory=set)


def _parse_part(doc: Any, uri: str) -> LabelPart:
    if not isinstance(doc, dict) or not all(isinstance(doc.get(k), str) for k in ("op_id", "name")):
        raise LedgerError(uri, f"a label part needs op_id and name strings, got {doc!r}", field="parts")
    return LabelPart(
        doc["op_id"], doc["name"], decode_ids(doc.get("images"), uri, "parts.images"), str(doc.get("source", ""))
    )


def _round_images(doc: Mapping[str, Any], uri: str) -> dict[int, list[int]]:
    value = doc.get("round_images", {})
    if not isinstance(value, dict):
        raise LedgerError(uri, "expected an object of round -> image ids", field="round_images")
    out = {}
    for key, ids in value.items():
        if not (isinstance(ids, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in ids)):
            raise LedgerError(uri, f"round {key}: expected a list of image ids", field="round_images")
        out[int(key)] = list(ids)
    return out


def _apply_segment(state: _State, doc: Mapping[str, Any], uri: str) -> None:
    if doc.get("kind") == "snapshot":
        state.pool = set(decode_ids(doc.get("pool"), uri, "pool"))
        state.pending = set(decode_ids(doc.get("pending"), uri, "pending"))
        state.parts = [_parse_part(p, uri) for p in doc.get("parts", [])]
        state.round_images = _round_images(doc, uri)
        state.withdrawn = set(decode_ids(doc.get("withdrawn", []), uri, "withdrawn"))
        return
    if doc.get("kind") != "change":
        raise LedgerError(uri, f"unknown segment kind {doc.get('kind')!r}", field="kind")
    state.pool |= decode_ids(doc.get("pool_added", []), uri, "pool_added")
    state.pool -= decode_ids(doc.get("pool_removed", []), uri, "pool_removed")
    state.pending |= decode_ids(doc.get("pending_added", []), uri, "pending_added")
    state.pending -= decode_ids(doc.get("pending_removed", []), uri, "pending_removed")
    removed = doc.get("parts_removed", [])
    if not (isinstance(removed, list) and all(isinstance(op, str) for op in removed)):
        raise LedgerError(uri, f"expected a list of op ids, got {removed!r}", field="parts_removed")
    state.parts = [p for p in state.parts if p.op_id not in set(removed)]
    state.parts += [_parse_part(p, uri) for p in doc.get("parts_added", [])]
    state.round_images.update(_round_images(doc, uri))
    state.withdrawn |= decode_ids(doc.get("withdrawn_added", []), uri, "withdrawn_added")


def _snapshot(ledger: Ledger, revision: int) -> dict[str, Any]:
    return {
        "schema": SEGMENT_SCHEMA,
        "version": VERSION,
        "revision": revision,
        "kind": "snapshot",
        "pool": encode_ids(ledger.pool),
        "pending": encode_ids(ledger.pending),
        "parts": [p.to_json() for p in ledger.parts],
        "round_images": {str(r["round"]): list(r.get("images", [])) for r in ledger.rounds if r.get("images")},
    } | ({"withdrawn": encode_ids(ledger.withdrawn)} if ledger.withdrawn else {})


def _change(old: Ledger, new: Ledger, revision: int, uri: str) -> dict[str, Any]:
    """The segment that turns ``old`` into ``new``.

    Raises:
        LedgerError: ``new`` rewrites a label part, unlabels an image it does not withdraw
            (labels are never taken back; a part may leave only when others hold its images), or
            takes an image back from the withdrawn.
    """
    old_parts = {p.op_id: p for p in old.parts}
    new_ids = {p.op_id for p in new.parts}
    if any(old_parts.get(p.op_id, p) != p for p in new.parts):
        raise LedgerError(uri, "an update may add or replace label parts, never rewrite one", field="parts")
    if old.labelled - new.labelled - new.withdrawn:
        lost = sorted(old.labelled - new.labelled - new.withdrawn)[:10]
        raise LedgerError(uri, f"an update may not unlabel images ({lost})", field="parts")
    if old.withdrawn - new.withdrawn:
        back = sorted(old.withdrawn - new.withdrawn)[:10]
        raise LedgerError(uri, f"withdrawn images never come back ({back})", field="withdrawn")
    old_images = {r["round"]: r.get("images") for r in old.rounds}
    return {
        "schema": SEGMENT_SCHEMA,
        "version": VERSION,
        "revision": revision,
        "kind": "change",
        "pool_added": encode_ids(new.pool - old.pool),
        "pool_removed": encode_ids(old.pool - new.pool),
        "pending_added": encode_ids(new.pending - old.pending),
        "pending_removed": encode_ids(old.pending - new.pending),
        "parts_added": [p.to_json() for p in new.parts if p.op_id not in old_parts],
        "parts_removed": sorted(set(old_parts) - new_ids),
        "round_images": {
            str(r["round"]): list(r["images"])
            for r in new.rounds
            if r.get("images") is not None and r.get("images") != old_images.get(r["round"])
        },
    } | ({"withdrawn_added": encode_ids(new.withdrawn - old.withdrawn)} if new.withdrawn - old.withdrawn else {})


# ---------------------------------------------------------------------------------- validation


def check_ledger(ledger: Ledger) -> None:
    """The rules every stored ledger keeps.

    Raises:
        LedgerError: pending images outside the pool or labelled, label parts that overlap or hold
            images outside the pool, withdrawn images in the pool, a round listed twice, an op id
            listed twice.
    """
    uri = ledger.uri or "<memory>"
    inside = sorted(ledger.withdrawn & ledger.pool)
    if inside:
        raise LedgerError(uri, f"image ids {inside[:10]} are withdrawn but in the pool", field="withdrawn")
    outside = sorted(ledger.pending - ledger.pool)
    if outside:
        raise LedgerError(uri, f"image ids {outside[:10]} are not in the pool", field="pending")
    outside = sorted(ledger.labelled - ledger.pool)
    if outside:
        raise LedgerError(uri, f"image ids {outside[:10]} are not in the pool", field="labelled")
    both = sorted(ledger.labelled & ledger.pending)
    if both:
        raise LedgerError(uri, f"image ids {both[:10]} are both labelled and pending", field="pending")
    if sum(len(p.images) for p in ledger.parts) != len(ledger.labelled):
        raise LedgerError(uri, "an image is in two label parts", field="parts")
    if len({p.op_id for p in ledger.parts}) != len(ledger.parts):
        raise LedgerError(uri, "a label part's op id is listed twice", field="parts")
    rounds = [r.get("round") for r in ledger.rounds]
    if len(set(rounds)) != len(rounds):
        raise LedgerError(uri, "a round is recorded twice", field="rounds.round")
    for index, record in enumerate(ledger.rounds):
        if not isinstance(record, dict):
            raise LedgerError(uri, f"round {index} is not an object", field="rounds")
        for key, kind in (("round", int), ("state", str)):
            if not isinstance(record.get(key), kind) or isinstance(record.get(key), bool):
                raise LedgerError(uri, f"round {index}: missing or not a {kind.__name__}", field=f"rounds.{key}")
    if len(ledger.op_ids) != len(ledger.ops):
        raise LedgerError(uri, "an op id is listed twice", field="ops")


def _parse_head(doc: Any, uri: str) -> dict[str, Any]:
    if not isinstance(doc, dict):
        raise LedgerError(uri, f"expected a JSON object, got {type(doc).__name__}")
    if doc.get("schema") != SCHEMA:
        raise LedgerError(uri, f"not a {SCHEMA} document (schema {doc.get('schema')!r})", field="schema")
    if doc.get("version") != VERSION:
        raise LedgerError(uri, f"unknown version {doc.get('version')!r} (this taudis reads {VERSION})", field="version")
    for key, kind in (("campaign", str), ("revision", int), ("rounds", list), ("ops", list), ("segments", list)):
        if not isinstance(doc.get(key), kind) or isinstance(doc.get(key), bool):
            raise LedgerError(uri, f"missing or not a {kind.__name__}", field=key)
    for index, op in enumerate(doc["ops"]):
        if not isinstance(op, dict) or not isinstance(op.get("op_id"), str):
            raise LedgerError(uri, f"op {index} has no op_id string", field="ops")
    if not all(isinstance(name, str) for name in doc["segments"]):
        raise LedgerError(uri, "segment names must be strings", field="segments")
    return doc


def _decode(head_bytes: bytes, uri: str) -> Ledger:
    try:
        doc = json.loads(head_bytes)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise LedgerError(uri, f"not valid JSON: {err}") from err
    head = _parse_head(doc, uri)
    names = [_segment_uri(uri, name) for name in head["segments"]]
    workers = min(16, len(names)) if storage.is_gcs(uri) and len(names) > 1 else 1
    with ThreadPoolExecutor(max_workers=workers) as pool:
        segments = list(pool.map(_read_segment, names))
    state = _State()
    for name, segment in zip(names, segments, strict=True):
        _apply_segment(state, segment, name)
    rounds = []
    for record in head["rounds"]:
        record = dict(record) if isinstance(record, dict) else record
        if isinstance(record, dict) and isinstance(record.get("round"), int):
            images = state.round_images.get(record["round"])
            if images is not None:
                record["images"] = images
        rounds.append(record)
    ledger = Ledger(
        campaign=head["campaign"],
        pool=frozenset(state.pool),
        pending=frozenset(state.pending),
        parts=tuple(state.parts),
        rounds=tuple(rounds),
        withdrawn=frozenset(state.withdrawn),
        ops=tuple(dict(o) for o in head["ops"]),
        revision=head["revision"],
        created=str(head.get("created", "")),
        updated=str(head.get("updated", "")),
        uri=uri,
    )
    check_ledger(ledger)
    if head.get("counts") is not None and head["counts"] != ledger.counts():
        raise LedgerError(uri, f"counts {head['counts']} disagree with the segments' {ledger.counts()}", field="counts")
    return ledger


def _head(ledger: Ledger, segments: Sequence[str]) -> bytes:
    rounds = [
        {k: v for k, v in r.items() if k != "images"} | {"num_images": len(r.get("images") or [])}
        for r in ledger.rounds
    ]
    return storage.dumps_json(
        {
            "schema": SCHEMA,
            "version": VERSION,
            "campaign": ledger.campaign,
            "revision": ledger.revision,
            "created": ledger.created,
            "updated": ledger.updated,
            "counts": ledger.counts(),
            "segments": list(segments),
            "rounds": rounds,
            "ops": [dict(o) for o in ledger.ops],
        }
    )


def _segment_name(revision: int) -> str:
    # The random part keeps two writers racing for the same revision from sharing a name.
    return f"{SEGMENT_DIR}/{revision:08d}-{secrets.token_hex(6)}.json"


# ------------------------------------------------------------------------------------- access


def create_ledger(
    uri: str | os.PathLike[str],
    pool_ids: Iterable[int],
    seed: LabelPart | None = None,
    *,
    campaign: str = "",
    exist_ok: bool = False,
) -> Ledger:
    """Create a campaign's ledger (conditional on the head not existing).

    Args:
        uri: where the head lives (``<campaign>/ledger.json``).
        pool_ids: every image id of the campaign.
        seed: the label part of the images already labelled, if any (its file must exist).
        campaign: a name (default: the ledger's folder name).
        exist_ok: if a ledger already exists there, return it instead of failing (a retried
            "create" step, or two first runs racing, is then harmless).

    Raises:
        LedgerError: the ledger exists (without exist_ok), the pool is empty, or the seed holds
            images outside the pool.
    """
    uri = str(uri)
    pool = frozenset(int(i) for i in pool_ids)
    if not pool:
        raise LedgerError(uri, "the pool is empty", field="pool")
    parts = (seed,) if seed is not None else ()
    name = campaign or os.path.basename(folder_of(uri).rstrip("/")) or "campaign"
    now = _now()
    ledger = Ledger(campaign=name, pool=pool, parts=parts, created=now, updated=now, uri=uri)
    check_ledger(ledger)
    if exist_ok and storage.exists(uri):
        return read_ledger(uri)
    segment = _segment_name(0)
    storage.write_bytes(
        _segment_uri(uri, segment), storage.dumps_json(_snapshot(ledger, 0)), content_type="application/json"
    )
    try:
        storage.write_if_generation(uri, _head(ledger, [segment]), 0)
        return ledger
    except storage.PreconditionFailedError:
        there = storage.read_versioned(uri)
        # A retried request whose first attempt landed (its answer lost) meets its own ledger: the
        # one whose first segment is this call's, a name no other writer can have drawn (updates
        # landed since append theirs; a compaction would start over, after 64 of them).
        try:
            head = json.loads(there.data) if there is not None else {}
        except (json.JSONDecodeError, UnicodeDecodeError):
            head = {}  # not ours: ours is valid JSON
        mine = isinstance(head, dict) and list(head.get("segments") or [])[:1] == [segment]
        if not (exist_ok or mine):
            raise LedgerError(uri, "a ledger already exists here (pass exist_ok to reuse it)") from None
        return read_ledger(uri)


def read_ledger(uri: str | os.PathLike[str]) -> Ledger:
    """Read and validate a ledger.

    Raises:
        storage.NotFoundError: no ledger at ``uri``.
        LedgerError: the head or a segment is invalid.
    """
    uri = str(uri)
    versioned = storage.read_versioned(uri)
    if versioned is None:
        raise storage.NotFoundError(f"ledger {uri}: not found")
    try:
        return _decode(versioned.data, uri)
    except _MissingSegmentError:
        again = _moved_on(uri, versioned)
        if again is None:
            raise
        return _decode(again.data, uri)


def _moved_on(uri: str, versioned: storage.Versioned) -> storage.Versioned | None:
    """The head now, if it moved on since ``versioned`` was read (else None: a segment it names is gone for good)."""
    again = storage.read_versioned(uri)
    return again if again is not None and again.generation != versioned.generation else None


def update_ledger(
    uri: str | os.PathLike[str],
    op_id: str,
    fn: Callable[[Ledger], Ledger],
    *,
    kind: str = "update",
    timeout: float | None = None,
    brief: bool = False,
) -> Ledger:
    """Apply ``fn`` to the ledger by compare-and-swap, exactly once per ``op_id``.

    ``brief``: the op id was drawn for this call (nothing but its own retries ever asks for it),
    so the head keeps it among the latest ``BRIEF_OPS_KEPT`` brief ops only.

    ``fn`` must be a pure function of the ledger it gets (it may run several times, on newer
    states, when writers race); it may raise LedgerError to refuse the update, and may return
    its argument unchanged to make the update a no-op (nothing is written then). Retried: 412
    (another writer won; re-read and re-apply) and transient errors (re-read: if the op id is
    there, the write landed and its answer was lost). Not retried: LedgerError from ``fn`` or
    validation.

    Returns:
        The ledger after the update (or the ledger that already holds ``op_id``).

    Raises:
        LedgerError: ``fn`` refused, or its result is invalid.
        LedgerConflictError: no attempt won within ``timeout`` seconds
            (default ``TAUDIS_LEDGER_UPDATE_TIMEOUT`` or 300).
    """
    uri = str(uri)
    if not op_id:
        raise LedgerError(uri, "an update needs a non-empty op id", field="ops")
    limit = float(os.environ.get(UPDATE_TIMEOUT_ENV, DEFAULT_UPDATE_TIMEOUT)) if timeout is None else timeout
    deadline = time.monotonic() + limit
    attempt = 0
    while True:
        attempt += 1
        try:
            return _update_once(uri, op_id, fn, kind, brief)
        except storage.PreconditionFailedError as err:
            last: BaseException = err
        except Exception as err:
            if not storage.is_transient(err):
                raise
            last = err
        if time.monotonic() >= deadline:
            raise LedgerConflictError(uri, f"update {op_id!r} gave up after {attempt} attempts: {last}") from last
        # Jittered backoff so racing writers spread out instead of colliding again.
        time.sleep(random.uniform(0, min(1.0, 0.01 * 2 ** min(attempt, 7))))


def _update_once(uri: str, op_id: str, fn: Callable[[Ledger], Ledger], kind: str, brief: bool = False) -> Ledger:
    versioned = storage.read_versioned(uri)
    if versioned is None:
        raise storage.NotFoundError(f"ledger {uri}: not found")
    try:
        current = _decode(versioned.data, uri)
    except _MissingSegmentError as err:
        if _moved_on(uri, versioned) is None:
            raise
        raise storage.PreconditionFailedError(f"ledger {uri}: the head moved on while it was read") from err
    if current.has_op(op_id):
        return current
    proposed = fn(current)
    if proposed == current:
        return current  # nothing to change: no write, no op recorded
    revision = current.revision + 1
    now = _now()
    new = dataclasses.replace(
        proposed,
        campaign=current.campaign,
        revision=revision,
        created=current.created,
        updated=now,
        ops=_kept_ops((*current.ops, {"op_id": op_id, "kind": kind, "revision": revision, "at": now} | _brief(brief))),
        uri=uri,
    )
    check_ledger(new)  # never write a document a reader would reject
    segments = list(json.loads(versioned.data)["segments"])
    snapshot = len(segments) + 1 > COMPACT_AFTER
    segment_doc = _snapshot(new, revision) if snapshot else _change(current, new, revision, uri)
    name = _segment_name(revision)
    storage.write_bytes(_segment_uri(uri, name), storage.dumps_json(segment_doc), content_type="application/json")
    storage.write_if_generation(uri, _head(new, [name] if snapshot else [*segments, name]), versioned.generation)
    if snapshot and segments:
        _delete_segments_before(uri, _revision_of(segments[0]))
    return new


def _brief(brief: bool) -> dict[str, Any]:
    return {"brief": True} if brief else {}


def _kept_ops(ops: Sequence[dict[str, Any]]) -> tuple[dict[str, Any], ...]:
    """Every op but the brief ones older than the latest ``BRIEF_OPS_KEPT`` of them, in order."""
    brief = [i for i, op in enumerate(ops) if op.get("brief")]
    dropped = set(brief[: max(0, len(brief) - BRIEF_OPS_KEPT)])
    return tuple(op for i, op in enumerate(ops) if i not in dropped)


def _revision_of(segment: str) -> int:
    """The revision a segment's name starts with (``ledger/00000128-<hex>.json``); -1 if none."""
    stem = segment.rsplit("/", 1)[-1].split("-", 1)[0]
    return int(stem) if stem.isdigit() else -1


def _delete_segments_before(uri: str, revision: int) -> None:
    """Delete the segments older than the previous snapshot (``revision``): no head has named them
    for ``COMPACT_AFTER`` updates, and the segments of races lost since. Best effort: a segment
    left behind costs storage only."""
    folder = storage.join(folder_of(uri), SEGMENT_DIR) + "/"
    stale = sorted((u for u in storage.list_uris(folder) if 0 <= _revision_of(u) < revision), key=_revision_of)
    # At most DELETED_PER_SNAPSHOT an update (the first snapshot of an aged campaign finds thousands):
    # the rest go at the snapshots after it, and the update that deletes stays quick.
    for old in stale[:DELETED_PER_SNAPSHOT]:
        try:
            storage.delete(old)
        except storage.StorageError as err:
            log.warning("%s: could not delete the old ledger segment %s: %s", uri, old, err)


__all__ = [
    "COMPACT_AFTER",
    "LabelPart",
    "Ledger",
    "LedgerConflictError",
    "LedgerError",
    "check_ledger",
    "create_ledger",
    "decode_ids",
    "encode_ids",
    "folder_of",
    "read_ledger",
    "update_ledger",
]
