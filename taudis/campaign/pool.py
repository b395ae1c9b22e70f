"""The campaign's pool follows the pool file: images added to it become choosable, removed ones leave.

The pool file (COCO, usually in the bucket beside the images) is what the team maintains; the
ledger's pool follows it at the start of every round, under compare-and-swap:

- an image of the file that the ledger does not know joins the pool as unlabelled;
- an unlabelled image that left the file leaves the pool (it can no longer be chosen);
- labelled and pending images stay, whatever the file says: their labels (or the annotators'
  work on them) are never thrown away;
- a withdrawn image (taudis.campaign.withdraw) never comes back, whatever the file says: not
  under its id, nor under its file name with a new id;
- an image's id never changes once the campaign knows it: a pool file that gives a labelled or
  pending image's id to another file (a file regenerated and renumbered; names compared as
  ingest matches them, so ``a.png`` and ``imgs/a.png`` are one file), or that file another id,
  is refused before anything changes, since the ledger keeps ids and every later label,
  task and training would then silently pair pixels with the wrong labels.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from taudis.campaign.layout import Campaign
from taudis.storage.ledger import LabelPart, Ledger, create_ledger, read_ledger, update_ledger

log = logging.getLogger(__name__)


def load_pool(pool_annotations: str) -> dict[str, Any]:
    """The pool file, validated as COCO: every image id an integer, every file and category name once.

    The team edits this file by hand or by script for months; an id of "7" beside 7, or one
    file under two ids, would merge or split images in the ledger without a word.

    Raises:
        taudis.data.coco.CocoFormatError: naming the file, the record and the field.
    """
    from taudis.data.coco import load_coco

    return load_coco(pool_annotations)


def check_pool_names(pool: Mapping[str, Any], known: Mapping[int, str], source: str) -> None:
    """Refuse a pool file that renumbered images the campaign knows (module docstring).

    Args:
        pool: the pool file, validated.
        known: image id -> file name of every labelled and pending image (labels.known_file_names).
        source: the pool file's URI, for the message.

    Raises:
        taudis.data.coco.CocoFormatError: naming the pool file, the first images and the fix.
    """
    from taudis.campaign.ingest import normal_name, same_file_name
    from taudis.data.coco import CocoFormatError

    given = {int(im["id"]): str(im["file_name"]) for im in pool["images"]}
    id_of = {normal_name(name): image_id for image_id, name in given.items()}
    moved = []
    for image_id, name in sorted(known.items()):
        if image_id in given and not same_file_name(given[image_id], name):
            moved.append(f"id {image_id} is {given[image_id]!r} here but the campaign's {name!r}")
        elif id_of.get(normal_name(name), image_id) != image_id:
            moved.append(f"{name!r} is id {id_of[normal_name(name)]} here but id {image_id} in the campaign")
    if moved:
        message = (
            f"{len(moved)} labelled or pending images have another id or file than the campaign gave them: "
            f"{'; '.join(moved[:5])}. The pool file renumbered or renamed them: keep every image's id and "
            "file once the campaign knows it (new images take new ids), then run again; nothing was changed"
        )
        raise CocoFormatError(source, message, field="images")


def pool_ids(pool: Mapping[str, Any]) -> frozenset[int]:
    return frozenset(int(image["id"]) for image in pool["images"])


def synced(ledger: Ledger, ids: Iterable[int]) -> Ledger:
    """The ledger with its pool following ``ids`` (the rules in the module docstring)."""
    wanted = frozenset(ids) - ledger.withdrawn
    removed = ledger.unlabelled - wanted
    pool = (ledger.pool | wanted) - removed
    return ledger if pool == ledger.pool else dataclasses.replace(ledger, pool=pool)


def without_withdrawn(
    pool: Mapping[str, Any], withdrawn: Mapping[int, Mapping[str, Any]]
) -> tuple[dict[str, Any], int]:
    """The pool file less the withdrawn images it still lists, by id or by file name (a file put
    back under a new id), and how many it listed.

    Args:
        withdrawn: taudis.campaign.withdraw.withdrawn_images.
    """
    from taudis.campaign.ingest import normal_name, same_file_name

    by_base: dict[str, list[str]] = {}
    for image in withdrawn.values():
        name = normal_name(str(image["file_name"]))
        by_base.setdefault(name.rsplit("/", 1)[-1], []).append(name)

    def gone(image: Mapping[str, Any]) -> bool:
        if int(image["id"]) in withdrawn:
            return True
        name = normal_name(str(image["file_name"]))
        return any(same_file_name(name, other) for other in by_base.get(name.rsplit("/", 1)[-1], ()))

    kept = [im for im in pool["images"] if not gone(im)]
    return {**pool, "images": kept}, len(pool["images"]) - len(kept)


def sync_pool(
    campaign: Campaign, pool: Mapping[str, Any], also: Callable[[Ledger, dict[str, int]], Ledger] | None = None
) -> dict[str, int]:
    """Bring the ledger's pool in line with the pool file; returns this sync's {"added", "removed",
    "pool"}, and "withdrawn_listed" where the file still lists withdrawn images (how many).

    Args:
        also: a further change in the same ledger write, given the new ledger and the change (the
            round's record of it: taudis.campaign.rounds.pool_change_recorder), so that a step
            that dies after the sync loses no word of it.
    """
    from taudis.campaign.withdraw import withdrawn_images

    pool, listed = without_withdrawn(pool, withdrawn_images(campaign, read_ledger(campaign.ledger)))
    ids = pool_ids(pool)
    change: dict[str, int] = {"withdrawn_listed": listed} if listed else {}

    def apply(ledger: Ledger) -> Ledger:
        new = synced(ledger, ids)
        change.update(added=len(new.pool - ledger.pool), removed=len(ledger.pool - new.pool), pool=len(new.pool))
        return also(new, dict(change)) if also is not None else new

    update_ledger(campaign.ledger, f"sync_pool:{uuid.uuid4().hex}", apply, kind="sync_pool", brief=True)
    if change["added"] or change["removed"]:
        log.info("pool of %s: %d images added, %d removed", campaign.uri, change["added"], change["removed"])
    if change.get("withdrawn_listed"):
        log.warning(
            "pool of %s: the pool file still lists %d withdrawn images; they stay out of the campaign "
            "(remove them from the pool file, and the files from the bucket)", campaign.uri, change["withdrawn_listed"]
        )  # fmt: skip
    return change


def ensure_ledger(campaign: Campaign, pool: Mapping[str, Any], seed: LabelPart | None) -> Ledger:
    """The campaign's ledger, created on first use (pool file images plus the seed's), race-safe."""
    ids = pool_ids(pool) | (seed.images if seed is not None else frozenset())
    return create_ledger(campaign.ledger, ids, seed, exist_ok=True)
