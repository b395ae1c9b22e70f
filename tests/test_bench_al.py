"""The active-learning benchmark's own logic: the second dataset, campaign keys, resuming, the tables.

The campaigns themselves are hours of training (bench/, never the test command); what is tested
here is what decides whether their numbers mean what the tables say.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bench.al_benchmark.__main__ import _parser, jobs_for, worker
from bench.al_benchmark.plan import (
    DEFAULT_PARAMS,
    Spec,
    Variant,
    ablation_variants,
    parse_initial,
    parse_param,
    prepare_dataset,
    stand_in,
)
from bench.al_benchmark.report import (
    BEGIN,
    END,
    ablation_summary,
    ablation_table,
    change_section,
    changes,
    efficiency_table,
    labels_to_reach,
    splice_into,
    start_disagreements,
    variant_table,
    versus_table,
)
from bench.al_benchmark.results import read_csv, write_csvs
from bench.datasets.cells import CLASSES, STRATA, make_cells_dataset
from taudis.data.coco import load_coco
from taudis.data.masks import decode_rle
from taudis.model import numerics
from taudis.select.uncertainty import AGGREGATIONS, METRICS, RESCALINGS


def test_cells_dataset_is_valid_coco_with_balanced_val(tmp_path: Path) -> None:
    manifest = make_cells_dataset(tmp_path, num_images=40, size=64, initial=4)
    splits = {s: load_coco(tmp_path / "annotations" / f"{s}.json") for s in ("train", "pool", "val")}
    ids = [{im["id"] for im in d["images"]} for d in splits.values()]
    assert sum(len(s) for s in ids) == 40 and len(set().union(*ids)) == 40  # disjoint, every image once
    assert len(ids[0]) == 4
    per_stratum = manifest["counts"]["val"]["per_stratum"]
    assert set(per_stratum) == set(STRATA) and len(set(per_stratum.values())) == 1
    assert [c["name"] for c in splits["pool"]["categories"]] == list(CLASSES)
    for data in splits.values():
        for ann in data["annotations"]:  # each record's area and box are its mask's
            mask = decode_rle(ann["segmentation"])
            assert ann["area"] == mask.sum() > 0
            rows, cols = mask.any(1).nonzero()[0], mask.any(0).nonzero()[0]
            assert ann["bbox"] == [cols[0], rows[0], cols[-1] - cols[0] + 1, rows[-1] - rows[0] + 1]


def _spec(strategy: str, **params: object) -> Spec:
    variant = Variant(strategy, strategy, dict(params))
    return Spec("synthetic", variant, 0, 3, 20, "mask_rcnn_R18_slim_cpu.yaml", "", False, dict(DEFAULT_PARAMS))


def _png(path: Path, size: tuple[int, int] = (32, 32)) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", size).save(path)


def _coco_folder(
    root: Path, splits: dict[str, list[str]], categories: list[dict[str, object]] | None = None, side: int = 32
) -> Path:
    """A user's COCO folder: each split's images (``side`` px) numbered from 1 (as exports do), one 8 px square each."""
    (root / "annotations").mkdir(parents=True)
    (root / "images").mkdir()
    for split, names in splits.items():
        images = [{"id": i, "file_name": n, "width": side, "height": side} for i, n in enumerate(names, 1)]
        annotations = [
            {"id": i, "image_id": i, "category_id": 1, "bbox": [4, 4, 8, 8], "area": 64, "iscrowd": 0,
             "segmentation": [[4, 4, 12, 4, 12, 12, 4, 12]], "note": n}
            for i, n in enumerate(names, 1)
        ]  # fmt: skip
        cats = categories if categories and split == "val" else [{"id": 1, "name": "building"}]
        doc = {"images": images, "annotations": annotations, "categories": cats}
        (root / "annotations" / f"{split}.json").write_text(json.dumps(doc))
        for name in names:
            _png(root / "images" / name, (side, side))
    return root


def test_a_coco_folder_numbered_per_file_merges_without_misplacing_labels(tmp_path: Path) -> None:
    folder = _coco_folder(tmp_path / "mine", {"train": ["a.png", "b.png"], "pool": ["c.png", "d.png", "e.png"],
                                              "val": ["v.png"]})  # fmt: skip
    dataset = prepare_dataset(str(folder), tmp_path / "w", initial=None)
    pool = json.loads(dataset.pool.read_text())
    assert len({im["id"] for im in pool["images"]}) == 5  # train's 1, 2 and the pool's 1, 2, 3 told apart
    by_id = {im["id"]: im["file_name"] for im in pool["images"]}
    assert all(by_id[a["image_id"]] == a["note"] for a in pool["annotations"])  # each label on its own image
    given = json.loads(dataset.initial(0).read_text())
    assert sorted(by_id[im["id"]] for im in given["images"]) == ["a.png", "b.png"]
    assert sorted(by_id[a["image_id"]] for a in given["annotations"]) == ["a.png", "b.png"]
    drawn = prepare_dataset(str(folder), tmp_path / "w", initial=3)
    assert len(json.loads(drawn.initial(1).read_text())["images"]) == 3  # drawn from all five
    assert drawn.name.startswith("mine-") and dataset.name == drawn.name.removesuffix("-i3") + "-given"


def test_a_folder_whose_objects_the_models_input_would_shrink_below_the_anchors_is_warned_about(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    splits = {"pool": ["c.png", "d.png"], "val": ["v.png"]}
    fine = _coco_folder(tmp_path / "tiles", splits)  # 8 px squares in 32 px tiles: 32 px at the 128 px input
    large = _coco_folder(tmp_path / "scenes", splits, side=512)  # 8 px in 512 px scenes: 2 px at 128
    for folder in (fine, large):
        args = _parser().parse_args(["run", "--dataset", str(folder), "--initial", "1", "--work", str(tmp_path / "w"),
                                     "--results", str(tmp_path / "r")])  # fmt: skip
        jobs_for(args, "campaign")
    warnings = [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and warnings[0].startswith("warning: scenes-") and "2.0 px across" in warnings[0]
    assert "INPUT.MIN_SIZE_TEST 1024" in warnings[0]  # the median object at two anchors: 16 px


def test_changed_annotation_files_are_another_dataset_and_nothing_stale_is_reused(tmp_path: Path) -> None:
    folder = _coco_folder(tmp_path / "mine", {"pool": ["c.png", "d.png", "e.png"], "val": ["v.png"]})
    before = prepare_dataset(str(folder), tmp_path / "w", initial=2)
    first = json.loads(before.initial(0).read_text())
    _coco_folder(tmp_path / "extra", {"train": ["a.png", "b.png"]})  # an initial set added later, numbered from 1
    (folder / "annotations" / "train.json").write_text((tmp_path / "extra" / "annotations" / "train.json").read_text())
    for name in ("a.png", "b.png"):
        _png(folder / "images" / name)
    after = prepare_dataset(str(folder), tmp_path / "w", initial=2)
    assert after.name != before.name and after.root != before.root  # its own results, its own derived files
    by_id = {im["id"]: im["file_name"] for im in json.loads(after.pool.read_text())["images"]}
    again = json.loads(after.initial(0).read_text())
    assert all(by_id[a["image_id"]] == a["note"] for a in again["annotations"])
    assert json.loads(before.initial(0).read_text()) == first  # the old version's files untouched


def test_a_coco_folder_that_breaks_the_splits_is_refused_naming_the_file(tmp_path: Path) -> None:
    leak = _coco_folder(tmp_path / "leak", {"pool": ["a.png", "b.png"], "val": ["b.png"]})
    with pytest.raises(ValueError, match=r"val\.json and .*pool\.json share 1 image.*'b.png': val must be held out"):
        prepare_dataset(str(leak), tmp_path / "w")
    dotted = _coco_folder(tmp_path / "dotted", {"train": ["t.png"], "pool": ["./t.png", "p.png"], "val": ["v.png"]})
    with pytest.raises(ValueError, match=r"train\.json and .*pool\.json share 1 image.*'t.png'"):
        prepare_dataset(str(dotted), tmp_path / "w")  # one file, however its name is written
    sized = _coco_folder(tmp_path / "sized", {"pool": ["a.png", "b.png"], "val": ["v.png"]})
    _png(sized / "images" / "b.png", (32, 24))
    with pytest.raises(
        ValueError, match=r"pool\.json: image id 2 .*b\.png\): the file is 32x24, the COCO file says 32x32"
    ):
        prepare_dataset(str(sized), tmp_path / "w")  # before any training, not inside the first one
    other = _coco_folder(tmp_path / "cats", {"pool": ["a.png"], "val": ["v.png"]}, [{"id": 1, "name": "car"}])
    with pytest.raises(ValueError, match=r"val\.json: categories \[\(1, 'car'\)\] differ"):
        prepare_dataset(str(other), tmp_path / "w")
    gone = _coco_folder(tmp_path / "gone", {"pool": ["a.png", "b.png"], "val": ["v.png"]})
    (gone / "images" / "b.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"pool\.json, images\[1\] \(id 2\), field 'file_name': no file"):
        prepare_dataset(str(gone), tmp_path / "w")
    _png(gone / "images" / "B.PNG")  # named otherwise on disk: the message says how
    with pytest.raises(
        FileNotFoundError, match=r"no file .*b\.png \(the folder holds 'B\.PNG', the same name in other"
    ):
        prepare_dataset(str(gone), tmp_path / "w")
    (gone / "images" / "B.PNG").unlink()
    _png(gone / "images" / "b.png")  # fixed: checked again, and accepted
    assert len(json.loads(prepare_dataset(str(gone), tmp_path / "w").pool.read_text())["images"]) == 2
    with pytest.raises(FileNotFoundError, match=r"--initial given needs .*train\.json"):
        prepare_dataset(str(gone), tmp_path / "w", initial=None)  # the same work folder: nothing cached hides it
    empty = _coco_folder(tmp_path / "empty", {"train": [], "pool": ["a.png"], "val": ["v.png"]})
    with pytest.raises(ValueError, match=r"train\.json: no images"):
        prepare_dataset(str(empty), tmp_path / "w", initial=None)
    with pytest.raises(FileNotFoundError, match=r"no .*pool\.json"):
        prepare_dataset(str(tmp_path / "nothing"), tmp_path / "w")


def _edit(folder: Path, split: str, change: Callable[[dict[str, Any]], None]) -> None:
    path = folder / "annotations" / f"{split}.json"
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


def test_a_split_with_nothing_to_score_or_to_label_is_refused(tmp_path: Path) -> None:
    def all_crowd(doc: dict[str, Any]) -> None:
        for ann in doc["annotations"]:
            ann["iscrowd"] = 1

    crowd = _coco_folder(tmp_path / "crowd", {"pool": ["a.png", "b.png"], "val": ["v.png", "w.png"]})
    _edit(crowd, "val", all_crowd)  # as CVAT's COCO export writes every mask
    with pytest.raises(ValueError, match=r"val\.json: only crowd regions \(2 annotation.*mask AP would be empty"):
        prepare_dataset(str(crowd), tmp_path / "w")
    unlabelled = _coco_folder(tmp_path / "bare", {"train": ["t.png"], "pool": ["a.png", "b.png"], "val": ["v.png"]})
    _edit(unlabelled, "pool", lambda doc: doc["annotations"].clear())  # train.json's labels do not make up for it
    with pytest.raises(ValueError, match=r"pool\.json: no annotation: the benchmark's oracle"):
        prepare_dataset(str(unlabelled), tmp_path / "w", initial=None)


def test_the_folder_checks_warnings_are_printed_before_the_campaigns(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = _coco_folder(tmp_path / "mine", {"pool": ["a.png", "b.png", "c.png"], "val": ["v.png"]})

    def odd(doc: dict[str, Any]) -> None:
        doc["annotations"][0]["iscrowd"] = 1
        doc["categories"].append({"id": 2, "name": "tree"})

    _edit(folder, "pool", odd)
    _edit(folder, "val", lambda doc: doc["categories"].append({"id": 2, "name": "tree"}))
    args = _parser().parse_args(["run", "--dataset", str(folder), "--initial", "1", "--work", str(tmp_path / "w"),
                                 "--results", str(tmp_path / "r")])  # fmt: skip
    for _ in range(2):  # from the check, and again from its record when the run resumes
        jobs_for(args, "campaign")
        warnings = [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning:")]
        assert any("pool.json: 1 of 3 annotation(s) are iscrowd=1" in w for w in warnings), warnings
        assert any("pool.json: category 'tree' (id 2) has no annotation" in w for w in warnings), warnings
        assert not any("val.json" in w for w in warnings), warnings  # val's unused class is only unscored


def test_a_generated_dataset_of_another_size_or_start_is_another_dataset(tmp_path: Path) -> None:
    small = prepare_dataset("synthetic", tmp_path, images=24, initial=4)
    assert small.name == "synthetic-24-i4" and len(json.loads(small.pool.read_text())["images"]) < 24
    assert prepare_dataset("synthetic", tmp_path, images=24, initial=None).name == "synthetic-24-given"
    assert small.root != prepare_dataset("synthetic", tmp_path, images=30, initial=4).root


def test_a_run_parameter_reaches_every_strategy_that_reads_it_under_its_own_name(tmp_path: Path) -> None:
    assert parse_param("sigma=0.9") == ("sigma", 0.9) and parse_param("centre=true") == ("centre", True)
    for bad, why in (("metric=nope", "unknown uncertainty metric"), ("gamma=1", "KEY=VALUE with KEY one of"),
                     ("centre=yes", "not true or false"), ("universe=all", "unknown cover universe")):  # fmt: skip
        with pytest.raises(ValueError, match=why):
            parse_param(bad)
    argv = ["run", "--seeds", "0", "--variants", "taudis", "random", "--work", str(tmp_path / "w"),
            "--results", str(tmp_path / "r"), "--dataset", "synthetic", "--images", "24", "--initial", "4"]  # fmt: skip
    plain = jobs_for(_parser().parse_args(argv), "campaign")
    changed = jobs_for(_parser().parse_args([*argv, "--param", "metric=product_rank"]), "campaign")
    mine = [Spec.from_json(j["spec"]) for j in changed]
    assert [s.variant.name for s in mine] == ["taudis metric=product_rank"]  # random reads no metric: not rerun
    assert mine[0].params["metric"] == "product_rank" and mine[0].key != Spec.from_json(plain[0]["spec"]).key


def test_portable_numerics_are_a_variant_of_their_own_with_their_own_models(tmp_path: Path, monkeypatch) -> None:
    argv = ["run", "--seeds", "0", "--variants", "random", "--work", str(tmp_path / "w"), "--results",
            str(tmp_path / "r"), "--dataset", "synthetic", "--images", "24", "--initial", "4"]  # fmt: skip
    plain = Spec.from_json(jobs_for(_parser().parse_args(argv), "campaign")[0]["spec"])
    job = jobs_for(_parser().parse_args([*argv, "--portable-numerics"]), "campaign")[0]
    portable = Spec.from_json(job["spec"])
    assert portable.variant.name == "random portable" and portable.portable and not plain.portable
    assert portable.key != plain.key and portable.base_key(20) != plain.base_key(20)
    before = portable.key, portable.base_key(20)
    monkeypatch.setitem(numerics.PORTABLE, "MKL_CBWR", "AVX2")  # portable numerics redefined: other models
    assert portable.key != before[0] and portable.base_key(20) != before[1]
    monkeypatch.undo()
    path = tmp_path / "job.json"
    path.write_text(json.dumps(job))
    with pytest.raises(SystemExit, match="portable numerics True"):  # a worker started without them
        worker(path)


def test_initial_is_a_count_or_given() -> None:
    assert parse_initial("12") == 12 and parse_initial("given") is None
    for bad in ("0", "ten"):
        with pytest.raises(ValueError, match="a positive number of images, or 'given'"):
            parse_initial(bad)


def test_campaign_key_changes_with_what_the_strategy_reads_only() -> None:
    assert _spec("taudis").key != _spec("taudis", sigma=0.9).key
    assert _spec("uncertainty").key != _spec("uncertainty", metric="margin").key
    assert _spec("random").key == _spec("random", sigma=0.9, metric="margin").key  # random reads neither
    assert _spec("coreset").key == _spec("coreset", alpha=5.0).key
    assert _spec("diversity").key != _spec("diversity", sigma=0.9).key
    assert Spec.from_json(_spec("taudis", beta=2.5).to_json()).key == _spec("taudis", beta=2.5).key
    # the ablation's base model: another extra set is another model, any variant shares it
    assert _spec("taudis").base_key(20) == _spec("random").base_key(20) != _spec("taudis").base_key(30)


def test_a_later_parameter_or_layer_at_its_default_keeps_the_recorded_keys() -> None:
    """Campaigns recorded before ``whiten`` and the embedding layer existed keep their keys (hours of
    CPU each); setting either makes a key of its own."""
    recorded = {r["key"] for r in read_csv(Path(__file__).parents[1] / "bench/results/al/campaigns.csv")}
    for strategy in ("taudis", "diversity"):
        assert _spec(strategy).key in recorded, "the committed campaigns no longer match their keys"
        assert _spec(strategy).key != _spec(strategy, whiten=True).key
    assert _spec("uncertainty").key == _spec("uncertainty", whiten=True).key  # it reads no cover option
    roi = Variant("taudis roi_features", "taudis", embedding_layer="roi_features")
    spec = Spec("synthetic", roi, 0, 3, 20, "mask_rcnn_R18_slim_cpu.yaml", "", False, dict(DEFAULT_PARAMS))
    assert spec.key.removeprefix("taudis_roi_features") != _spec("taudis").key.removeprefix("taudis")
    assert Spec.from_json(spec.to_json()).key == spec.key and spec.base_key(20) == _spec("taudis").base_key(20)


def test_labels_to_reach_interpolates_between_random_rounds() -> None:
    random = [(10, 18.0), (30, 16.0), (50, 22.0), (70, 30.0)]
    assert labels_to_reach(random, 17.0) == 10.0  # already there at the first round
    assert labels_to_reach(random, 20.0) == pytest.approx(30 + 4 / 6 * 20)  # first upward crossing
    assert labels_to_reach(random, 30.0) == 70.0
    assert labels_to_reach(random, 30.5) is None  # beyond random's last round
    assert labels_to_reach([], 1.0) is None


def _row(variant: str, seed: int, labelled: int, ap: float) -> dict[str, object]:
    row = {"dataset": "d", "variant": variant, "seed": seed, "labelled_images": labelled, "mask_ap": ap}
    return row | {"round": (labelled - 10) // 20}  # 10 initial images, 20 a round


def test_efficiency_is_per_seed_with_spread_and_marks_censored_seeds() -> None:
    curves = [
        *(_row("random", s, n, ap) for s in (0, 1) for n, ap in ((10, 10.0), (30, 20.0), (50, 30.0))),
        _row("taudis", 0, 10, 10.0), _row("taudis", 0, 30, 25.0), _row("taudis", 0, 50, 30.0),
        _row("taudis", 1, 10, 10.0), _row("taudis", 1, 30, 30.0), _row("taudis", 1, 50, 35.0),
    ]  # fmt: skip
    table = efficiency_table(curves, "d")
    assert table[0] == "| strategy | at 30 labels | at 50 labels |"
    taudis = next(line for line in table if line.startswith("| taudis"))
    # at 30: random needs 40 (seed 0) and 50 (seed 1): 1.33 and 1.67; at 50: 50 and (never) 50
    assert "1.50 ± 0.24" in taudis
    assert "≥ 1.00 ± 0.00 (1 of 2 beyond random's last round)" in taudis
    assert efficiency_table([r for r in curves if r["variant"] != "random"], "d")[0].startswith("No random")


def test_versus_pairs_taudis_with_each_baseline_on_the_seeds_both_ran() -> None:
    curves = [
        _row("taudis", 0, 30, 20.0), _row("taudis", 1, 30, 30.0), _row("taudis", 2, 30, 25.0),
        _row("random", 0, 30, 18.0), _row("random", 1, 30, 27.0), _row("random", 2, 30, 26.0),
        _row("coreset", 1, 30, 29.0),  # one seed only: compared on that seed, not on taudis's mean
    ]  # fmt: skip
    table = versus_table(curves, "d")
    assert table[0] == "| labelled | taudis (seeds) | vs random (seeds) | vs coreset (seeds) |"
    assert table[2] == "| 30 | 25.0 ± 5.0 (3) | +1.3 ± 2.1 (3) | +1.0 ± 0.0 (1) |"


def test_under_a_change_each_baseline_is_its_own_variant_if_it_reads_the_parameter_else_its_default() -> None:
    assert stand_in("uncertainty", "metric=product_rank") == "uncertainty metric=product_rank"
    assert stand_in("random", "metric=product_rank") == "random"  # reads no metric: its default campaign
    assert stand_in("coreset", "finetune sigma=0.9") == "coreset finetune"
    assert stand_in("diversity", "finetune sigma=0.9") == "diversity finetune sigma=0.9"
    curves = [
        _row("taudis metric=product_rank", 0, 30, 24.0), _row("taudis metric=product_rank", 1, 30, 26.0),
        _row("uncertainty metric=product_rank", 0, 30, 23.0), _row("uncertainty metric=product_rank", 1, 30, 27.0),
        _row("uncertainty", 0, 30, 10.0), _row("uncertainty", 1, 30, 10.0),  # not the counterpart: left out
        _row("random", 0, 30, 20.0), _row("random", 1, 30, 21.0),
        _row("taudis", 0, 30, 1.0), _row("random finetune", 0, 30, 5.0),
    ]  # fmt: skip
    assert changes(curves, "d") == ["metric=product_rank"]  # random finetune: TAUDIS never ran it
    section = change_section(curves, "d", "metric=product_rank")
    assert "| uncertainty metric=product_rank | 25.0 ± 2.8 (2) |" in section
    assert "| random | 20.5 ± 0.7 (2) |" in section
    assert "| 30 | 25.0 ± 1.4 (2) | +0.0 ± 1.4 (2) | +4.5 ± 0.7 (2) |" in section
    assert not any("uncertainty | 10.0" in line for line in section)
    assert section[0].startswith("### Every strategy with metric=product_rank (where it reads it), mask AP")
    # Portable numerics are every strategy's: each stands in with its own portable campaigns.
    assert stand_in("random", "portable") == "random portable"
    portable = [_row("taudis portable", 0, 30, 9.0), _row("random portable", 0, 30, 8.0), *curves]
    assert changes(portable, "d") == ["metric=product_rank", "portable"]
    section = change_section(portable, "d", "portable")
    assert section[0].startswith("### Every strategy with portable, mask AP")
    assert "| 30 | 9.0 ± 0.0 (1) | +1.0 ± 0.0 (1) |" in section


def test_recorded_campaigns_are_skipped_on_a_fresh_work_folder(tmp_path: Path) -> None:
    args = _parser().parse_args(
        ["run", "--seeds", "0", "1", "--variants", "taudis", "random", "--results", str(tmp_path / "r"),
         "--work", str(tmp_path / "w")]
    )  # fmt: skip
    args.dataset = ["synthetic"]
    before = jobs_for(args, "campaign")
    assert [(Spec.from_json(j["spec"]).variant.name, Spec.from_json(j["spec"]).seed) for j in before] == [
        ("taudis", 0),
        ("random", 0),
        ("taudis", 1),
        ("random", 1),
    ]
    done = Spec.from_json(before[1]["spec"])
    write_csvs({"campaigns": [{"dataset": "synthetic", "variant": "random", "seed": 0, "key": done.key}]}, args.results)
    after = jobs_for(args, "campaign")
    assert [j["spec"] for j in after] == [before[i]["spec"] for i in (0, 2, 3)]
    args.rounds = 4  # a campaign of another shape is not the one recorded
    assert len(jobs_for(args, "campaign")) == 4


def test_ablation_variants_recorded_on_another_base_model_run_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = _parser().parse_args(
        ["ablation", "--seeds", "0", "--variants", "taudis", "random", "--results", str(tmp_path / "r"),
         "--work", str(tmp_path / "w")]
    )  # fmt: skip
    args.dataset = ["synthetic"]
    here = {"ap": 15.25}  # the base model this work folder trains (another machine: other numerics)
    monkeypatch.setattr("bench.al_benchmark.__main__._base_mask_ap", lambda args, name, spec: here["ap"])
    before = jobs_for(args, "ablation")
    taudis = Spec.from_json(before[0]["spec"])
    row = {"dataset": "synthetic", "variant": "taudis", "seed": 0, "key": taudis.key, "base_mask_ap": 15.25}
    write_csvs({"ablation": [row]}, args.results)
    assert [Spec.from_json(j["spec"]).variant.name for j in jobs_for(args, "ablation")] == ["random"]
    here["ap"] = 14.5
    assert len(jobs_for(args, "ablation")) == 2
    write_csvs({"ablation": [{**row, "base_mask_ap": 14.5}]}, args.results)  # kept beside the other base's row
    assert len(read_csv(args.results / "ablation.csv")) == 2


def test_ablation_tries_every_metric_and_aggregation_that_can_change_the_batch() -> None:
    params = [(v.strategy, v.params) for v in ablation_variants()]
    tried = {m for s, p in params if s == "taudis" for m in [p.get("metric", DEFAULT_PARAMS["metric"])]}
    assert tried == set(METRICS) - set(RESCALINGS)
    for strategy in ("taudis", "uncertainty"):
        assert {p.get("aggregation", "mean") for s, p in params if s == strategy} == set(AGGREGATIONS)


def test_ablation_rows_compare_only_with_references_on_the_same_base_model() -> None:
    def row(variant: str, ap: float, base: float) -> dict[str, object]:
        return {"dataset": "d", "variant": variant, "seed": 0, "mask_ap": ap, "base_mask_ap": base,
                "labelled_images": 50}  # fmt: skip

    rows = [row("taudis", 40.0, 15.6), row("uncertainty", 39.0, 15.6), row("taudis sigma=0.9", 37.0, 15.6),
            row("uncertainty aggregation=max", 36.0, 14.4), row("taudis", 30.0, 14.4)]  # fmt: skip
    lines = ablation_table(rows, "d")
    first, second = (
        lines.index("Seed 0, base model mask AP 15.6, base + batch = 50 images:"),
        lines.index("Seed 0, base model mask AP 14.4, base + batch = 50 images:"),
    )
    assert first < second  # the base with more variants first
    assert any(line.startswith("| taudis sigma=0.9 | 37.0 ± 0.0 (1) | -3.0 | -2.0 |") for line in lines[first:second])
    mine = [line for line in lines[second:] if line.startswith("| uncertainty aggregation=max |")]
    assert mine and mine[0].startswith("| uncertainty aggregation=max | 36.0 ± 0.0 (1) | +6.0 | - |")


def test_ablation_summary_pools_each_variants_difference_over_base_models() -> None:
    def row(variant: str, ap: float, seed: int, base: float) -> dict[str, object]:
        return {"dataset": "d", "variant": variant, "seed": seed, "mask_ap": ap, "base_mask_ap": base}

    rows = [row("taudis", 40.0, 0, 15.6), row("x", 42.0, 0, 15.6), row("uncertainty", 39.0, 0, 15.6),
            row("taudis", 30.0, 1, 16.7), row("x", 29.0, 1, 16.7), row("y", 35.0, 1, 16.7),
            row("x", 50.0, 2, 14.0)]  # fmt: skip
    # the last base has no default TAUDIS row: nothing to compare x with there, so it is not pooled
    lines = ablation_summary(rows, "d")
    assert lines[2].startswith("| y | 1 | +5.0 | 1 of 1 | - |")  # largest mean first
    assert "| x | 2 | +0.5 ± 2.1 | 1 of 2 | +3.0 (1) |" in lines
    assert "| uncertainty | 1 | -1.0 | 0 of 1 | - |" in lines
    assert ablation_summary(rows[:3], "d") == []  # one base model: nothing to pool


def test_report_tables_are_spliced_into_the_page_between_its_markers(tmp_path: Path) -> None:
    report = tmp_path / "bench" / "report.md"
    report.parent.mkdir()
    report.write_text("# Title\n\nWritten by ...\n\n## cells\n\n### Curves\n\n![c](curves-cells.png)\n")
    doc = tmp_path / "docs" / "page.md"
    doc.parent.mkdir()
    doc.write_text(f"prose before\n{BEGIN}\nold tables\n{END}\nprose after\n")
    splice_into(doc, report)
    expected = (
        f"prose before\n{BEGIN}\n\n### The cells dataset\n\n#### Curves\n\n![c](../bench/curves-cells.png)\n\n{END}\n"
    )
    assert doc.read_text() == expected + "prose after\n"
    doc.write_text("no markers")
    with pytest.raises(ValueError, match=r"page\.md"):
        splice_into(doc, report)


def test_campaign_variants_are_compared_with_their_strategys_default_campaign_by_seed() -> None:
    def row(variant: str, seed: int, n: int, ap: float, seconds: float) -> dict[str, object]:
        return _row(variant, seed, n, ap) | {"train_seconds": seconds}

    curves = [
        row("random", 0, 10, 9.0, 100), row("random", 0, 30, 20.0, 300),
        row("random finetune", 0, 10, 9.0, 100), row("random finetune", 0, 30, 18.5, 50),
        row("random", 1, 10, 8.0, 100), row("random finetune", 2, 10, 7.0, 100),  # no pair: left out
        row("taudis", 1, 30, 25.0, 300), row("taudis metric=product_rank", 1, 30, 27.5, 300),
        row("taudis", 2, 30, 20.0, 300), row("taudis metric=product_rank", 2, 30, 19.5, 300),
    ]  # fmt: skip
    table = variant_table(curves, "d")
    assert table[2:] == [
        "| random finetune | 0 | 10: 9.0 → 9.0, 30: 20.0 → 18.5 | 400 → 150 | 2.67x |",
        "| taudis metric=product_rank | 1 | 30: 25.0 → 27.5 | 300 → 300 | - |",
        "| taudis metric=product_rank | 2 | 30: 20.0 → 19.5 | 300 → 300 | - |",
        "| taudis metric=product_rank | mean difference | 30: +1.0 ± 2.1 |  |  |",
    ]
    assert variant_table([r for r in curves if " " not in str(r["variant"])], "d") == []


def test_seeds_whose_campaigns_began_from_different_models_are_named() -> None:
    def start(variant: str, seed: int, ap: float, dataset: str = "d") -> dict[str, object]:
        return {"dataset": dataset, "variant": variant, "seed": seed, "round": 0, "mask_ap": ap}

    curves = [
        start("taudis", 0, 9.3378), start("random", 0, 9.3378), start("coreset", 0, 9.3378),
        start("taudis", 1, 12.3518), start("uncertainty", 1, 12.3518), start("coreset", 1, 11.3821),
        start("random finetune", 1, 3.1), start("taudis", 1, 1.0, dataset="other"),
    ]  # fmt: skip
    assert start_disagreements(curves, "d") == ["- seed 1: round-0 mask AP 12.4: taudis, uncertainty; 11.4: coreset"]
    assert start_disagreements([r for r in curves if r["seed"] == 0], "d") == []


def test_a_resumed_campaigns_wall_time_counts_the_attempt_that_was_cut_short(tmp_path: Path) -> None:
    import os

    from bench.al_benchmark.campaign import start_attempt, wall_seconds

    start_attempt(tmp_path, 1000.0)
    (tmp_path / "log.txt").write_text("iter 300/700\n")
    os.utime(tmp_path / "log.txt", (1400.0, 1400.0))  # its log, still buffered when it was killed
    (tmp_path / "kfp-root").mkdir()
    (tmp_path / "kfp-root" / "model_0000299.pth").write_bytes(b"")
    os.utime(tmp_path / "kfp-root" / "model_0000299.pth", (1600.0, 1600.0))  # its last sign of life
    start_attempt(tmp_path, 5000.0)  # the machine came back later
    assert wall_seconds(tmp_path, 5900.5) == (1500.5, 2), "600 s cut short, 900.5 s to finish; not the gap"
