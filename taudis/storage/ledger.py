"""The campaign ledger: which images are labelled, pending or unlabelled, and every round's record.

One JSON document per campaign, at a URI (``gs://bucket/campaign/ledger.json`` or a local path).
Layout (schema ``taudis.ledger``, version 1)::

    {
      "schema": "taudis.ledger", "version": 1,
      "campaign": str,
      "revision": int,            # +1 per applied update (0 at creation)
      "created": str, "updated": str,           # ISO 8601 UTC
      "pool": [int, ...],         # every image id of the campaign, sorted
      "labelled": [int, ...],     # sorted, subset of pool
      "pending": [int, ...],      # sent to annotators, labels not back yet; sorted, disjoint from labelled
      "unlabelled": [int, ...],   # pool - labelled - pending (stored for readers; checked on read)
      "rounds": [{"round": int, "strategy": str, "params": {}, "images": [int, ...] (selection order),
                  "model_uri": str, "metrics": {}, "op_id": str, "recorded": str}, ...],
      "ops": [{"op_id": str, "revision": int, "at": str}, ...]   # every update applied, in order
    }

Every update is a compare-and-swap (``taudis.storage.write_if_generation``): read the document and
its generation, apply a pure function, write only if the generation is unchanged, else read again
and re-apply. Each update carries an op id that the document records; an update whose op id is
already there is not applied again, so an update whose first attempt landed but whose answer was
lost (a 412 on the library's retry, or a connection error after the write) returns the landed
state instead of applying twice. Concurrent writers never lose an update (the loser of a race
re-applies on the new state), and readers never see a half-written document (GCS objects and local
renames are atomic).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from taudis.storage import uri as storage

SCHEMA = "taudis.ledger"
VERSION = 1
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
class Ledger:
    """One campaign's state (immutable: update functions return a new Ledger)."""

    campaign: str
    pool: tuple[int, ...]
    labelled: frozenset[int] = frozenset()
    pending: frozenset[int] = frozenset()
    rounds: tuple[dict[str, Any], ...] = ()
    ops: tuple[dict[str, Any], ...] = ()
    revision: int = 0
    created: str = ""
    updated: str = ""
    uri: str = field(default="", compare=False)

    @property
    def unlabelled(self) -> frozenset[int]:
        """Pool images neither labelled nor pending: what selection may choose from."""
        return frozenset(self.pool) - self.labelled - self.pending

    @property
    def op_ids(self) -> frozenset[str]:
        return frozenset(str(op["op_id"]) for op in self.ops)

    def has_op(self, op_id: str) -> bool:
        """Whether the update with this op id was applied."""
        return op_id in self.op_ids

    def round(self, round_index: int) -> dict[str, Any] | None:
        """The record of round ``round_index``, if recorded."""
        return next((r for r in self.rounds if r["round"] == round_index), None)

    def to_json(self) -> dict[str, Any]:
        """The document (see the module docstring)."""
        return {
            "schema": SCHEMA,
            "version": VERSION,
            "campaign": self.campaign,
            "revision": self.revision,
            "created": self.created,
            "updated": self.updated,
            "pool": sorted(self.pool),
            "labelled": sorted(self.labelled),
            "pending": sorted(self.pending),
            "unlabelled": sorted(self.unlabelled),
            "rounds": [dict(r) for r in self.rounds],
            "ops": [dict(o) for o in self.ops],
        }


# ---------------------------------------------------------------------------------- validation


def _int_list(doc: Mapping[str, Any], key: str, uri: str) -> list[int]:
    value = doc.get(key)
    if not isinstance(value, list):
        raise LedgerError(uri, f"expected a list of image ids, got {type(value).__name__}", field=key)
    for index, item in enumerate(value):
        if isinstance(item, bool) or not isinstance(item, int):
            raise LedgerError(uri, f"item {index} is {item!r}, not an integer image id", field=key)
    if len(set(value)) != len(value):
        dup = next(v for v in value if value.count(v) > 1)
        raise LedgerError(uri, f"image id {dup} listed twice", field=key)
    return list(value)


def parse_ledger(doc: Any, uri: str = "<memory>") -> Ledger:
    """Validate a ledger document and return the Ledger.

    Raises:
        LedgerError: wrong schema or version, a missing or mistyped field, or inconsistent sets
            (labelled and pending overlap, ids outside the pool, ``unlabelled`` not the rest).
    """
    if not isinstance(doc, dict):
        raise LedgerError(uri, f"expected a JSON object, got {type(doc).__name__}")
    if doc.get("schema") != SCHEMA:
        raise LedgerError(uri, f"not a {SCHEMA} document (schema {doc.get('schema')!r})", field="schema")
    if doc.get("version") != VERSION:
        raise LedgerError(uri, f"unknown version {doc.get('version')!r} (this taudis reads {VERSION})", field="version")
    for key, kind in (("campaign", str), ("revision", int), ("rounds", list), ("ops", list)):
        if not isinstance(doc.get(key), kind) or isinstance(doc.get(key), bool):
            raise LedgerError(uri, f"missing or not a {kind.__name__}", field=key)
    pool = _int_list(doc, "pool", uri)
    labelled, pending = _int_list(doc, "labelled", uri), _int_list(doc, "pending", uri)
    pool_set = set(pool)
    for key, ids in (("labelled", labelled), ("pending", pending)):
        outside = sorted(set(ids) - pool_set)
        if outside:
            raise LedgerError(uri, f"image ids {outside[:10]} are not in the pool", field=key)
    both = sorted(set(labelled) & set(pending))
    if both:
        raise LedgerError(uri, f"image ids {both[:10]} are both labelled and pending", field="pending")
    if "unlabelled" in doc:
        unlabelled = _int_list(doc, "unlabelled", uri)
        if set(unlabelled) != pool_set - set(labelled) - set(pending):
            raise LedgerError(uri, "is not pool minus labelled minus pending", field="unlabelled")
    rounds = doc["rounds"]
    for index, record in enumerate(rounds):
        if not isinstance(record, dict):
            raise LedgerError(uri, f"round {index} is not an object", field="rounds")
        for key, kind in (("round", int), ("strategy", str), ("images", list), ("op_id", str)):
            if not isinstance(record.get(key), kind):
                raise LedgerError(uri, f"round {index}: missing or not a {kind.__name__}", field=f"rounds.{key}")
    ops = doc["ops"]
    for index, op in enumerate(ops):
        if not isinstance(op, dict) or not isinstance(op.get("op_id"), str):
            raise LedgerError(uri, f"op {index} has no op_id string", field="ops")
    return Ledger(
        campaign=doc["campaign"],
        pool=tuple(sorted(pool)),
        labelled=frozenset(labelled),
        pending=frozenset(pending),
        rounds=tuple(dict(r) for r in rounds),
        ops=tuple(dict(o) for o in ops),
        revision=doc["revision"],
        created=str(doc.get("created", "")),
        updated=str(doc.get("updated", "")),
        uri=uri,
    )


def _encode(ledger: Ledger) -> bytes:
    return storage.dumps_json(ledger.to_json())


def _decode(data: bytes, uri: str) -> Ledger:
    try:
        doc = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise LedgerError(uri, f"not valid JSON: {err}") from err
    return parse_ledger(doc, uri)


# ------------------------------------------------------------------------------------- access


def create_ledger(
    uri: str | os.PathLike[str],
    pool_ids: Iterable[int],
    labelled_ids: Iterable[int] = (),
    *,
    campaign: str = "",
    exist_ok: bool = False,
) -> Ledger:
    """Create a campaign's ledger (conditional on the object not existing).

    Args:
        uri: where the ledger lives.
        pool_ids: every image id of the campaign.
        labelled_ids: images already labelled (the seed set).
        campaign: a name (default: the ledger's parent folder name).
        exist_ok: if a ledger already exists there, return it (it must have the same pool and
            seed) instead of failing; this makes a retried "create" step idempotent.

    Raises:
        LedgerError: the ledger exists (without exist_ok, or with another pool / seed), or the
            seed is not in the pool.
    """
    uri = str(uri)
    pool = sorted({int(i) for i in pool_ids})
    labelled = frozenset(int(i) for i in labelled_ids)
    if len(pool) == 0:
        raise LedgerError(uri, "the pool is empty", field="pool")
    outside = sorted(labelled - set(pool))
    if outside:
        raise LedgerError(uri, f"seed image ids {outside[:10]} are not in the pool", field="labelled")
    name = campaign or os.path.basename(os.path.dirname(uri.rstrip("/"))) or "campaign"
    now = _now()
    ledger = Ledger(campaign=name, pool=tuple(pool), labelled=labelled, created=now, updated=now, uri=uri)
    try:
        storage.write_if_generation(uri, _encode(ledger), 0)
        return ledger
    except storage.PreconditionFailedError:
        existing = read_ledger(uri)
        if not exist_ok:
            raise LedgerError(uri, "a ledger already exists here (pass exist_ok to reuse it)") from None
        if set(existing.pool) != set(pool) or (existing.rounds == () and existing.labelled != labelled):
            raise LedgerError(uri, "a ledger with another pool or seed already exists here", field="pool") from None
        return existing


def read_ledger(uri: str | os.PathLike[str]) -> Ledger:
    """Read and validate a ledger.

    Raises:
        storage.NotFoundError: no ledger at ``uri``.
        LedgerError: the document is invalid.
    """
    uri = str(uri)
    versioned = storage.read_versioned(uri)
    if versioned is None:
        raise storage.NotFoundError(f"ledger {uri}: not found")
    return _decode(versioned.data, uri)


def update_ledger(
    uri: str | os.PathLike[str],
    op_id: str,
    fn: Callable[[Ledger], Ledger],
    *,
    kind: str = "update",
    timeout: float | None = None,
) -> Ledger:
    """Apply ``fn`` to the ledger by compare-and-swap, exactly once per ``op_id``.

    ``fn`` must be a pure function of the ledger it gets (it may run several times, on newer
    states, when writers race); it may raise LedgerError to refuse the update. Retried: 412
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
            return _update_once(uri, op_id, fn, kind)
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


def _update_once(uri: str, op_id: str, fn: Callable[[Ledger], Ledger], kind: str) -> Ledger:
    versioned = storage.read_versioned(uri)
    if versioned is None:
        raise storage.NotFoundError(f"ledger {uri}: not found")
    current = _decode(versioned.data, uri)
    if current.has_op(op_id):
        return current
    proposed = fn(current)
    now = _now()
    new = dataclasses.replace(
        proposed,
        campaign=current.campaign,
        pool=current.pool,
        revision=current.revision + 1,
        created=current.created,
        updated=now,
        ops=(*current.ops, {"op_id": op_id, "kind": kind, "revision": current.revision + 1, "at": now}),
        uri=uri,
    )
    parse_ledger(new.to_json(), uri)  # never write a document a reader would reject
    storage.write_if_generation(uri, _encode(new), versioned.generation)
    return new


# ------------------------------------------------------------------------------- convenience ops


def _ids(image_ids: Iterable[int]) -> list[int]:
    return [int(i) for i in image_ids]


def record_round(
    uri: str | os.PathLike[str],
    round_index: int,
    strategy: str,
    params: Mapping[str, Any],
    image_ids: Sequence[int],
    model_uri: str = "",
    metrics: Mapping[str, Any] | None = None,
    *,
    op_id: str | None = None,
) -> Ledger:
    """Record a round's selection and mark its images pending.

    The default op id is ``record_round:<round_index>``, so a retried pipeline step with the same
    round and images is a no-op.

    Raises:
        LedgerError: an image is not in the pool, already labelled or pending, listed twice; the
            round is already recorded by another op, or by this op with other images.
    """
    uri = str(uri)
    chosen = _ids(image_ids)
    op = op_id or f"record_round:{int(round_index)}"

    def apply(ledger: Ledger) -> Ledger:
        if len(set(chosen)) != len(chosen):
            raise LedgerError(uri, f"round {round_index}: an image id is listed twice", field="rounds.images")
        if ledger.round(int(round_index)) is not None:
            raise LedgerError(uri, f"round {round_index} is already recorded", field="rounds.round")
        pool = set(ledger.pool)
        for name, bad in (
            ("not in the pool", [i for i in chosen if i not in pool]),
            ("already labelled", [i for i in chosen if i in ledger.labelled]),
            ("already pending", [i for i in chosen if i in ledger.pending]),
        ):
            if bad:
                raise LedgerError(uri, f"round {round_index}: image ids {bad[:10]} are {name}", field="rounds.images")
        record = {
            "round": int(round_index),
            "strategy": str(strategy),
            "params": dict(params),
            "images": chosen,
            "model_uri": str(model_uri),
            "metrics": dict(metrics or {}),
            "op_id": op,
            "recorded": _now(),
        }
        return dataclasses.replace(ledger, pending=ledger.pending | set(chosen), rounds=(*ledger.rounds, record))

    result = update_ledger(uri, op, apply, kind="record_round")
    recorded = result.round(int(round_index))
    if recorded is not None and recorded["op_id"] == op and recorded["images"] != chosen:
        # The op id was applied before with another selection: a silent no-op would hide it.
        raise LedgerError(
            uri, f"round {round_index} was recorded by op {op!r} with other images", field="rounds.images"
        )
    return result


def mark_labelled(uri: str | os.PathLike[str], image_ids: Iterable[int], *, op_id: str) -> Ledger:
    """Move images from pending to labelled.

    Raises:
        LedgerError: an image is not pending.
    """
    uri = str(uri)
    ids = set(_ids(image_ids))

    def apply(ledger: Ledger) -> Ledger:
        not_pending = sorted(ids - ledger.pending)
        if not_pending:
            raise LedgerError(uri, f"image ids {not_pending[:10]} are not pending", field="pending")
        return dataclasses.replace(ledger, pending=ledger.pending - ids, labelled=ledger.labelled | ids)

    return update_ledger(uri, op_id, apply, kind="mark_labelled")


def record_metrics(
    uri: str | os.PathLike[str], round_index: int, metrics: Mapping[str, Any], *, op_id: str | None = None
) -> Ledger:
    """Merge ``metrics`` into round ``round_index``'s record (e.g. the AP of the model it trained).

    Raises:
        LedgerError: the round is not recorded.
    """
    uri = str(uri)
    op = op_id or f"record_metrics:{int(round_index)}:{json.dumps(dict(metrics), sort_keys=True, default=str)}"

    def apply(ledger: Ledger) -> Ledger:
        if ledger.round(int(round_index)) is None:
            raise LedgerError(uri, f"round {round_index} is not recorded", field="rounds.round")
        rounds = tuple(
            {**r, "metrics": {**r.get("metrics", {}), **dict(metrics)}} if r["round"] == int(round_index) else r
            for r in ledger.rounds
        )
        return dataclasses.replace(ledger, rounds=rounds)

    return update_ledger(uri, op, apply, kind="record_metrics")
