"""The round's state machine: one record per round in the ledger, moved on only by compare-and-swap.

Read this module top to bottom to know what a round is. A pipeline run drives one round (the
campaign pipeline, several in a row); every step of it is retried by KFP, so every transition is
idempotent, and the next run finishes or rolls back whatever a dead run left half done::

    claim ──▶ claimed ──record_evaluation──▶ claimed ──commit_selection──▶ selected ──publish──▶ exported
                 │  ▲                                                         │
                 │  └── taken over by another run once the lease has expired  └── roll back ──▶ rolled_back
                 └──close_round──▶ closed   (an evaluation only: the campaign pipeline's last round)

- ``claimed``: run X owns round r. Only X may record the round's evaluation and selection; a
  retry of X's steps (same run id) carries on. Another run that starts meanwhile fails cleanly
  (RoundBusyError) without writing anything; once X has been silent for the lease
  (TAUDIS_ROUND_LEASE seconds, default a day) the next run takes round r over, and X's late
  writes are refused (RoundLostError). Metrics of a run that does not own its round are never
  recorded, so the learning curve shows the winner's numbers only.
- ``selected``: the ledger holds round r's images as pending, and names the staging archive where
  X wrote the round's tasks, selection and reports *before* committing (one object, so it exists
  whole or not at all; a loser never writes outside its own staging archive). Publishing
  unpacks it into rounds/round-r/ and marks the round ``exported``; anyone may publish, any
  number of times, since the content is fixed.
- ``exported``: tasks are where annotators find them. Images leave pending when their labels
  are ingested (taudis.campaign.ingest).
- ``rolled_back``: a selected round whose staging archive is gone (deleted by hand) cannot be
  published: its images go back to unlabelled, so none stays pending without tasks, and the
  next claim runs round r again.

Before claiming, a run recovers: it publishes every ``selected`` round (or rolls it back). So at
any moment outside a running step: no image is pending without tasks in exactly one round
folder, no round folder holds tasks for images that were not chosen by that round's winner,
and every round's published metrics are its winner's (taudis.campaign.invariants checks this).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import logging
import os
import uuid
import zipfile
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from taudis import storage
from taudis.campaign.layout import Campaign
from taudis.storage.ledger import Ledger, LedgerError, read_ledger, update_ledger

log = logging.getLogger(__name__)

LEASE_ENV = "TAUDIS_ROUND_LEASE"
DEFAULT_LEASE = 24 * 3600.0  # seconds a claim holds without news from its run
OPEN_STATES = ("claimed",)
RELEASED = " (released)"  # appended to the run id of a released claim: no run owns the round then
PUBLISHED_STATES = ("exported", "closed")


class RoundBusyError(LedgerError):
    """Another run holds the round and its lease has not expired: this run must not go on."""


class RoundLostError(LedgerError):
    """This run no longer owns the round (another run took it over): its results are not recorded."""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _stamp(moment: dt.datetime) -> str:
    return moment.isoformat(timespec="milliseconds")


def lease_seconds() -> float:
    return float(os.environ.get(LEASE_ENV, DEFAULT_LEASE))


def _replace_round(ledger: Ledger, record: Mapping[str, Any]) -> Ledger:
    rounds = [r for r in ledger.rounds if r["round"] != record["round"]]
    return dataclasses.replace(ledger, rounds=tuple(sorted([*rounds, dict(record)], key=lambda r: r["round"])))


def _owned(ledger: Ledger, round_index: int, run: str) -> dict[str, Any]:
    """Round r's record if ``run`` owns it and it is still claimed.

    Raises:
        RoundLostError: the round is owned by another run, or already past ``claimed``.
    """
    record = ledger.round(round_index)
    if record is None:
        raise RoundLostError(ledger.uri, f"round {round_index} was never claimed", field="rounds.round")
    if record.get("run") != run:
        raise RoundLostError(
            ledger.uri,
            f"round {round_index} is now run by {record.get('run')!r}, not by {run!r}: this run's results are dropped",
            field="rounds.run",
        )
    if record["state"] != "claimed":
        raise RoundLostError(ledger.uri, f"round {round_index} is already {record['state']}", field="rounds.state")
    return dict(record)


# ---------------------------------------------------------------------------------------- claim


def claim_round(campaign: Campaign, run: str) -> int:
    """Recover half-done rounds, then claim the next round for ``run``; returns its index.

    The next round is the last one if it is ``claimed`` by ``run`` (a retry), ``claimed`` by a
    run whose lease expired, or ``rolled_back``; else a new round after the last one. Staging
    archives no round needs any more (of runs taken over) are deleted after the claim.

    Raises:
        RoundBusyError: the last round is claimed by another run whose lease has not expired.
    """
    if not run:
        raise ValueError("a run needs a non-empty id to claim a round")
    recover_rounds(campaign)
    claimed: dict[str, int] = {}

    def apply(ledger: Ledger) -> Ledger:
        now = _now()
        last = max(ledger.rounds, key=lambda r: r["round"], default=None)
        if last is not None and last["state"] == "claimed" and last.get("run") != run:
            heard = dt.datetime.fromisoformat(last.get("heartbeat_at") or last["claimed_at"])
            if (now - heard).total_seconds() < lease_seconds():
                raise RoundBusyError(
                    ledger.uri,
                    f"round {last['round']} is being run by {last.get('run')!r} (last heard from at {_stamp(heard)}; "
                    f"{LEASE_ENV}={lease_seconds():.0f} s): this run stops without changing anything; if that "
                    "run is dead, `taudis campaign release` lets the next run take the round over now",
                    field="rounds.state",
                )
        if last is not None and last["state"] == "claimed" and last.get("run") == run:
            claimed["round"] = last["round"]
            return _replace_round(ledger, {**last, "heartbeat_at": _stamp(now)})
        if last is not None and last["state"] in ("claimed", "rolled_back"):
            before = {"run": last.get("run"), "state": last["state"], "until": last.get("heartbeat_at")}
            record = {
                k: v for k, v in last.items() if k not in ("metrics", "model_uri", "images", "staging", "selected_at")
            }
            record |= {
                "state": "claimed",
                "run": run,
                "claimed_at": _stamp(now),
                "heartbeat_at": _stamp(now),
                "history": [*last.get("history", []), before],
            }
            claimed["round"] = last["round"]
            return _replace_round(ledger, record)
        index = 0 if last is None else last["round"] + 1
        claimed["round"] = index
        record = {
            "round": index,
            "state": "claimed",
            "run": run,
            "claimed_at": _stamp(now),
            "heartbeat_at": _stamp(now),
        }
        return _replace_round(ledger, record)

    claimed_ledger = update_ledger(
        campaign.ledger, f"claim:{run}:{uuid.uuid4().hex}", apply, kind="claim_round", brief=True
    )
    log.info("run %s claimed round %d of %s", run, claimed["round"], campaign.uri)
    clean_staging(campaign, claimed_ledger)  # a run taken over leaves its staging archive behind
    return claimed["round"]


def release_claim(campaign: Campaign) -> dict[str, Any] | None:
    """End the lease of the last round's claim now, so that the next run takes the round over.

    For an operator who knows the claiming run is dead (a failed pipeline run holds its round
    for the whole lease). If that run is alive after all, it is fenced off like any run taken over:
    its later writes are refused. Returns the released record (its ``run`` is the released run's
    id with " (released)"), or None when no round is claimed.
    """
    released: dict[str, Any] = {}

    def apply(ledger: Ledger) -> Ledger:
        last = max(ledger.rounds, key=lambda r: r["round"], default=None)
        if last is None or last["state"] != "claimed":
            return ledger
        expired = _stamp(dt.datetime.fromtimestamp(0, dt.UTC))
        # The round passes to no run: the released one no longer owns it, so its later writes are
        # refused even before another run claims the round, which any run may now do.
        run = f"{last.get('run')}{RELEASED}"
        released.update(last, run=run, heartbeat_at=expired, claimed_at=expired, released_at=_stamp(_now()))
        return _replace_round(ledger, released)

    update_ledger(campaign.ledger, f"release:{uuid.uuid4().hex}", apply, kind="release_claim", brief=True)
    if released:
        log.info("released round %d of %s from run %s", released["round"], campaign.uri, released.get("run"))
    return released or None


def renew_claim(campaign: Campaign, round_index: int, run: str) -> None:
    """Tell the ledger that ``run`` is alive and still works on round r (steps call it as they start).

    Raises:
        RoundLostError: the round was taken over or has moved on.
    """

    def apply(ledger: Ledger) -> Ledger:
        return _replace_round(ledger, {**_owned(ledger, round_index, run), "heartbeat_at": _stamp(_now())})

    update_ledger(campaign.ledger, f"renew:{run}:{uuid.uuid4().hex}", apply, kind="renew_claim", brief=True)


def record_round_facts(campaign: Campaign, round_index: int, run: str, facts: Mapping[str, Any]) -> None:
    """Merge ``facts`` (e.g. the ingest summary, the labelled count) into round r's record, as its owner.

    Lists under the same key are merged (a retried step adds to what its first attempt recorded).

    Raises:
        RoundLostError: ``run`` does not own the claimed round.
    """

    def apply(ledger: Ledger) -> Ledger:
        record = _owned(ledger, round_index, run)
        for key, value in facts.items():
            if isinstance(value, dict) and isinstance(record.get(key), dict):
                merged = dict(record[key])
                for k, v in value.items():
                    old = merged.get(k)
                    merged[k] = (
                        old + [x for x in v if x not in old] if isinstance(v, list) and isinstance(old, list) else v
                    )
                record[key] = merged
            else:
                record[key] = value
        return _replace_round(ledger, record | {"heartbeat_at": _stamp(_now())})

    update_ledger(campaign.ledger, f"facts:{run}:{uuid.uuid4().hex}", apply, kind="record_round_facts", brief=True)


def pool_change_recorder(round_index: int, run: str) -> Callable[[Ledger, dict[str, int]], Ledger]:
    """For :func:`taudis.campaign.pool.sync_pool`: the pool change into round r's record, in the
    sync's own ledger write. A retried step adds its images to what the first attempt recorded
    (it finds them synced already), so the round's "pool" says what the round added and removed.

    Raises (from the write):
        RoundLostError: ``run`` does not own the claimed round (then the sync does not land either).
    """

    def record(ledger: Ledger, change: dict[str, int]) -> Ledger:
        owned = _owned(ledger, round_index, run)
        before = owned.get("pool") or {}
        merged = {**change, **{k: int(before.get(k, 0)) + change[k] for k in ("added", "removed")}}
        return _replace_round(ledger, owned | {"pool": merged, "heartbeat_at": _stamp(_now())})

    return record


def record_evaluation(
    campaign: Campaign, round_index: int, run: str, metrics: Mapping[str, Any], model_uri: str = ""
) -> None:
    """Record the mask and box AP of round r's model, as the round's owner.

    Raises:
        RoundLostError: ``run`` does not own the claimed round (its metrics are dropped).
    """

    def apply(ledger: Ledger) -> Ledger:
        record = _owned(ledger, round_index, run)
        return _replace_round(
            ledger, record | {"metrics": dict(metrics), "model_uri": model_uri, "heartbeat_at": _stamp(_now())}
        )

    update_ledger(campaign.ledger, f"evaluate:{run}:{uuid.uuid4().hex}", apply, kind="record_evaluation", brief=True)


# --------------------------------------------------------------------------------------- commit


def stage_files(campaign: Campaign, round_index: int, run: str, files: Mapping[str, bytes]) -> str:
    """Write a run's outputs for round r as its staging archive; returns the archive's name.

    ``files`` maps names relative to the round folder (e.g. ``tasks/manifest.jsonl``) to bytes.
    One zip object: storage writes an object whole or not at all, so a staged round is complete
    or absent, never half there.
    """
    name = campaign.staging_name(round_index, run)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for relative, data in sorted(files.items()):
            archive.writestr(relative, data)
    storage.write_bytes(campaign.file(name), buffer.getvalue(), content_type="application/zip")
    return name


def staged_files(campaign: Campaign, staging: str) -> dict[str, bytes] | None:
    """A staging archive's files by name, or None if it is gone or damaged."""
    uri = campaign.file(staging)
    try:
        data = storage.read_bytes(uri)
    except storage.NotFoundError:
        return None
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            return {info.filename: archive.read(info) for info in archive.infolist() if not info.is_dir()}
    except (zipfile.BadZipFile, zlib.error, EOFError) as err:
        # Written whole, once: a damaged archive was cut or changed by something else. Holding the
        # round for it would stop every later run, so it counts as gone and the round rolls back.
        log.warning("staging archive %s is damaged (%s): treated as gone", uri, err)
        return None


def commit_selection(
    campaign: Campaign,
    round_index: int,
    run: str,
    selection: Mapping[str, Any],
    staging: str,
) -> Ledger:
    """Record round r's chosen images as pending and point the round at its staged outputs.

    Idempotent for its run's claim: the op id is ``commit:<round>:<run>:<claimed_at>``, so a retry
    whose first attempt landed returns the ledger that holds it.

    Raises:
        RoundLostError: ``run`` does not own the claimed round.
        LedgerError: a chosen image is not in the pool, or already labelled or pending.
    """
    chosen = [int(item["image_id"]) for item in selection["images"]]

    def apply(ledger: Ledger) -> Ledger:
        record = _owned(ledger, round_index, run)
        if len(set(chosen)) != len(chosen):
            raise LedgerError(ledger.uri, f"round {round_index}: an image is chosen twice", field="rounds.images")
        for what, bad in (
            ("not in the pool", [i for i in chosen if i not in ledger.pool]),
            ("already labelled", [i for i in chosen if i in ledger.labelled]),
            ("already pending", [i for i in chosen if i in ledger.pending]),
        ):
            if bad:
                raise LedgerError(
                    ledger.uri, f"round {round_index}: images {bad[:10]} are {what}", field="rounds.images"
                )
        record |= {
            "state": "selected",
            "strategy": str(selection.get("strategy", "")),
            "params": dict(selection.get("params", {})),
            "images": chosen,
            "staging": staging,
            "selected_at": _stamp(_now()),
            "filled": sum(bool(item.get("filled")) for item in selection["images"]),
        }
        return dataclasses.replace(_replace_round(ledger, record), pending=ledger.pending | set(chosen))

    # One op per claim: a round rolled back and claimed again by the same run (the campaign
    # pipeline's one run id for all its rounds, a KFP retry of the run) commits anew.
    claim = (read_ledger(campaign.ledger).round(round_index) or {}).get("claimed_at", "")
    return update_ledger(campaign.ledger, f"commit:{round_index}:{run}:{claim}", apply, kind="commit_selection")


def publish_round(campaign: Campaign, round_index: int) -> bool:
    """Unpack a selected round's staging archive into rounds/round-r/ and mark it exported.

    Returns:
        True if published (now or before); False if the staging archive is gone (the caller
        rolls the round back).
    """
    ledger = read_ledger(campaign.ledger)
    record = ledger.round(round_index)
    if record is None or record["state"] not in ("selected", "exported"):
        raise LedgerError(ledger.uri, f"round {round_index} is not selected", field="rounds.state")
    if record["state"] == "exported":
        return True
    files = staged_files(campaign, record["staging"])
    if files is None:
        # Another run may have published the round and deleted its archive meanwhile.
        return (read_ledger(campaign.ledger).round(round_index) or {}).get("state") == "exported"
    target = campaign.round_dir(round_index)
    for relative, data in sorted(files.items()):
        storage.write_bytes(storage.join(target, relative), data)
    write_round_metrics(campaign, ledger, round_index)

    def apply(current: Ledger) -> Ledger:
        now = current.round(round_index)
        if now is None or now["state"] != "selected" or now.get("staging") != record["staging"]:
            return current  # published meanwhile by another run
        return _replace_round(current, now | {"state": "exported", "exported_at": _stamp(_now())})

    published = update_ledger(campaign.ledger, f"export:{round_index}", apply, kind="publish_round")
    write_learning_curve(campaign, published)
    storage.delete(campaign.file(record["staging"]))
    return True


def clean_staging(campaign: Campaign, ledger: Ledger) -> list[str]:
    """Delete the staging archives no round needs: those of runs that lost or never committed their round.

    Kept: the staging of every selected round (not yet published) and of every claimed round's owner.
    """
    keep = {r["staging"] for r in ledger.rounds if r["state"] == "selected"}
    keep |= {campaign.staging_name(r["round"], r["run"]) for r in ledger.rounds if r["state"] == "claimed"}
    prefix = campaign.file("staging").rstrip("/") + "/"
    names = {f"staging/{uri[len(prefix) :]}" for uri in storage.list_uris(prefix)}
    removed = sorted(names - keep)
    for staging in removed:
        storage.delete(campaign.file(staging))
    return removed


def roll_back(campaign: Campaign, round_index: int, reason: str) -> None:
    """Return a selected round's still-pending images to unlabelled and mark it rolled back."""

    def apply(ledger: Ledger) -> Ledger:
        record = ledger.round(round_index)
        if record is None or record["state"] != "selected":
            return ledger
        images = set(record.get("images", [])) & ledger.pending
        record = {**record, "state": "rolled_back", "rolled_back": reason}
        return dataclasses.replace(_replace_round(ledger, record), pending=ledger.pending - images)

    update_ledger(campaign.ledger, f"rollback:{round_index}:{uuid.uuid4().hex}", apply, kind="roll_back", brief=True)
    log.warning("round %d of %s rolled back: %s", round_index, campaign.uri, reason)


def recover_rounds(campaign: Campaign) -> list[int]:
    """Publish every selected round (rolling back those that cannot be).

    Returns:
        The rounds published or rolled back.
    """
    ledger = read_ledger(campaign.ledger)
    handled = []
    for record in ledger.rounds:
        if record["state"] != "selected":
            continue
        if not publish_round(campaign, record["round"]):
            roll_back(campaign, record["round"], f"its staging archive {record['staging']} is gone")
        handled.append(record["round"])
    return handled


def close_round(campaign: Campaign, round_index: int, run: str) -> None:
    """End an evaluation-only round (nothing selected): publish its metrics and mark it closed.

    Raises:
        RoundLostError: ``run`` does not own the claimed round.
    """

    def apply(ledger: Ledger) -> Ledger:
        record = ledger.round(round_index)
        if record is not None and record.get("run") == run and record["state"] == "closed":
            return ledger
        return _replace_round(
            ledger, _owned(ledger, round_index, run) | {"state": "closed", "closed_at": _stamp(_now())}
        )

    closed = update_ledger(campaign.ledger, f"close:{round_index}:{run}", apply, kind="close_round")
    write_round_metrics(campaign, closed, round_index)
    write_learning_curve(campaign, closed)


def choosing_round(ledger: Ledger) -> dict[str, Any] | None:
    """The round whose choice is not published yet and may still be: claimed by a run that could
    still commit it (not released), or selected; None when there is none."""
    for record in ledger.rounds:
        if record["state"] == "selected" or (
            record["state"] == "claimed" and not str(record.get("run")).endswith(RELEASED)
        ):
            return dict(record)
    return None


# ----------------------------------------------------------------------------- what rounds show


def curve_of(ledger: Ledger) -> list[dict[str, Any]]:
    """Every evaluated round's point: {strategy, round, labelled_images, mask_ap, box_ap}, by round.

    A round's metrics are its owner's (recorded under the claim); rolled-back rounds are left out.
    """
    strategy = next((r.get("strategy") for r in reversed(ledger.rounds) if r.get("strategy")), "unknown")
    points = []
    for record in ledger.rounds:
        metrics = record.get("metrics")
        if not metrics or record["state"] == "rolled_back":
            continue
        points.append(
            {
                "strategy": record.get("strategy") or strategy,
                "round": record["round"],
                "labelled_images": int(metrics["labelled_images"]),
                "mask_ap": float(metrics["mask_ap"]),
                "box_ap": float(metrics["box_ap"]),
            }
        )
    return points


def round_metrics(ledger: Ledger, round_index: int) -> dict[str, Any]:
    """rounds/round-r/metrics.json: {"round", "run", "labelled_images", "mask_ap", "box_ap", "per_class"}."""
    record = ledger.round(round_index) or {}
    return {"round": round_index, "run": record.get("run"), **dict(record.get("metrics") or {})}


def write_round_metrics(campaign: Campaign, ledger: Ledger, round_index: int) -> None:
    """Publish round r's metrics as the ledger holds them (the winner's)."""
    if (ledger.round(round_index) or {}).get("metrics"):
        storage.write_json(
            storage.join(campaign.round_dir(round_index), "metrics.json"), round_metrics(ledger, round_index)
        )


def write_learning_curve(campaign: Campaign, ledger: Ledger) -> None:
    """Redraw <campaign>/learning_curve.png from the ledger."""
    import tempfile
    from pathlib import Path

    from taudis.report import learning_curve_png

    points = curve_of(ledger)
    if not points:
        return
    with tempfile.TemporaryDirectory() as tmp:
        picture = learning_curve_png(points, Path(tmp) / "learning_curve.png")
        storage.write_bytes(campaign.learning_curve, picture.read_bytes(), content_type="image/png")


__all__: Sequence[str] = [
    "RoundBusyError",
    "RoundLostError",
    "choosing_round",
    "claim_round",
    "close_round",
    "commit_selection",
    "curve_of",
    "publish_round",
    "record_evaluation",
    "record_round_facts",
    "recover_rounds",
    "renew_claim",
    "roll_back",
    "stage_files",
]
