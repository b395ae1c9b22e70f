"""Self-contained HTML reports: one round's selection, and a campaign comparing strategies.

Every page is one file with nothing external: CSS inline, images as base64 data URIs, no script.
So it opens from the KFP UI's HTML visualisation, from a bucket, or from an e-mail attachment alike.
All text that comes from inputs (strategy names, reasons, notes, file names) is escaped.
"""

from __future__ import annotations

import base64
import html
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from taudis.report.curves import curve_points, learning_curve_bytes
from taudis.report.inputs import (
    PoolImage,
    ReportInputError,
    finite_or_none,
    format_ap,
    format_value,
    load_pool_images,
    load_selection,
    validate_history,
)
from taudis.report.markdown import INTAKE_LABELS, STAT_LABELS, fill_sentence, plural
from taudis.report.thumbnails import (
    CHOSEN_COLOUR,
    MIN_SCORE,
    THUMB_SIZE,
    ImagePredictions,
    chosen_by_image,
    class_colour,
    collect_predictions,
    encode_image,
    render_thumbnail,
)

MAX_IMAGES = 48
CAMPAIGN_MAX_IMAGES = 12
# The strategy the campaign page measures the others against, when it is in the history.
REFERENCE_STRATEGY = "taudis"

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:1.2em 2em;color:#222;background:#fafafa}
h1{font-size:1.5em;margin:.2em 0}h2{font-size:1.2em;margin:1.2em 0 .4em;border-bottom:1px solid #ddd}
h3{font-size:1.05em;margin:.8em 0 .3em}
table{border-collapse:collapse;margin:.3em 0 .8em;font-size:.92em}
th,td{border:1px solid #ddd;padding:.2em .6em;text-align:left}th{background:#f0f0f0}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.summary{display:flex;flex-wrap:wrap;gap:2em}
.note{color:#6a4a00;background:#fff6d6;padding:.3em .6em;border-radius:4px;display:inline-block}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(270px,1fr));gap:12px}
figure.card{margin:0;background:#fff;border:1px solid #ddd;border-radius:6px;padding:6px}
figure.card img{display:block;margin:0 auto;max-width:100%;height:auto;image-rendering:auto}
figcaption{font-size:.85em;line-height:1.35;margin-top:4px}
figcaption .head{font-weight:600}
figcaption .filled{color:#8a5a00;font-weight:600}figcaption .voted{color:#1a6a2a;font-weight:600}
figcaption .reason{color:#333}figcaption .file{color:#777;word-break:break-all}
figcaption .warn{color:#8a2a00}
.legend span.item{display:inline-flex;align-items:center;margin:0 1em .3em 0;font-size:.9em}
.swatch{display:inline-block;width:14px;height:14px;margin-right:.4em;border-radius:2px}
.swatch.chosen{background:transparent;border:3px solid rgb__CHOSEN__}
.swatch.other{background:transparent;border:1px solid #555}
img.curve{max-width:100%;height:auto;background:#fff;border:1px solid #ddd}
""".replace("__CHOSEN__", str(CHOSEN_COLOUR))


@dataclass(frozen=True)
class RoundSection:
    """One strategy's latest round, for the campaign page's thumbnails."""

    strategy: str
    selection_path: str | os.PathLike[str]
    # The pool's instance shards of that round; None shows a table of chosen images instead of thumbnails.
    instances_dir: str | os.PathLike[str] | None = None


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def data_uri(data: bytes, mime: str) -> str:
    """``data:<mime>;base64,...`` for inlining a file into the page."""
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _page(title: str, body: list[str]) -> str:
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en">',
            "<head>",
            '<meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{_e(title)}</title>",
            f"<style>{_CSS}</style>",
            "</head>",
            "<body>",
            *body,
            "</body>",
            "</html>",
            "",
        ]
    )


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], numeric: Sequence[bool] = ()) -> str:
    """An HTML table; cells are escaped here, ``numeric`` columns are right-aligned."""
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            cls = ' class="num"' if i < len(numeric) and numeric[i] else ""
            cells.append(f"<td{cls}>{_e(cell)}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _curve_section(history: Sequence[dict[str, Any]], heading: str = "Learning curve") -> list[str]:
    out = [f'<section id="learning-curve"><h2>{_e(heading)}</h2>']
    if history:
        uri = data_uri(learning_curve_bytes(history), "image/png")
        out.append(f'<img class="curve" src="{uri}" alt="learning curve: mask and box AP against labelled images">')
    else:
        out.append("<p>No round has completed yet.</p>")
    out.append("</section>")
    return out


def _legend(class_names: Sequence[str], min_score: float) -> list[str]:
    items = [
        f'<span class="item"><span class="swatch" style="background:rgb{class_colour(i)}"></span>{_e(name)}</span>'
        for i, name in enumerate(class_names)
    ]
    items.append('<span class="item"><span class="swatch chosen"></span>chosen instance (thick yellow box)</span>')
    items.append(
        f'<span class="item"><span class="swatch other"></span>other prediction, score &ge; {min_score:g} '
        "(thin box in its class colour)</span>"
    )
    return ['<div class="legend"><h3>Legend</h3>', *items, "</div>"]


def _intake_section(intake: Mapping[str, Sequence[str]]) -> list[str]:
    """The annotators' files this round took in, by what became of them (nothing when none came)."""
    rows = [[label, ", ".join(intake[k])] for k, label in INTAKE_LABELS.items() if intake.get(k)]
    if not rows:
        return []
    return ['<section id="labels-in"><h2>Labels in</h2>', _table(["files", "names"], rows), "</section>"]


def _selection_summary(selection: Mapping[str, Any], metrics: Mapping[str, Any] | None) -> list[str]:
    images = selection["images"]
    out = [
        f"<p>Strategy <b>{_e(selection['strategy'])}</b> chose <b>{len(images)}</b> images "
        f"(budget {int(selection['budget'])}).",
    ]
    if metrics is not None and ("mask_ap" in metrics or "box_ap" in metrics):
        out.append(
            f" Model of this round: mask AP <b>{_e(format_ap(metrics.get('mask_ap')))}</b>, "
            f"box AP <b>{_e(format_ap(metrics.get('box_ap')))}</b>."
        )
    if metrics is not None and metrics.get("labelled_images") is not None:
        out.append(f" Labelled images: <b>{int(metrics['labelled_images'])}</b>.")
    out.append("</p>")
    for warning in (metrics or {}).get("warnings") or ():
        out.append(f'<p class="note">Training: {_e(str(warning))}</p>')
    filled = any(r["filled"] for r in images)
    # Fill is worth a highlight: the vote alone could not fill the budget.
    opening = '<p class="note">' if filled else "<p>"
    out.append(f"{opening}{_e(fill_sentence(selection))}</p>")
    out.append('<div class="summary">')
    params = selection.get("params", {})
    if params:
        out += [
            "<div><h3>Parameters</h3>",
            _table(["parameter", "value"], [[k, format_value(v)] for k, v in params.items()]),
            "</div>",
        ]
    stats = dict(selection.get("stats", {}))
    rows = [[STAT_LABELS[k], format_value(stats.pop(k))] for k in STAT_LABELS if k in stats]
    rows.append(["chosen images", str(len(images))])
    rows += [[k, format_value(v)] for k, v in stats.items()]
    out += ["<div><h3>Counts</h3>", _table(["count", "value"], rows, numeric=[False, True]), "</div>", "</div>"]
    notes = selection.get("notes", [])
    if notes:
        out += ["<h3>Notes</h3>", "<ul>", *(f"<li>{_e(n)}</li>" for n in notes), "</ul>"]
    return out


def _card(
    record: Mapping[str, Any],
    predictions: ImagePredictions | None,
    pool_image: PoolImage | None,
    image_root: Path | None,
    chosen: set[int],
    *,
    thumb_size: int,
    image_format: str,
    min_score: float,
) -> str:
    image_id = int(record["image_id"])
    if predictions is None:
        # Not in any shard: inference never saw it. Draw it bare at the size COCO gives, if any.
        height, width = (pool_image.height, pool_image.width) if pool_image else (thumb_size, thumb_size)
        predictions = ImagePredictions(image_id, height, width)
        extra = ["no predictions found in the instance shards"]
    else:
        extra = []
    path = image_root / pool_image.file_name if (pool_image is not None and image_root is not None) else None
    thumb, notes = render_thumbnail(path, predictions, chosen, size=thumb_size, min_score=min_score)
    mime = "image/jpeg" if image_format.upper() in ("JPEG", "JPG") else "image/png"
    uri = data_uri(encode_image(thumb, image_format), mime)
    how = (
        '<span class="filled">filled by image uncertainty</span>'
        if record["filled"]
        else '<span class="voted">chosen by vote</span>'
    )
    lines = [
        f'<figure class="card" id="image-{image_id}">',
        f'<img class="thumb" data-image-id="{image_id}" src="{uri}" width="{thumb.width}" height="{thumb.height}" '
        f'alt="image {image_id} with its predicted masks">',
        "<figcaption>",
        f'<div class="head">#{int(record["rank"])} &middot; image {image_id}</div>',
        f"<div>{how} &middot; {plural(int(record['votes']), 'vote')} &middot; uncertainty "
        f"{_e(format_value(float(record['uncertainty'])))}</div>",
        f"<div>{len(chosen)} chosen of {plural(len(predictions.instance_index), 'predicted instance')}</div>",
        f'<div class="reason">{_e(record["reason"])}</div>',
    ]
    if pool_image is not None:
        lines.append(f'<div class="file">{_e(pool_image.file_name)}</div>')
    lines += [f'<div class="warn">{_e(n)}</div>' for n in [*extra, *notes]]
    lines += ["</figcaption>", "</figure>"]
    return "\n".join(lines)


def _grid(
    selection: Mapping[str, Any],
    instances_dir: str | os.PathLike[str],
    pool: Mapping[int, PoolImage],
    image_root: Path | None,
    *,
    max_images: int,
    thumb_size: int,
    image_format: str,
    min_score: float,
) -> tuple[list[str], list[str]]:
    """The chosen images' cards, in selection order, capped at ``max_images``; and the class names."""
    records = selection["images"][: max(0, max_images)]
    predictions, class_names = collect_predictions(instances_dir, [r["image_id"] for r in records])
    chosen = chosen_by_image(selection["instances"])
    out = []
    total = len(selection["images"])
    if total > len(records):
        out.append(
            f'<p class="note">Showing the first {len(records)} of {total} chosen images, in selection order; '
            "the selection file lists them all.</p>"
        )
    if not records:
        out.append("<p>No image was chosen.</p>")
    out.append('<div class="grid">')
    for record in records:
        image_id = int(record["image_id"])
        out.append(
            _card(
                record,
                predictions.get(image_id),
                pool.get(image_id),
                image_root,
                chosen.get(image_id, set()),
                thumb_size=thumb_size,
                image_format=image_format,
                min_score=min_score,
            )
        )
    out.append("</div>")
    return out, class_names


def _write(out_path: str | os.PathLike[str], text: str) -> Path:
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    return out


def round_html(
    selection_path: str | os.PathLike[str],
    instances_dir: str | os.PathLike[str],
    pool_annotations: str | os.PathLike[str] | Mapping[str, Any] | None,
    image_root: str | os.PathLike[str] | None,
    history: Sequence[dict[str, Any]],
    out_path: str | os.PathLike[str],
    *,
    title: str | None = None,
    round_index: int | None = None,
    metrics: Mapping[str, Any] | None = None,
    intake: Mapping[str, Sequence[str]] | None = None,
    max_images: int = MAX_IMAGES,
    thumb_size: int = THUMB_SIZE,
    image_format: str = "JPEG",
    min_score: float = MIN_SCORE,
) -> Path:
    """Write one round's report as a single self-contained HTML file.

    File layout: one UTF-8 HTML file at ``out_path`` (parents created), with no external reference:
    inline CSS, no script, images as base64 data URIs. Sections, in order: header (title,
    strategy, budget, fill, parameters, counts, notes); ``#labels-in`` (when files came in: which
    were ingested, repeats, rejected or in conflict); ``#learning-curve`` (PNG of the history,
    all strategies); ``#chosen`` (class legend, then one ``figure.card`` per chosen image in
    selection order, at most ``max_images``: an ``img.thumb`` with ``data-image-id``, the image
    with its predicted masks blended in class colours, chosen instances with a thick yellow box,
    and a caption with rank, vote or fill, votes, uncertainty and the selection's reason).

    Args:
        selection_path: the round's ``taudis.selection`` JSON.
        instances_dir: the instance shards of the pool's predictions.
        pool_annotations: COCO JSON (path or dict) listing the pool's images; None draws
            placeholders.
        image_root: directory the COCO ``file_name`` values are relative to.
        history: learning-curve records so far (see ``learning_curve_png``); may be empty.
        out_path: the HTML file to write.
        title: page title; default "taudis round <n>: <strategy>".
        round_index: the round's number, for the default title.
        metrics: optional ``mask_ap``, ``box_ap`` (0-100), ``labelled_images`` and ``warnings`` (the
            training's, each shown as a note) of this round's model.
        intake: the round's ingest record: file names under ``ingested``, ``repeat``, ``rejected``
            and ``conflict``.
        max_images: cap on thumbnails (keeps the file small); a note says when more were chosen.
        thumb_size: longer side of a thumbnail, in pixels.
        image_format: "JPEG" (small) or "PNG" (lossless) for thumbnails.
        min_score: predictions not chosen are drawn from this score up.

    Returns:
        ``out_path`` as a Path.

    Raises:
        ReportInputError: the selection, history or COCO file breaks its contract.
        InstanceTableError: a shard breaks the instance-table contract.
    """
    selection = load_selection(selection_path)
    records = validate_history(list(history))
    pool = load_pool_images(pool_annotations) if pool_annotations is not None else {}
    root = Path(image_root) if image_root is not None else None
    if title is None:
        prefix = "taudis round" if round_index is None else f"taudis round {int(round_index)}"
        title = f"{prefix}: {selection['strategy']}"
    grid, class_names = _grid(
        selection,
        instances_dir,
        pool,
        root,
        max_images=max_images,
        thumb_size=thumb_size,
        image_format=image_format,
        min_score=min_score,
    )
    body = [
        f"<header><h1>{_e(title)}</h1>",
        *_selection_summary(selection, metrics),
        "</header>",
        *_intake_section(intake or {}),
        *_curve_section(records),
        '<section id="chosen"><h2>Chosen images</h2>',
        *_legend(class_names, min_score),
        *grid,
        "</section>",
    ]
    return _write(out_path, _page(title, body))


def _final_record(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The latest evaluated record of one strategy (the latest one if none was evaluated)."""
    ordered = sorted(records, key=lambda r: (r.get("round", 0), r["labelled_images"]))
    evaluated = [r for r in ordered if finite_or_none(r["mask_ap"]) is not None]
    return (evaluated or ordered)[-1]


def labels_to_reach(history: Sequence[dict[str, Any]], strategy: str, target: float) -> int | None:
    """The fewest labelled images at which ``strategy``'s mean mask AP reaches ``target``; None if never."""
    counts, mean, _, _ = curve_points([r for r in history if r["strategy"] == strategy], "mask_ap")[strategy]
    reached = [int(c) for c, m in zip(counts, mean, strict=True) if math.isfinite(m) and m >= target]
    return min(reached) if reached else None


def _strategy_table(records: Sequence[dict[str, Any]]) -> list[str]:
    strategies = sorted({r["strategy"] for r in records}, key=lambda s: (s != REFERENCE_STRATEGY, s))
    finals = {s: _final_record([r for r in records if r["strategy"] == s]) for s in strategies}
    reference = finals.get(REFERENCE_STRATEGY)
    target = finite_or_none(reference["mask_ap"]) if reference is not None else None
    header = ["strategy", "rounds", "labelled images", "final mask AP", "final box AP", "best mask AP"]
    if target is not None:
        header.append(f"images to reach {REFERENCE_STRATEGY}'s final mask AP ({target:.1f})")
    rows = []
    for s in strategies:
        mine = [r for r in records if r["strategy"] == s]
        finite = [r["mask_ap"] for r in mine if finite_or_none(r["mask_ap"]) is not None]
        row = [
            s,
            str(len({r.get("round", i) for i, r in enumerate(mine)})),
            str(finals[s]["labelled_images"]),
            format_ap(finals[s]["mask_ap"]),
            format_ap(finals[s]["box_ap"]),
            format_ap(max(finite) if finite else None),
        ]
        if target is not None and reference is not None:
            reached = labels_to_reach(records, s, target)
            ratio = reached / max(int(reference["labelled_images"]), 1) if reached is not None else None
            row.append("not reached" if ratio is None else f"{reached} ({ratio:.2g}x)")
        rows.append(row)
    numeric = [False] + [True] * (len(header) - 1)
    out = ["<h2>Strategies</h2>", _table(header, rows, numeric)]
    if target is not None and reference is not None:
        out.append(
            f"<p>The last column is the fewest labelled images at which a strategy's mask AP reached "
            f"{REFERENCE_STRATEGY}'s final mask AP, and in brackets that count divided by the "
            f"{int(reference['labelled_images'])} images {REFERENCE_STRATEGY} used (its labelling efficiency "
            "factor when above 1).</p>"
        )
    return out


def _rounds_table(records: Sequence[dict[str, Any]]) -> list[str]:
    ordered = sorted(records, key=lambda r: (r["strategy"], r.get("round", 0), r["labelled_images"]))
    rows = [
        [
            r["strategy"],
            str(r.get("round", "")),
            str(r["labelled_images"]),
            format_ap(r["mask_ap"]),
            format_ap(r["box_ap"]),
        ]
        for r in ordered
    ]
    return [
        "<h2>Rounds</h2>",
        _table(["strategy", "round", "labelled images", "mask AP", "box AP"], rows, [False] + [True] * 4),
    ]


def latest_selection(campaign_dir: str | os.PathLike[str]) -> Path:
    """The newest round's selection of a local campaign directory: ``rounds/round-*/selection.json``.

    Raises:
        ReportInputError: the directory holds no round with a selection.
    """

    def number(path: Path) -> tuple[int, str]:
        # By round number, not name: round-1000 comes after round-999.
        digits = path.parent.name.removeprefix("round-")
        return (int(digits) if digits.isdigit() else -1, path.parent.name)

    found = sorted(Path(campaign_dir).glob("rounds/round-*/selection.json"), key=number)
    if not found:
        raise ReportInputError(campaign_dir, "no rounds/round-*/selection.json: no completed round to show")
    return found[-1]


def _chosen_table(selection: Mapping[str, Any], max_rows: int) -> list[str]:
    """The chosen images as a table, for rounds whose predictions are no longer at hand."""
    images = selection["images"]
    rows = [
        [
            str(r["rank"]),
            str(r["image_id"]),
            str(r["votes"]),
            format_value(float(r["uncertainty"])),
            "yes" if r["filled"] else "no",
            r["reason"],
        ]
        for r in images[:max_rows]
    ]
    header = ["rank", "image id", "votes", "uncertainty", "filled", "reason"]
    out = ["<h3>Chosen images</h3>", _table(header, rows, [True, True, True, True, False, False])]
    if len(images) > max_rows:
        out.append(f"<p>... and {len(images) - max_rows} more (see the selection file).</p>")
    return out


def _as_section(entry: RoundSection | Sequence[Any]) -> RoundSection:
    if isinstance(entry, RoundSection):
        return entry
    if len(entry) not in (2, 3):
        raise ReportInputError("latest_rounds", f"expected (strategy, selection_path[, instances_dir]), got {entry!r}")
    return RoundSection(*entry)


def campaign_html(
    history: Sequence[dict[str, Any]],
    out_path: str | os.PathLike[str],
    *,
    latest_rounds: Sequence[RoundSection | Sequence[Any]] = (),
    campaigns: Sequence[tuple[str, str | os.PathLike[str]]] = (),
    pool_annotations: str | os.PathLike[str] | Mapping[str, Any] | None = None,
    image_root: str | os.PathLike[str] | None = None,
    title: str = "taudis campaign",
    max_images: int = CAMPAIGN_MAX_IMAGES,
    thumb_size: int = THUMB_SIZE,
    image_format: str = "JPEG",
    min_score: float = MIN_SCORE,
) -> Path:
    """Write a campaign summary comparing strategies as a single self-contained HTML file.

    File layout: one UTF-8 HTML file at ``out_path`` (parents created), nothing external (as
    ``round_html``). Sections: ``#learning-curve`` (all strategies); ``#strategies``: a strategy
    table (rounds, final labelled images, final and best mask AP, final box AP, and, when
    ``taudis`` is in the history, the labelled images each strategy needs to reach taudis's final
    mask AP) and a table of every round; then one section ``#latest-<n>`` per latest round (the
    entries of ``latest_rounds``, then those of ``campaigns``) with that round's summary and either
    up to ``max_images`` thumbnails (as in ``round_html``, when its instance shards are given) or
    a table of its chosen images.

    Args:
        history: learning-curve records of every strategy (see ``learning_curve_png``).
        out_path: the HTML file to write.
        latest_rounds: rounds to show: ``RoundSection`` or (strategy, selection_path[, instances_dir]);
            without instances_dir the section has a table instead of thumbnails.
        campaigns: (strategy, local campaign directory): shows the newest
            ``rounds/round-*/selection.json`` there, as a table (campaigns keep no instance shards).
        pool_annotations: COCO JSON (path or dict) of the pool, for the thumbnails' image files.
        image_root: directory the COCO ``file_name`` values are relative to.
        title: page title.
        max_images: cap on thumbnails per round section.
        thumb_size: longer side of a thumbnail, in pixels.
        image_format: "JPEG" or "PNG" for thumbnails.
        min_score: predictions not chosen are drawn from this score up.

    Returns:
        ``out_path`` as a Path.

    Raises:
        ReportInputError: the history, a selection, a campaign directory or the COCO file breaks
            its contract.
        InstanceTableError: a shard breaks the instance-table contract.
    """
    records = validate_history(list(history))
    sections = [_as_section(e) for e in latest_rounds]
    sections += [RoundSection(strategy, latest_selection(directory)) for strategy, directory in campaigns]
    body = [f"<header><h1>{_e(title)}</h1>"]
    body.append(
        f"<p>{len(records)} completed rounds over {len({r['strategy'] for r in records})} strategies.</p></header>"
    )
    body += _curve_section(records)
    if records:
        body += ['<section id="strategies">', *_strategy_table(records), *_rounds_table(records), "</section>"]
    with_shards = any(s.instances_dir is not None for s in sections)
    pool = load_pool_images(pool_annotations) if (with_shards and pool_annotations is not None) else {}
    root = Path(image_root) if image_root is not None else None
    for n, section in enumerate(sections):
        selection = load_selection(section.selection_path)
        body += [
            f'<section id="latest-{n}"><h2>Latest round of {_e(section.strategy)}</h2>',
            *_selection_summary(selection, None),
        ]
        if section.instances_dir is None:
            body += _chosen_table(selection, max_rows=100)
        else:
            grid, class_names = _grid(
                selection,
                section.instances_dir,
                pool,
                root,
                max_images=max_images,
                thumb_size=thumb_size,
                image_format=image_format,
                min_score=min_score,
            )
            body += [*_legend(class_names, min_score), *grid]
        body.append("</section>")
    return _write(out_path, _page(title, body))
