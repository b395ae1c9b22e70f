"""The built-in synthetic dataset: determinism, layout, and the properties active learning relies on."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from taudis.data.cli import main as data_main
from taudis.data.coco import load_coco
from taudis.data.synth import CLASSES, STRATA, make_synthetic_dataset


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("synth")
    return root, make_synthetic_dataset(root, num_images=120, seed=7)


def test_same_seed_gives_byte_identical_files(synth: tuple[Path, dict], tmp_path: Path) -> None:
    root, _ = synth
    make_synthetic_dataset(tmp_path / "again", num_images=120, seed=7)
    assert _digest(root) == _digest(tmp_path / "again")
    make_synthetic_dataset(tmp_path / "other", num_images=120, seed=8)
    other = _digest(tmp_path / "other")
    assert other["images/000001.png"] != _digest(root)["images/000001.png"]


def test_a_tile_does_not_depend_on_the_dataset_size(synth: tuple[Path, dict], tmp_path: Path) -> None:
    root, _ = synth
    make_synthetic_dataset(tmp_path / "small", num_images=20, seed=7, initial_labeled=3)
    # Strata are reassigned for a different size, so compare a tile of equal stratum.
    strata = {
        img["id"]: img["stratum"]
        for split in ("train", "pool", "val")
        for img in load_coco(tmp_path / f"small/annotations/{split}.json")["images"]
    }
    big = {
        img["id"]: img["stratum"]
        for split in ("train", "pool", "val")
        for img in load_coco(root / f"annotations/{split}.json")["images"]
    }
    same = [i for i in strata if strata[i] == big[i]]
    assert same
    name = f"images/{same[0]:06d}.png"
    assert (tmp_path / "small" / name).read_bytes() == (root / name).read_bytes()


def test_layout_and_splits(synth: tuple[Path, dict]) -> None:
    root, manifest = synth
    splits = {s: load_coco(root / f"annotations/{s}.json") for s in ("train", "pool", "val")}
    ids = {s: {img["id"] for img in d["images"]} for s, d in splits.items()}
    assert len(ids["train"]) == 10 and len(ids["val"]) == 24
    assert not (ids["train"] & ids["pool"]) and not (ids["train"] & ids["val"]) and not (ids["pool"] & ids["val"])
    assert ids["train"] | ids["pool"] | ids["val"] == set(range(1, 121))
    for data in splits.values():
        for img in data["images"]:
            assert Image.open(root / "images" / img["file_name"]).size == (128, 128)
    written = json.loads((root / "dataset.json").read_text())
    assert written == manifest and written["knobs"]["seed"] == 7 and written["image_root"] == "images"
    assert written["counts"]["pool"]["images"] == len(ids["pool"])


def test_masks_boxes_and_areas_agree(synth: tuple[Path, dict]) -> None:
    root, _ = synth
    data = load_coco(root / "annotations/pool.json")
    for ann in data["annotations"][:200]:
        rle = {"size": ann["segmentation"]["size"], "counts": ann["segmentation"]["counts"].encode()}
        mask = mask_utils.decode(rle)
        ys, xs = np.nonzero(mask)
        assert mask.sum() == ann["area"] >= 12
        assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]


def test_classes_are_imbalanced_with_a_rare_class(synth: tuple[Path, dict]) -> None:
    _, manifest = synth
    totals = {
        c: sum(manifest["counts"][s]["instances_per_class"][c] for s in ("train", "pool", "val")) for c in CLASSES
    }
    assert 0 < totals["pool"] < 0.1 * sum(totals.values()), totals
    assert totals["car"] > 4 * totals["pool"] and totals["tree"] > 4 * totals["pool"]
    assert totals["building"] > totals["pool"]


def test_val_is_stratified_and_hard_tiles_are_fewer(synth: tuple[Path, dict]) -> None:
    _, manifest = synth
    val = manifest["counts"]["val"]["images_per_stratum"]
    assert max(val.values()) - min(val.values()) <= 1 and set(val) == set(STRATA)
    everything = {
        s: sum(manifest["counts"][split]["images_per_stratum"][s] for split in ("train", "pool", "val")) for s in STRATA
    }
    assert everything["easy"] > 2 * max(everything[s] for s in STRATA[1:])


def _contrast(root: Path, data: dict, stratum: str) -> float:
    """Mean absolute colour difference between object pixels and the rest, over a stratum's tiles."""
    gaps = []
    for img in data["images"]:
        if img["stratum"] != stratum:
            continue
        pixels = np.asarray(Image.open(root / "images" / img["file_name"]), dtype=np.float64)
        union = np.zeros(pixels.shape[:2], bool)
        for ann in data["annotations"]:
            if ann["image_id"] == img["id"]:
                rle = {"size": ann["segmentation"]["size"], "counts": ann["segmentation"]["counts"].encode()}
                union |= mask_utils.decode(rle).astype(bool)
        if union.any():
            gaps.append(np.abs(pixels[union].mean(0) - pixels[~union].mean(0)).sum())
    return float(np.mean(gaps))


def test_hard_strata_are_hard(synth: tuple[Path, dict]) -> None:
    root, _ = synth
    val = load_coco(root / "annotations/val.json")
    assert _contrast(root, val, "low_contrast") < 0.6 * _contrast(root, val, "easy")
    per_image: dict[str, list[int]] = {s: [] for s in STRATA}
    for img in val["images"]:
        per_image[img["stratum"]].append(sum(a["image_id"] == img["id"] for a in val["annotations"]))
    assert np.mean(per_image["dense"]) > 2 * np.mean(per_image["easy"])
    names = {c["id"]: c["name"] for c in val["categories"]}
    rare_large = {img["id"] for img in val["images"] if img["stratum"] == "rare_large"}
    large = [a for a in val["annotations"] if a["image_id"] in rare_large and names[a["category_id"]] == "building"]
    assert max(a["area"] for a in large) > 1000, "rare_large tiles hold large buildings"
    assert {names[a["category_id"]] for a in val["annotations"] if a["image_id"] in rare_large} >= {"pool"}


def test_knobs_are_validated(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="initial_labeled"):
        make_synthetic_dataset(tmp_path, num_images=10, initial_labeled=9)
    with pytest.raises(ValueError, match="hard_fraction"):
        make_synthetic_dataset(tmp_path, num_images=10, hard_fraction=1.5)


def test_cli_synth_and_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "d"
    assert data_main(["synth", "--out", str(out), "--images", "16", "--seed", "2", "--initial-labeled", "4"]) == 0
    assert json.loads((out / "dataset.json").read_text())["knobs"]["initial_labeled"] == 4
    capsys.readouterr()
    assert (
        data_main(["check", "--annotations", str(out / "annotations/pool.json"), "--images", str(out / "images")]) == 0
    )
    summary = json.loads(capsys.readouterr().out)
    assert summary["images"] == len(load_coco(out / "annotations/pool.json")["images"])
    assert summary["warnings"] == [], "the built-in data uses every class and no EXIF"
    victim = load_coco(out / "annotations/pool.json")["images"][0]
    (out / "images" / victim["file_name"]).unlink()
    assert (
        data_main(["check", "--annotations", str(out / "annotations/pool.json"), "--images", str(out / "images")]) == 1
    )
    assert f"image id {victim['id']}" in capsys.readouterr().err


def test_rerun_in_place_with_fewer_images_matches_a_fresh_run(tmp_path: Path) -> None:
    make_synthetic_dataset(tmp_path / "a", num_images=16, seed=4, initial_labeled=3)
    make_synthetic_dataset(tmp_path / "a", num_images=12, seed=4, initial_labeled=3)
    make_synthetic_dataset(tmp_path / "b", num_images=12, seed=4, initial_labeled=3)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
