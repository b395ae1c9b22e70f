"""Where a campaign's state lives: the one place that names its folders and files.

A campaign lives under one URI (a local directory or gs://bucket/prefix)::

    <campaign>/ledger.json, ledger/        the ledger: the one source of truth (taudis.storage.ledger)
    <campaign>/labels/<op>.json            immutable label parts the ledger lists (COCO, pool ids)
    <campaign>/labelled.json               the labelled COCO dataset: a view of the parts, rewritten
                                           by every round's ingest step (read-only for people)
    <campaign>/incoming/                   annotators' exports waiting to be ingested (any name,
                                           subfolders too)
    <campaign>/incoming/corrections/       exports whose labels replace those already in (a fix
                                           after review, a re-labelled image)
    <campaign>/incoming/done/              files ingested (or repeating labels already there)
    <campaign>/incoming/rejected/          files refused, each with <name>.report.json beside it
    <campaign>/staging/round-<r>-<run>.zip what a run produced for round r before the ledger said
                                           it won the round (tasks, selection, reports), one object
    <campaign>/rounds/round-<r>/           round r as published once recorded:
        selection.json                     the chosen images and instances (taudis.select format)
        tasks/                             labelling tasks (COCO pre-annotations, Label Studio,
                                           CVAT archive, manifest.jsonl)
        summary.md, report.html            the round's report
        metrics.json                       mask and box AP of the round's model on the val split
    <campaign>/learning_curve.png          mask AP against labelled images, every recorded round
    <campaign>/withdrawals/<op>.json       what each withdrawal took out (ids and file names) and
                                           where it found them, written before its ledger update
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from taudis import storage

# Copies still being written (a browser's or sync tool's partial download, an editor's lock file)
# and what systems and tools leave beside files (hidden files and folders, Thumbs.db, a report
# moved back out of rejected/): never labels, so left where they are, not quarantined.
LEFT_ALONE = re.compile(
    r"^\.|~$|\.(part|partial|crdownload|download|tmp|gstmp|filepart)$|^(thumbs\.db|desktop\.ini)$|\.report\.json$",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Campaign:
    """The folder layout of one campaign (see the module docstring)."""

    uri: str

    @property
    def ledger(self) -> str:
        return storage.join(self.uri, "ledger.json")

    @property
    def labelled(self) -> str:
        return storage.join(self.uri, "labelled.json")

    @property
    def incoming(self) -> str:
        return storage.join(self.uri, "incoming")

    @property
    def done(self) -> str:
        return storage.join(self.incoming, "done")

    @property
    def rejected(self) -> str:
        return storage.join(self.incoming, "rejected")

    @property
    def corrections(self) -> str:
        return storage.join(self.incoming, "corrections")

    @property
    def learning_curve(self) -> str:
        return storage.join(self.uri, "learning_curve.png")

    def file(self, name: str) -> str:
        """A file named relative to the campaign's folder (as the ledger names label parts)."""
        return storage.join(self.uri, name)

    def withdrawal(self, op_id: str) -> str:
        """The record of the withdrawal with op id ``withdraw:<hash>``."""
        return storage.join(self.uri, "withdrawals", op_id.split(":", 1)[-1] + ".json")

    @property
    def withdrawals(self) -> str:
        return storage.join(self.uri, "withdrawals") + "/"

    def round_dir(self, round_index: int) -> str:
        return storage.join(self.uri, "rounds", f"round-{round_index:03d}")

    def staging_name(self, round_index: int, run: str) -> str:
        """The staging archive of a run's round r, relative to the campaign (as the ledger records it)."""
        return f"staging/round-{round_index:03d}-{safe_name(run)}.zip"

    def incoming_files(self) -> list[str]:
        """The annotators' files waiting under ``incoming/``, its subfolders included (a team's own
        folder) but not done/, rejected/ or corrections/, sorted.

        Every name counts, whatever its suffix: the readers tell the formats apart, and a file they
        cannot read is quarantined with a report, so nothing dropped here is passed over unseen.
        """
        return _files_in(self.incoming, skip=(self.done, self.rejected, self.corrections))

    def incoming_name(self, uri: str) -> str:
        """A waiting file's name as reports give it: its path below ``incoming/`` (``team-b/batch.json``,
        ``corrections/fix.json``), since teams' folders may hold files of the same name."""
        parent = _as_listed(self.incoming) + "/"
        return uri[len(parent) :] if uri.startswith(parent) else uri.rsplit("/", 1)[-1]

    def correction_files(self) -> list[str]:
        """The files waiting under ``incoming/corrections/`` (the same rules), sorted."""
        return _files_in(self.corrections, skip=())


def _as_listed(uri: str) -> str:
    """A folder's URI as storage.list_uris writes the names under it."""
    return uri.rstrip("/") if storage.is_gcs(uri) else str(storage.local_path(uri))


def _files_in(folder: str, skip: tuple[str, ...]) -> list[str]:
    parent, skipped = _as_listed(folder), [_as_listed(s) + "/" for s in skip]
    found = []
    for uri in storage.list_uris(folder.rstrip("/") + "/"):
        if any(uri.startswith(s) for s in skipped) or not uri.startswith(parent + "/") or uri.endswith("/"):
            continue
        if not any(LEFT_ALONE.search(part) for part in uri[len(parent) + 1 :].split("/")):  # every folder too
            found.append(uri)
    return sorted(found)


def safe_name(text: str) -> str:
    """``text`` reduced to characters safe in an object name (run ids come from the orchestrator)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:80] or "run"
