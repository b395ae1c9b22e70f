"""The benchmark's tables and figures, from its CSV files.

Writes under ``<results>``: ``report.md`` (every table below) and, per dataset,
``curves-<dataset>.png`` (mask AP against labelled images, mean and min-max over seeds).

- Learning curves: mean and standard deviation of mask AP over seeds, per strategy and round.
- Labelling efficiency against random: for a strategy's point (n labels, AP a) of seed s, the
  labels random needs to reach a on seed s's random curve (linear interpolation between its
  rounds), divided by n; "≥ x" when random never reaches a within its rounds (a lower bound).
- TAUDIS minus each baseline at every round, paired by seed (the seeds both ran), and the seeds
  whose campaigns began from different round-0 models (run on different machines).
- Ablation, one table per base model: mask AP of base + batch per variant, its difference to the
  default TAUDIS and to uncertainty-only on the same base, and the selection diagnostics; above
  them, those differences pooled over every base model that has the default TAUDIS row.
- Campaign variants (fine-tuning from the previous round's model, another parameter) against
  their strategy's default campaign, paired by seed; and for each change TAUDIS ran with, the
  curves, TAUDIS minus each baseline and the efficiency again with every strategy under that
  change (its own variant where it reads the parameter, its default campaign where it does not).
- Campaign diagnostics and costs.
"""

from __future__ import annotations

import itertools
import math
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.al_benchmark.plan import stand_in
from bench.al_benchmark.results import read_csv

MAIN = ("taudis", "uncertainty", "random", "coreset", "diversity")


def _mean_std(values: Iterable[float]) -> tuple[float, float, int]:
    v = [float(x) for x in values if x is not None and not math.isnan(float(x))]
    if not v:
        return math.nan, math.nan, 0
    return float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, len(v)


def _fmt(mean: float, std: float) -> str:
    return "-" if math.isnan(mean) else f"{mean:.1f} ± {std:.1f}"


def _signed(mean: float, std: float, k: int) -> str:
    """A difference, with its spread only where there is one (two values or more)."""
    return f"{mean:+.1f}" + (f" ± {std:.1f}" if k > 1 else "")


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"] + [
        "| " + " | ".join(r) + " |" for r in rows
    ]


Names = dict[str, str]  # strategy: the campaign variant that stands for it in a table


def _names(names: Names | None) -> Names:
    """The default campaigns, or every strategy's stand-in under one change (``under``)."""
    return names or {s: s for s in MAIN}


def under(change: str) -> Names:
    """Each strategy's campaign under ``change`` (``metric=product_rank``): its variant where it
    reads the parameter, its default campaign where it does not (plan.stand_in)."""
    return {s: stand_in(s, change) for s in MAIN}


def curve_table(
    curves: list[dict[str, Any]], dataset: str, names: Names | None = None
) -> tuple[list[str], dict[str, dict[int, tuple]]]:
    names = _names(names)
    rows = [r for r in curves if r["dataset"] == dataset and r["variant"] in names.values()]
    counts = sorted({int(r["labelled_images"]) for r in rows if r["labelled_images"] is not None})
    stats: dict[str, dict[int, tuple]] = {}
    for strategy in MAIN:
        stats[strategy] = {
            n: _mean_std(r["mask_ap"] for r in rows if r["variant"] == names[strategy] and r["labelled_images"] == n)
            for n in counts
        }
    header = ["strategy", *[f"{n} labelled" for n in counts]]
    body = [
        [names[s], *[_fmt(*stats[s][n][:2]) + f" ({stats[s][n][2]})" for n in counts]]
        for s in MAIN
        if any(stats[s][n][2] for n in counts)
    ]
    return _table(header, body), stats


def labels_to_reach(random_points: list[tuple[int, float]], target: float) -> float | None:
    """Labels random needs to reach ``target`` AP (linear between its rounds), None if it never does."""
    points = sorted(random_points)
    if not points:
        return None
    if points[0][1] >= target:
        return float(points[0][0])
    for (n0, a0), (n1, a1) in itertools.pairwise(points):
        if a0 < target <= a1:
            return n0 + (target - a0) / (a1 - a0) * (n1 - n0)
    return None


def efficiency_table(curves: list[dict[str, Any]], dataset: str, names: Names | None = None) -> list[str]:
    names = _names(names)
    rows = [r for r in curves if r["dataset"] == dataset and r["mask_ap"] is not None]
    seeds = sorted({r["seed"] for r in rows if r["variant"] == names["random"]})
    if not seeds:
        return ["No random campaign yet: nothing to compare against."]
    counts = sorted({int(r["labelled_images"]) for r in rows})[1:]  # the first round is shared
    body = []
    for strategy in (s for s in MAIN if s != "random"):
        cells = []
        for n in counts:
            ratios, censored = [], 0
            for seed in seeds:
                mine = [
                    r
                    for r in rows
                    if r["variant"] == names[strategy] and r["seed"] == seed and r["labelled_images"] == n
                ]
                rand = [
                    (int(r["labelled_images"]), float(r["mask_ap"]))
                    for r in rows
                    if r["variant"] == names["random"] and r["seed"] == seed
                ]
                if not mine:
                    continue
                needed = labels_to_reach(rand, float(mine[0]["mask_ap"]))
                if needed is None:
                    censored += 1
                    needed = max(p[0] for p in rand)
                ratios.append(needed / n)
            mean, std, k = _mean_std(ratios)
            cell = "-" if k == 0 else f"{'≥ ' if censored else ''}{mean:.2f} ± {std:.2f}"
            cells.append(cell + (f" ({censored} of {k} beyond random's last round)" if censored else ""))
        if any(c != "-" for c in cells):
            body.append([names[strategy], *cells])
    return _table(["strategy", *[f"at {n} labels" for n in counts]], body)


def versus_table(curves: list[dict[str, Any]], dataset: str, names: Names | None = None) -> list[str]:
    """TAUDIS minus each baseline, seed by seed: only seeds both ran count, so a baseline run on
    fewer seeds is not compared against a mean over other draws of the initial set."""
    names = _names(names)
    rows = [r for r in curves if r["dataset"] == dataset and r["mask_ap"] is not None]
    ap = {(r["variant"], r["seed"], int(r["labelled_images"])): float(r["mask_ap"]) for r in rows}
    counts = sorted({n for v, _, n in ap if v == names["taudis"]})
    baselines = [names[s] for s in MAIN if s != "taudis" and any(v == names[s] for v, _, _ in ap)]
    body = []
    for n in counts:
        mine = {seed: a for (v, seed, m), a in ap.items() if v == names["taudis"] and m == n}
        cells = []
        for base in baselines:
            diffs = [mine[seed] - ap[(base, seed, n)] for seed in sorted(mine) if (base, seed, n) in ap]
            mean, std, k = _mean_std(diffs)
            cells.append("-" if k == 0 else f"{mean:+.1f} ± {std:.1f} ({k})")
        body.append([str(n), _fmt(*_mean_std(mine.values())[:2]) + f" ({len(mine)})", *cells])
    return _table(["labelled", f"{names['taudis']} (seeds)", *[f"vs {b} (seeds)" for b in baselines]], body)


def start_disagreements(curves: list[dict[str, Any]], dataset: str, names: Names | None = None) -> list[str]:
    """Seeds whose campaigns began from different round-0 models, one line each (none: all agree).

    Every campaign of a seed trains its round-0 model on the same images with the same seed, so
    on one machine they agree to the last digit; run on another machine (other CPU kernels) the
    same training ends elsewhere. Paired differences involving such a campaign then compare
    different starting models as well as different choices.
    """
    order = list(_names(names).values())
    rows = [
        r
        for r in curves
        if r["dataset"] == dataset and r["round"] == 0 and r["mask_ap"] is not None and r["variant"] in order
    ]
    lines = []
    for seed in sorted({r["seed"] for r in rows}):
        groups: dict[float, list[str]] = {}
        for r in sorted((r for r in rows if r["seed"] == seed), key=lambda r: order.index(r["variant"])):
            groups.setdefault(round(float(r["mask_ap"]), 6), []).append(str(r["variant"]))
        if len(groups) > 1:
            parts = "; ".join(f"{ap:.1f}: {', '.join(names)}" for ap, names in groups.items())
            lines.append(f"- seed {seed}: round-0 mask AP {parts}")
    return lines


def variant_table(curves: list[dict[str, Any]], dataset: str) -> list[str]:
    """Each campaign variant (``<strategy> finetune``, ``<strategy> metric=...``: a strategy run
    with one change) against that strategy's default campaign, paired by seed: mask AP per round
    and the training time of the whole campaign."""
    rows = [r for r in curves if r["dataset"] == dataset and r["mask_ap"] is not None]
    names = {str(r["variant"]) for r in rows}
    variants = sorted(v for v in names if v not in MAIN and v.split(" ", 1)[0] in MAIN)
    body = []
    for variant in variants:
        default = variant.split(" ", 1)[0]
        diffs: dict[int, list[float]] = {}
        for seed in sorted({r["seed"] for r in rows if r["variant"] == variant}):
            mine = {int(r["labelled_images"]): r for r in rows if r["variant"] == variant and r["seed"] == seed}
            base = {int(r["labelled_images"]): r for r in rows if r["variant"] == default and r["seed"] == seed}
            if not base:
                continue
            points = []
            for n in sorted(set(mine) & set(base)):
                before, after = float(base[n]["mask_ap"]), float(mine[n]["mask_ap"])
                points.append(f"{n}: {before:.1f} → {after:.1f}")
                diffs.setdefault(n, []).append(after - before)
            seconds = [sum(float(r["train_seconds"] or 0) for r in c.values()) for c in (base, mine)]
            # only fine-tuning changes the training; otherwise the times differ by machine and load
            faster = f"{seconds[0] / seconds[1]:.2f}x" if seconds[1] and variant.endswith(" finetune") else "-"
            body.append([variant, str(seed), ", ".join(points), f"{seconds[0]:.0f} → {seconds[1]:.0f}", faster])
        if len(next(iter(diffs.values()), [])) > 1:  # the variant minus the default, over its seeds
            mean = ", ".join(f"{n}: {_signed(*_mean_std(d))}" for n, d in sorted(diffs.items()))
            body.append([variant, "mean difference", mean, "", ""])
    header = ["variant", "seed", "mask AP, default → variant (labelled: AP)", "training s", "faster"]
    return _table(header, body) if body else []


def changes(curves: list[dict[str, Any]], dataset: str) -> list[str]:
    """The changes TAUDIS ran whole campaigns with on ``dataset`` (``metric=product_rank``)."""
    names = {str(r["variant"]) for r in curves if r["dataset"] == dataset}
    return sorted(v.split(" ", 1)[1] for v in names if v.startswith("taudis "))


def change_section(curves: list[dict[str, Any]], dataset: str, change: str) -> list[str]:
    """The main tables again with every strategy under ``change``: the comparison the run's
    parameters call for, since a baseline that reads the parameter must get it too."""
    names = under(change)
    table, _ = curve_table(curves, dataset, names)
    reads = " (where it reads it)" if "=" in change else ""  # a parameter; finetune and portable are everyone's
    return [
        f"### Every strategy with {change}{reads}, mask AP (mean ± sd over seeds, seeds in brackets)",
        "",
        *table,
        "",
        f"TAUDIS minus each baseline, all with {change} (paired by seed):",
        "",
        *versus_table(curves, dataset, names),
        "",
        f"Labelling efficiency against random, all with {change}:",
        "",
        *efficiency_table(curves, dataset, names),
        "",
        *_apart(start_disagreements(curves, dataset, names)),
    ]


def _apart(lines: list[str]) -> list[str]:
    if not lines:
        return []
    return [
        "Campaigns of these seeds ran on different machines and began from different round-0 models "
        "(same images, same seed, other CPU numerics):",
        "",
        *lines,
        "",
    ]


def ablation_table(rows: list[dict[str, Any]], dataset: str) -> list[str]:
    """One table per base model: a batch's mask AP compares only with batches added to the same
    base, and a seed run on another machine trains another base model (same images, other CPU
    numerics), so its rows get a table of their own."""
    groups: dict[tuple[int, float], list[dict[str, Any]]] = {}
    for r in rows:
        if r["dataset"] == dataset:
            groups.setdefault((int(r["seed"]), float(r["base_mask_ap"])), []).append(r)
    lines: list[str] = []
    for (seed, base_ap), mine in sorted(groups.items(), key=lambda g: (g[0][0], -len(g[1]))):
        images = mine[0]["labelled_images"]
        lines += [f"Seed {seed}, base model mask AP {base_ap:.1f}, base + batch = {images} images:", ""]
        lines += [*_ablation_rows(mine), ""]
    return lines[:-1]


def ablation_summary(rows: list[dict[str, Any]], dataset: str) -> list[str]:
    """Every variant against the references on its own base model, pooled over base models: a
    batch's AP difference is the variant's effect plus one training's noise, so only a difference
    that holds on several bases (seeds) ranks a variant."""
    groups: dict[tuple[int, float], dict[str, float]] = {}
    for r in rows:
        if r["dataset"] == dataset and r["mask_ap"] is not None:
            groups.setdefault((int(r["seed"]), float(r["base_mask_ap"])), {})[str(r["variant"])] = float(r["mask_ap"])
    bases = [aps for aps in groups.values() if "taudis" in aps]
    if len(bases) < 2:
        return []
    variants = sorted({v for aps in bases for v in aps if v != "taudis"})
    body = []
    for name in variants:
        mine = [aps for aps in bases if name in aps]
        diffs = [aps[name] - aps["taudis"] for aps in mine]
        versus = [aps[name] - aps["uncertainty"] for aps in mine if "uncertainty" in aps and name != "uncertainty"]
        spread = _mean_std(diffs)
        cells = [_signed(*spread), f"{sum(d > 0 for d in diffs)} of {len(diffs)}"]
        cells.append(_signed(*_mean_std(versus)) + f" ({len(versus)})" if versus else "-")
        body.append((spread[0], [name, str(len(mine)), *cells]))
    body.sort(key=lambda b: -b[0])
    header = ["variant", "base models", "vs taudis (mean ± sd)", "above taudis on", "vs uncertainty (bases)"]
    return _table(header, [cells for _, cells in body])


def _ablation_rows(rows: list[dict[str, Any]]) -> list[str]:
    variants = sorted({r["variant"] for r in rows}, key=lambda v: (not v.startswith("taudis"), v))
    ref = {name: _mean_std(r["mask_ap"] for r in rows if r["variant"] == name)[0] for name in ("taudis", "uncertainty")}
    body = []
    for name in variants:
        mine = [r for r in rows if r["variant"] == name]
        mean, std, k = _mean_std(r["mask_ap"] for r in mine)

        def avg(key: str, mine: list[dict[str, Any]] = mine) -> str:
            m = _mean_std(r.get(key) for r in mine)[0]
            return "-" if math.isnan(m) else f"{m:.2f}"

        def versus(other: float, mean: float = mean) -> str:
            return "-" if math.isnan(other) else f"{mean - other:+.1f}"

        body.append(
            [name, f"{_fmt(mean, std)} ({k})", versus(ref["taudis"]), versus(ref["uncertainty"]),
             avg("hard_share"), avg("overlap_with_uncertainty"), avg("density_raw_0.8"), avg("density_centred_0.8"),
             avg("density_cover"), avg("cover_saturated_at"), avg("coverage")]
        )  # fmt: skip
    header = ["variant", "mask AP (seeds)", "vs taudis", "vs uncertainty", "hard share", "overlap with unc.",
              "density raw@0.8", "density centred@0.8", "density of its graph", "cover saturated at pick",
              "coverage"]  # fmt: skip
    return _table(header, body)


DIAGNOSTICS = {  # column of diagnostics.csv: its heading in the table
    "hard_share": "hard share",
    "instances_per_chosen_image": "chosen instances per image",
    "overlap_with_uncertainty": "overlap with unc.",
    "filled": "filled",
    "density_raw_0.8": "density raw@0.8",
    "density_centred_0.8": "density centred@0.8",
    "median_cosine": "median cos",
    "cover_saturated_at": "saturated at pick",
    "cover_k": "cover k",
}


def diagnostics_table(rows: list[dict[str, Any]], dataset: str) -> list[str]:
    rows = [r for r in rows if r["dataset"] == dataset]
    body = []
    for strategy in MAIN:
        mine = [r for r in rows if r["variant"] == strategy]
        if not mine:
            continue
        means = [_mean_std(r.get(key) for r in mine)[0] for key in DIAGNOSTICS]
        body.append([strategy, *("-" if math.isnan(m) else f"{m:.2f}" for m in means)])
    return _table(["strategy", *DIAGNOSTICS.values()], body)


def curves_png(stats: dict[str, dict[int, tuple]], curves: list[dict[str, Any]], dataset: str, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for strategy in MAIN:
        counts = sorted(n for n in stats[strategy] if stats[strategy][n][2])
        if not counts:
            continue
        mean = [stats[strategy][n][0] for n in counts]
        per_seed = [
            [
                float(r["mask_ap"])
                for r in curves
                if r["dataset"] == dataset and r["variant"] == strategy and r["labelled_images"] == n
            ]
            for n in counts
        ]
        ax.plot(counts, mean, marker="o", label=strategy, linewidth=2 if strategy == "taudis" else 1.3)
        ax.fill_between(counts, [min(v) for v in per_seed], [max(v) for v in per_seed], alpha=0.12)
    ax.set_xlabel("labelled images")
    ax.set_ylabel("mask AP (val)")
    ax.set_title(f"{dataset}: mean over seeds, min-max shaded")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def write_report(results: Path) -> Path:
    curves = read_csv(results / "curves.csv")
    diagnostics = read_csv(results / "diagnostics.csv")
    ablation = read_csv(results / "ablation.csv")
    campaigns = read_csv(results / "campaigns.csv")
    if not curves + ablation:
        raise SystemExit(f"{results}: no curves.csv or ablation.csv rows; run the benchmark's run or ablation first")
    lines = ["# Active-learning benchmark results", "", "Written by `python -m bench.al_benchmark report`.", ""]
    for dataset in sorted({r["dataset"] for r in curves + ablation}):
        lines += [f"## {dataset}", ""]
        if any(r["dataset"] == dataset for r in curves):
            table, stats = curve_table(curves, dataset)
            curves_png(stats, curves, dataset, results / f"curves-{dataset}.png")
            lines += ["### Mask AP by labelled images (mean ± sd over seeds, seeds in brackets)", "", *table, ""]
            lines += [f"![learning curves](curves-{dataset}.png)", ""]
            lines += ["### Labelling efficiency against random (labels random needs / labels used)", ""]
            lines += [*efficiency_table(curves, dataset), ""]
            lines += ["### TAUDIS minus each baseline (mask AP, paired by seed: mean ± sd, seeds)", ""]
            lines += [*versus_table(curves, dataset), ""]
            lines += _apart(start_disagreements(curves, dataset))
            lines += [
                "### Selection diagnostics (mean over rounds and seeds)",
                "",
                *diagnostics_table(diagnostics, dataset),
                "",
            ]
            changed = variant_table(curves, dataset)
            if changed:
                lines += ["### Campaign variants against their strategy's default campaign, paired by seed", ""]
                lines += [*changed, ""]
            for change in changes(curves, dataset):
                lines += change_section(curves, dataset, change)
            mine = [r for r in campaigns if r["dataset"] == dataset]
            if mine:
                total = sum(float(r["seconds"] or 0) for r in mine)
                lines += [f"Campaigns: {len(mine)}, {total / 3600:.1f} h of campaign wall time in all.", ""]
        if any(r["dataset"] == dataset for r in ablation):
            summary = ablation_summary(ablation, dataset)
            if summary:
                lines += ["### Ablation over base models: each variant minus the default TAUDIS on its base", ""]
                lines += [*summary, ""]
            lines += ["### Ablation: one batch per variant from the same model (base + batch, mask AP)", ""]
            lines += [*ablation_table(ablation, dataset), ""]
    path = results / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


BEGIN, END = "<!-- results: from bench/results/al/report.md -->", "<!-- end of results -->"


def splice_into(doc: Path, report: Path) -> None:
    """Copy ``report``'s tables into ``doc`` between its BEGIN and END markers, headings one level
    down and figure paths relative to ``doc``; the prose around them is left alone."""
    text = doc.read_text()
    if BEGIN not in text or END not in text:
        raise ValueError(f"{doc}: needs the lines {BEGIN!r} and {END!r} around the results")
    figures = os.path.relpath(report.parent, doc.parent)
    body = []
    for line in report.read_text().splitlines()[3:]:  # after the title and its note
        if line.startswith("## "):
            line = f"### The {line[3:]} dataset"
        elif line.startswith("### "):
            line = "#" + line
        body.append(re.sub(r"\]\((curves-[^)]+\.png)\)", rf"]({figures}/\1)", line))
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    doc.write_text(head + BEGIN + "\n" + "\n".join(body).rstrip() + "\n\n" + END + tail)
