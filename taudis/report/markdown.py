"""The round summary as Markdown, for the KFP UI's Markdown visualisation."""

from __future__ import annotations

import html
import re
from collections.abc import Mapping, Sequence
from typing import Any

from taudis.report.inputs import format_ap, format_value, validate_selection

# Characters that start Markdown formatting anywhere in a line. '<', '>' and '&' are HTML-escaped
# instead: the KFP UI renders raw HTML inside Markdown, so a reason or note must not inject tags.
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-!|~])")
# Counts shown in this order when the selection's stats hold them; other stats follow.
STAT_LABELS: dict[str, str] = {
    "pool_images": "pool images",
    "pool_instances": "pool instances",
    "candidates": "candidate instances (oversampled)",
    "chosen_instances": "chosen instances",
    "filled": "images filled by image uncertainty",
    "coverage": "coverage of the candidates",
}


def md_escape(text: Any) -> str:
    """Text as literal Markdown on one line: formatting characters escaped, HTML escaped, newlines folded."""
    flat = " ".join(str(text).split())
    return html.escape(_MD_SPECIAL.sub(r"\\\1", flat), quote=False)


def plural(count: int, noun: str) -> str:
    """``"1 vote"``, ``"2 votes"``."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def fill_sentence(selection: Mapping[str, Any]) -> str:
    """One sentence saying whether the vote filled the batch from image-level uncertainty, and how much."""
    images = selection["images"]
    filled = sum(1 for r in images if r["filled"])
    if filled == 0:
        return f"Fill not used: all {len(images)} chosen images hold at least one chosen instance."
    verb = "holds no chosen instance and was" if filled == 1 else "hold no chosen instance and were"
    return f"Fill used: {filled} of {len(images)} chosen images {verb} added by image-level uncertainty."


INTAKE_LABELS = {
    "ingested": "ingested",
    "repeat": "repeats of labels already in (no change)",
    "rejected": "rejected (see incoming/rejected/, a report beside each file)",
    "conflict": (
        "in conflict with labels already in (see incoming/rejected/; moved to incoming/corrections/, "
        "a file replaces them)"
    ),
    "empty": (
        "labelled with no instance (make sure these images were finished: an export of unfinished "
        "images reads the same; a file in incoming/corrections/ relabels them)"
    ),
    "withdrawn": "holding labels of withdrawn images, left out (the rest of each file went in)",
}


def _intake_lines(intake: Mapping[str, Sequence[str]]) -> list[str]:
    """The "Labels in" section: the annotators' files this round took in, by what became of them."""
    rows = [[label, md_escape(", ".join(intake[k]))] for k, label in INTAKE_LABELS.items() if intake.get(k)]
    if not rows:
        return []
    return ["### Labels in", "", *_table(["files", "names"], rows), ""]


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def round_markdown(
    selection: dict[str, Any],
    round_index: int,
    metrics: Mapping[str, Any] | None,
    labelled_images: int,
    *,
    intake: Mapping[str, Sequence[str]] | None = None,
    max_rows: int = 50,
) -> str:
    """A concise Markdown summary of one active-learning round.

    Sections: a title line with the round and strategy; metrics (mask and box AP of the model that
    made the predictions, when given, and the labelled images it was trained on); the labels that
    came in (files ingested, repeated, rejected or in conflict, when ``intake`` names any); the
    selection's parameters; its counts and whether fill was used; notes; a table of the chosen
    images (rank, image id, votes, uncertainty, filled, reason), at most ``max_rows`` rows.

    Args:
        selection: a ``taudis.selection`` dict (checked with ``validate_selection``).
        round_index: the round's number.
        metrics: ``{"mask_ap": ..., "box_ap": ...}`` in 0-100 (None or NaN: not evaluated), and
            ``warnings`` (the training's, each shown as a note), or None.
        labelled_images: images labelled when the round's model was trained.
        intake: the round's ingest facts, file names by status ("ingested", "repeat",
            "rejected", "conflict"; taudis.campaign.ingest.summarize).
        max_rows: cap on the chosen-images table; a line says how many were left out.

    Raises:
        ReportInputError: the selection breaks its contract.
    """
    validate_selection(selection)
    images = selection["images"]
    strategy = md_escape(selection["strategy"])
    lines = [
        f"## Round {int(round_index)}: {strategy}",
        "",
        f"Chose **{len(images)}** images to label next (budget {int(selection['budget'])}) "
        f"with strategy **{strategy}**.",
        f"Labelled images so far: **{int(labelled_images)}**.",
    ]
    if metrics is not None:
        lines.append(
            f"Model of this round: mask AP **{format_ap(metrics.get('mask_ap'))}**, "
            f"box AP **{format_ap(metrics.get('box_ap'))}**."
        )
        for warning in metrics.get("warnings") or ():
            lines += ["", f"> Training: {md_escape(str(warning))}"]
    lines += ["", fill_sentence(selection), ""]
    lines += _intake_lines(intake or {})
    params = selection.get("params", {})
    if params:
        lines += ["### Parameters", ""]
        lines += _table(["parameter", "value"], [[md_escape(k), md_escape(format_value(v))] for k, v in params.items()])
        lines.append("")
    stats = dict(selection.get("stats", {}))
    count_rows = [[STAT_LABELS[k], md_escape(format_value(stats.pop(k)))] for k in STAT_LABELS if k in stats]
    count_rows.append(["chosen images", str(len(images))])
    count_rows += [[md_escape(k), md_escape(format_value(v))] for k, v in stats.items()]
    lines += ["### Counts", "", *_table(["count", "value"], count_rows), ""]
    notes = selection.get("notes", [])
    if notes:
        lines += ["### Notes", "", *(f"- {md_escape(n)}" for n in notes), ""]
    lines += ["### Chosen images", ""]
    if not images:
        lines.append("No image was chosen.")
    else:
        rows = [
            [
                str(r["rank"]),
                str(r["image_id"]),
                str(r["votes"]),
                format_value(float(r["uncertainty"])),
                "yes" if r["filled"] else "no",
                md_escape(r["reason"]),
            ]
            for r in images[:max_rows]
        ]
        lines += _table(["rank", "image id", "votes", "uncertainty", "filled", "reason"], rows)
        if len(images) > max_rows:
            lines += ["", f"... and {len(images) - max_rows} more (see the HTML report or the selection file)."]
    return "\n".join(lines) + "\n"
