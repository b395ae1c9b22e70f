"""The benchmark's results as data: CSV files, merged with what earlier runs (other machines) wrote.

<results>/curves.csv        one row per campaign round: dataset, variant, strategy, seed, round,
                            labelled_images, mask_ap, mask_ap50, box_ap, iterations, train_seconds
<results>/diagnostics.csv   one row per selection round of a campaign (see diagnostics.py)
<results>/ablation.csv      one row per ablation variant and seed (see ablation.py)
<results>/campaigns.csv     one row per campaign: its wall time and where it ran
"""

from __future__ import annotations

import csv
import json
import math
import platform
from pathlib import Path
from typing import Any

KEYS = {
    "curves": ("dataset", "variant", "seed", "round"),
    "diagnostics": ("dataset", "variant", "seed", "round"),
    "ablation": ("dataset", "variant", "seed", "base_mask_ap"),
    "campaigns": ("dataset", "variant", "seed"),
}


def collect(work: Path) -> dict[str, list[dict[str, Any]]]:
    """Every finished campaign's and ablation variant's rows found under ``work``."""
    out: dict[str, list[dict[str, Any]]] = {name: [] for name in KEYS}
    for path in sorted((work / "campaigns").glob("*/*/result.json")):
        result = json.loads(path.read_text())
        out["curves"] += result["curve"]
        out["diagnostics"] += result["diagnostics"]
        spec = result["spec"]
        out["campaigns"].append(
            {
                "dataset": path.parent.parent.name,
                "variant": spec["variant"]["name"],
                "key": path.parent.name,
                "seed": spec["seed"],
                "rounds": spec["rounds"],
                "budget": spec["budget"],
                "seconds": result.get("seconds"),
                "train_seconds": sum(float(p.get("train_seconds") or 0) for p in result["curve"]),
                "machine": f"{platform.machine()} {platform.node()}",
            }
        )
    for path in sorted((work / "ablation-results").rglob("*.json")):  # <dataset>/[<base>/]<key>.json
        out["ablation"].append(json.loads(path.read_text()))
    return out


def recorded(results: Path, kind: str) -> set[tuple[Any, ...]]:
    """What the CSVs under ``results`` hold: (dataset, spec key) of every campaign, or for
    ``kind == "ablation"`` (dataset, spec key, base model's mask AP) of every ablation variant.

    The CSVs are committed, the work folder is not: a fresh clone, another machine or a later day
    skips what is recorded here instead of running it again. An ablation row compares with the
    rows scored from the same base model only, and another machine's CPU numerics train another
    base model from the same images and seed: a variant counts as recorded on the base it ran on.
    """
    if kind == "campaign":
        return {(str(r["dataset"]), str(r["key"])) for r in read_csv(results / "campaigns.csv") if r.get("key")}
    rows = read_csv(results / "ablation.csv")
    return {(str(r["dataset"]), str(r["key"]), float(r["base_mask_ap"])) for r in rows if r.get("key")}


def read_csv(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    with path.open() as f:
        return [{k: _value(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _value(text: str) -> Any:
    if text == "":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def write_csvs(found: dict[str, list[dict[str, Any]]], results: Path) -> None:
    """Merge ``found`` into the CSVs under ``results`` (a row with the same key is replaced)."""
    results.mkdir(parents=True, exist_ok=True)
    for name, rows in found.items():
        path = results / f"{name}.csv"
        merged = {tuple(r.get(k) for k in KEYS[name]): r for r in read_csv(path)}
        for row in rows:
            clean = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
            merged[tuple(clean.get(k) for k in KEYS[name])] = clean
        if not merged:
            continue
        fields: list[str] = []
        for row in merged.values():
            fields += [k for k in row if k not in fields]
        ordered = sorted(merged.values(), key=lambda r: tuple(str(r.get(k)) for k in KEYS[name]))
        tmp = path.with_suffix(".tmp")
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(ordered)
        tmp.replace(path)
