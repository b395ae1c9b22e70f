"""The campaign's pool follows the pool file: images added to it become choosable, removed ones leave.

The pool file (COCO, usually in the bucket beside the images) is what the team maintains; the
ledger's pool follows it at the start of every round, under compare-and-swap:

- an image of the file that the ledger does not know joins the pool as unlabelled;
- an unlabelled image that left the file leaves the pool (it can no longer be chosen);
- labelled and pending images stay, whatever the file says: their labels (or the annotators'
  work on them) are never thrown away.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from taudis.campaign.layout import Campaign
from taudis.storage.ledger import LabelPart, Ledger, create_ledger, update_ledger

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


def pool_ids(pool: Mapping[str, Any]) -> frozenset[int]:
    return frozenset(int(image["id"]) for image in pool["images"])


def synced(ledger: Ledger, ids: Iterable[int]) -> Ledger:
    """The ledger with its pool following ``ids`` (the rules in the module docstring)."""
    wanted = frozenset(ids)
    removed = ledger.unlabelled - wanted
    pool = (ledger.pool | wanted) - removed
    return ledger if pool == ledger.pool else dataclasses.replace(ledger, pool=pool)


def sync_pool(campaign: Campaign, pool: Mapping[str, Any]) -> dict[str, int]:
    """Bring the ledger's pool in line with the pool file; returns {"added", "removed", "pool"}."""
    ids = pool_ids(pool)
    change: dict[str, int] = {}

    def apply(ledger: Ledger) -> Ledger:
        new = synced(ledger, ids)
        change.update(added=len(new.pool - ledger.pool), removed=len(ledger.pool - new.pool), pool=len(new.pool))
        return new

    update_ledger(campaign.ledger, f"sync_pool:{uuid.uuid4().hex}", apply, kind="sync_pool")
    if change["added"] or change["removed"]:
        log.info("pool of %s: %d images added, %d removed", campaign.uri, change["added"], change["removed"])
    return change


def ensure_ledger(campaign: Campaign, pool: Mapping[str, Any], seed: LabelPart | None) -> Ledger:
    """The campaign's ledger, created on first use (pool file images plus the seed's), race-safe."""
    ids = pool_ids(pool) | (seed.images if seed is not None else frozenset())
    return create_ledger(campaign.ledger, ids, seed, exist_ok=True)
