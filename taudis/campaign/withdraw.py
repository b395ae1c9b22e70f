"""Withdrawing images from a campaign for good: a data-deletion request, an image that must not be used.

``taudis campaign withdraw CAMPAIGN --pool POOL ID ...`` takes the images out:

1. It writes ``withdrawals/<op>.json`` first: each image's id and file name (from the pool file,
   or from where the campaign last saw it) and every place it found the images.
2. One ledger update takes them out of the pool, pending and the labelled set, into the ledger's
   ``withdrawn`` set. Each label part holding one gives way to a part without it, written before
   the update, as a correction does. From then on:
   - no pool file brings them back, under their id or under their file name with a new id;
   - no round chooses or trains on them;
   - labels for them that arrive later are left out by name, and the rest of their file goes in.
3. Their labels leave every label file under labels/ that the ledger does not list: the parts
   just replaced, older ones a correction replaced, and one a killed ingest left. Each such file
   is rewritten without them (conditional on the version read), or deleted when nothing is left.
   This is the one exception to "a part is never rewritten", and it is safe: an update that
   would list a withdrawn image is refused, so none of these files can be listed again. An
   ingest in flight classifies its file again, leaves the images out, and deletes its own
   refused part. Then labelled.json is rewritten.

Every step is idempotent. A withdrawal killed anywhere finishes when run again, and reports from
its record; one killed after its ledger update is finished by the next round's ingest step too
(:func:`finish_withdrawals`: the record says whether its scrub was done).

What it does not touch, and names so that someone can: the image files and the pool file (the
team's), the seed file, the annotators' files in incoming/, the round folders whose tasks,
reports and models show or learnt from the images, and the labelling tool's own copy.

Refused while a round is claimed by a run: its choice may hold the images, and the run could not
then commit it. Withdraw once it is published, or first release a dead run's claim (`taudis
campaign release`). A choice committed and left unpublished (``selected``) is published first.
An image whose file name neither the pool file nor the labels give is refused: it could come
back under a new id.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from taudis import storage
from taudis.campaign.labels import known_images, part_without, publish_labelled
from taudis.campaign.layout import Campaign
from taudis.campaign.rounds import choosing_round, recover_rounds
from taudis.storage.ledger import LabelPart, Ledger, LedgerError, read_ledger, update_ledger

log = logging.getLogger(__name__)

SCHEMA = "taudis.withdrawal"
SCRUBBED = "scrubbed"  # in a record: its scrub of the label files was done (finish_withdrawals)
RACE_RETRIES = 5  # other label updates landing between making the remainders and the update


@dataclass(frozen=True)
class Withdrawal:
    """What a withdrawal did, and where else the images still appear."""

    campaign: str
    labelled: list[int] = field(default_factory=list)  # withdrawn: were labelled
    pending: list[int] = field(default_factory=list)  # withdrawn: were with the annotators
    unlabelled: list[int] = field(default_factory=list)  # withdrawn: were never chosen
    already: list[int] = field(default_factory=list)  # withdrawn by an earlier withdrawal
    label_files: list[str] = field(default_factory=list)  # files under labels/ their labels were taken from
    elsewhere: list[str] = field(default_factory=list)  # what still shows them, for a person to see to
    record: str = ""  # the withdrawal's record

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def withdraw_images(campaign: Campaign, image_ids: Iterable[int], pool: Mapping[str, Any]) -> Withdrawal:
    """Take ``image_ids`` out of the campaign for good (module docstring); ``pool``: the pool file.

    Raises:
        LedgerError: an id the campaign never had, or one whose file name neither ``pool`` nor a
            label file gives, or a round claimed by a run (nothing is changed then).
    """
    ids = frozenset(int(i) for i in image_ids)
    if not ids:
        raise LedgerError(campaign.ledger, "no image ids given", field="withdrawn")
    op_id = "withdraw:" + hashlib.sha256(json.dumps(sorted(ids)).encode()).hexdigest()[:16]
    ledger = read_ledger(campaign.ledger)
    if not ledger.has_op(op_id) and any(r["state"] == "selected" for r in ledger.rounds):
        _named(campaign, ledger, ids, pool)  # its refusals first: a refused withdrawal changes nothing
        # A choice committed and left unpublished (its run died publishing it) is published, as the
        # next run would do first, rather than holding up a data-deletion request until then.
        recover_rounds(campaign)
        ledger = read_ledger(campaign.ledger)
    if not ledger.has_op(op_id):
        # Written (again) before the update: until the update lands, nothing reads it.
        storage.write_json(campaign.withdrawal(op_id), _record(campaign, ledger, ids, pool, op_id))
        _update(campaign, ledger, ids, op_id)
    record = storage.read_json(campaign.withdrawal(op_id))
    scrubbed = scrub_label_files(campaign)
    publish_labelled(campaign)  # the published view, without them
    if not record.get(SCRUBBED):
        storage.write_json(campaign.withdrawal(op_id), {**record, SCRUBBED: True})
    log.info("campaign %s: withdrew images %s", campaign.uri, sorted(ids)[:20])
    were = record["were"]
    return Withdrawal(
        campaign=campaign.uri,
        labelled=were["labelled"],
        pending=were["pending"],
        unlabelled=were["unlabelled"],
        already=were["withdrawn"],
        label_files=scrubbed,
        elsewhere=record["elsewhere"],
        record=campaign.withdrawal(op_id),
    )


def _update(campaign: Campaign, ledger: Ledger, ids: frozenset[int], op_id: str) -> None:
    for attempt in range(RACE_RETRIES + 1):
        holders = [p for p in ledger.parts if p.images & ids]
        remainders = {p.op_id: part_without(campaign, p, ids, op_id=f"{p.op_id}~{op_id}") for p in holders}
        try:
            update_ledger(campaign.ledger, op_id, _withdrawn(ids, remainders), kind="withdraw")
            return
        except LedgerError as err:
            if err.field != "parts" or attempt == RACE_RETRIES:
                raise
            ledger = read_ledger(campaign.ledger)  # a label update landed meanwhile: make the remainders again


def _withdrawn(ids: frozenset[int], remainders: dict[str, LabelPart | None]) -> Any:
    """The update: ``ids`` leave pool, pending and parts (each holder replaced by its remainder)."""

    def apply(ledger: Ledger) -> Ledger:
        _refuse_unknown(ledger, ids)  # again: the ledger may have changed since the record was made
        record = choosing_round(ledger)
        if record is not None and ids - ledger.withdrawn:
            raise LedgerError(
                ledger.uri,
                f"round {record['round']} is {record['state']} by run {record.get('run')!r} and not published, and "
                "its choice may hold these images: withdraw once it is published, or, if that run is dead, "
                "run `taudis campaign release` first; nothing was withdrawn",
                field="rounds",
            )
        holders = {p.op_id for p in ledger.parts if p.images & ids}
        if holders != set(remainders):
            raise LedgerError(ledger.uri, "the label parts changed while the withdrawal was made", field="parts")
        kept = tuple(q for p in ledger.parts if (q := remainders.get(p.op_id, p)) is not None)
        return dataclasses.replace(
            ledger,
            pool=ledger.pool - ids,
            pending=ledger.pending - ids,
            parts=kept,
            withdrawn=ledger.withdrawn | ids,
        )

    return apply


# ------------------------------------------------------------------------------------ the record


def _record(
    campaign: Campaign, ledger: Ledger, ids: frozenset[int], pool: Mapping[str, Any], op_id: str
) -> dict[str, Any]:
    """The withdrawal's record: the images by id and file name, what they were, where they show."""
    named = _named(campaign, ledger, ids, pool)
    return {
        "schema": SCHEMA,
        "op_id": op_id,
        "images": [named.get(i, {"id": i}) for i in sorted(ids)],
        "were": {
            "labelled": sorted(ids & ledger.labelled),
            "pending": sorted(ids & ledger.pending),
            "unlabelled": sorted(ids & ledger.unlabelled),
            "withdrawn": sorted(ids & ledger.withdrawn),
        },
        "elsewhere": _elsewhere(campaign, ledger, ids),
    }


def _refuse_unknown(ledger: Ledger, ids: frozenset[int]) -> None:
    unknown = sorted(ids - ledger.pool - ledger.withdrawn)
    if unknown:
        raise LedgerError(ledger.uri, f"image ids {unknown[:10]} are not in the campaign: nothing was withdrawn")


def _named(
    campaign: Campaign, ledger: Ledger, ids: frozenset[int], pool: Mapping[str, Any]
) -> dict[int, dict[str, Any]]:
    """Every image the pool file, the labels or earlier withdrawals name, by id ({"id", "file_name",
    "height", "width"}), once ``ids`` are known to be the campaign's and named.

    Raises:
        LedgerError: an id the campaign never had, or one in its pool whose file name is unknown.
    """
    _refuse_unknown(ledger, ids)
    keys = ("id", "file_name", "height", "width")
    named = {int(im["id"]): {k: im[k] for k in keys if k in im} for im in pool["images"]}
    named |= {i: {k: im[k] for k in keys if k in im} for i, im in known_images(campaign, ledger).items()}
    named |= withdrawn_images(campaign, ledger)
    nameless = sorted(i for i in ids & ledger.pool if "file_name" not in named.get(i, {}))
    if nameless:
        # Kept out by name too (taudis.campaign.pool.without_withdrawn): without it, a pool file
        # listing the same file under a new id would bring it back.
        raise LedgerError(
            ledger.uri,
            f"image ids {nameless[:10]} are in no pool file given and in no label file, so their file names are "
            "unknown: pass --pool a pool file that lists them (the one before they were dropped); nothing was "
            "withdrawn",
            field="withdrawn",
        )
    return named


def withdrawn_images(campaign: Campaign, ledger: Ledger) -> dict[int, dict[str, Any]]:
    """Withdrawn image id -> {"id", "file_name", "height", "width"} from the records of the withdrawals the ledger holds
    (the names by which a pool file or a tool's export may bring them back)."""
    if not ledger.withdrawn:
        return {}
    found: dict[int, dict[str, Any]] = {}
    for _, document in _landed_records(campaign, ledger):
        found |= {int(im["id"]): dict(im) for im in document.get("images", []) if "file_name" in im}
    return {i: im for i, im in found.items() if i in ledger.withdrawn}


def _landed_records(campaign: Campaign, ledger: Ledger) -> list[tuple[str, dict[str, Any]]]:
    """(URI, record) of every withdrawal whose ledger update landed (a record is written before it)."""
    records = []
    for uri in storage.list_uris(campaign.withdrawals):
        document = storage.read_json(uri)
        if isinstance(document, dict) and ledger.has_op(str(document.get("op_id"))):
            records.append((uri, document))
    return records


def _elsewhere(campaign: Campaign, ledger: Ledger, ids: frozenset[int]) -> list[str]:
    """Where the campaign shows the images outside the ledger and labels/ (for a person to keep or delete)."""
    out = []
    sources: dict[str, set[int]] = {}
    for document in _label_documents(campaign):
        held = _images_of(document) & ids
        taudis = (document.get("info") or {}).get("taudis") or {}
        source = str(taudis.get("op_id" if taudis.get("source") == "seed" else "source", ""))  # seed:<file>
        if held:
            sources.setdefault(source, set()).update(held)
    for source, images in sorted(sources.items()):
        shown = sorted(images)[:10]
        if source.startswith("seed:"):
            out.append(f"the seed file {source[len('seed:') :]!r} (the first labelled set) holds labels of {shown}")
        elif source and source != "oracle":
            out.append(f"the annotators' file {source!r}, now in incoming/done/, brought labels of {shown}")
    for record in ledger.rounds:
        chosen = sorted(ids & set(record.get("images") or []))
        if chosen:
            where = campaign.round_dir(record["round"])
            out.append(f"{where}: round {record['round']}'s tasks and report show {chosen[:10]}")
    out.append(
        "the image files, the pool file and the labelling tool's project; files in incoming/ and "
        "incoming/rejected/ that name them; the models of the rounds that trained on them: the team's to delete"
    )
    return out


def finish_withdrawals(campaign: Campaign) -> list[str]:
    """Scrub the label files for every withdrawal whose record does not say it was scrubbed (one
    killed after its ledger update), then mark the records; returns the files changed. The ingest
    step calls it every round, so such a withdrawal finishes without anyone running it again."""
    ledger = read_ledger(campaign.ledger)
    if not ledger.withdrawn:
        return []
    unfinished = [(uri, record) for uri, record in _landed_records(campaign, ledger) if not record.get(SCRUBBED)]
    if not unfinished:
        return []
    changed = scrub_label_files(campaign)  # reads the ledger after these records' ops landed: theirs included
    for uri, record in unfinished:
        storage.write_json(uri, {**record, SCRUBBED: True})
    log.info(
        "campaign %s: finished %d withdrawals (%d label files changed)", campaign.uri, len(unfinished), len(changed)
    )
    return changed


# --------------------------------------------------------------------------------------- scrub


def scrub_label_files(campaign: Campaign) -> list[str]:
    """Take the withdrawn images' labels out of every label file the ledger does not list (module
    docstring); returns the files changed, as "labels/<file> (rewritten)" or "(deleted)".

    A rewrite is conditional on the version read, so a concurrent withdrawal's scrub is never undone
    by a stale copy; the ledger is read after the files are listed, so every file listed then
    that it does not list can never be listed again.
    """
    uris = storage.list_uris(campaign.file("labels/"))
    ledger = read_ledger(campaign.ledger)
    if not ledger.withdrawn:
        return []
    listed = {p.name.rsplit("/", 1)[-1] for p in ledger.parts}
    changed = []
    for uri in uris:
        name = uri.rsplit("/", 1)[-1]
        if name not in listed and name.endswith(".json"):
            action = _scrub(uri, ledger.withdrawn)
            if action:
                changed.append(f"labels/{name} ({action})")
    return changed


def _scrub(uri: str, withdrawn: frozenset[int]) -> str:
    while True:
        versioned = storage.read_versioned(uri)
        if versioned is None:
            return ""
        try:
            document = json.loads(versioned.data)
            held = _images_of(document) & withdrawn
        except (ValueError, KeyError, TypeError) as err:
            log.warning("label file %s is not a label part (%s): not searched for withdrawn images", uri, err)
            return ""
        if not held:
            return ""
        kept = [im for im in document["images"] if int(im["id"]) not in held]
        if not kept:
            storage.delete(uri)  # a stale copy deleted holds less than any newer one
            return "deleted"
        annotations = [a for a in document.get("annotations", []) if int(a["image_id"]) not in held]
        try:
            storage.write_if_generation(
                uri, storage.dumps_json({**document, "images": kept, "annotations": annotations}), versioned.generation
            )
            return "rewritten"
        except storage.PreconditionFailedError:
            continue  # another scrub changed it meanwhile: start from its version


def _label_documents(campaign: Campaign) -> Iterable[dict[str, Any]]:
    for _uri, data in storage.iter_many(storage.list_uris(campaign.file("labels/")), missing_ok=True):
        try:
            document = json.loads(data) if data is not None else None
        except ValueError:
            continue
        if isinstance(document, dict):
            yield document


def _images_of(document: Mapping[str, Any]) -> set[int]:
    return {int(im["id"]) for im in document["images"]}
