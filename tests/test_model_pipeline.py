"""detectron2 smoke tests on CPU: train a few iterations on tiny synthetic tiles, infer, evaluate, resume."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("detectron2", reason="install it with scripts/install-detectron2.sh")
torch = pytest.importorskip("torch")

from model_fixtures import make_tiny_dataset, tiny_opts, write_coco_for_files, write_odd_images  # noqa: E402

from taudis.campaign.steps import training_warnings  # noqa: E402
from taudis.data.coco import load_coco, read_coco_json  # noqa: E402
from taudis.data.instances import read_shard, validate_shard  # noqa: E402
from taudis.model.evaluate import evaluate_model, evaluate_predictions  # noqa: E402
from taudis.model.infer import infer_instances, load_model, model_id_of, shard_images, shard_name  # noqa: E402
from taudis.model.train import train_model  # noqa: E402

pytestmark = pytest.mark.model
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny")
    make_tiny_dataset(root)
    return root


@pytest.fixture(scope="module")
def trained(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("model")
    metrics = train_model(
        str(dataset / "annotations/train.json"), str(dataset / "images"), str(out), opts=tiny_opts(4), seed=1
    )
    return out, metrics


def test_training_writes_model_config_and_metrics(trained: tuple[Path, dict[str, Any]]) -> None:
    out, metrics = trained
    assert metrics["iterations"] == 4 and metrics["start_iter"] == 0 and metrics["num_images"] == 6
    assert metrics["class_names"] == ["car", "tree", "building", "pool"]
    assert all(np.isfinite(v) for v in metrics["losses"].values())
    assert {"loss_cls", "loss_mask", "loss_box_reg", "loss_rpn_cls"} <= set(metrics["losses"])
    assert json.loads((out / "metrics.json").read_text())["iterations"] == 4
    assert (out / "last_checkpoint").read_text().strip() == "model_final.pth"
    assert "TaudisROIHeads" not in (out / "config.yaml").read_text()
    # A checkpoint is plain tensors and numbers: it loads under weights_only.
    state = torch.load(out / "model_final.pth", map_location="cpu", weights_only=True)
    assert state["iteration"] == 3 and "roi_heads.mask_head.predictor.weight" in state["model"]
    assert not list(out.glob("model_0*.pth")), "periodic checkpoints are removed once training is complete"
    fit = metrics["data_fit"]  # 64 px tiles at a 64 px input: every object, as labelled
    assert fit["median_resize"] == 1.0 and fit["objects"] == metrics["num_instances"]


def test_training_warns_when_the_input_shrinks_the_objects_below_the_anchors(
    dataset: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    opts = [*tiny_opts(1), "INPUT.MIN_SIZE_TEST", "16", "INPUT.MAX_SIZE_TEST", "32"]
    with caplog.at_level("WARNING", logger="taudis.model.train"):
        metrics = train_model(
            str(dataset / "annotations/train.json"), str(dataset / "images"), str(tmp_path), opts=opts
        )
    assert metrics["data_fit"]["median_resize"] == 0.25 and "INPUT.MIN_SIZE_TEST" in metrics["data_fit"]["size_opts"]
    (warning,) = [r.getMessage() for r in caplog.records if "features) it needs" in r.getMessage()]
    # The round's evaluation takes the same words from the model into its metrics and report.
    assert [f"{dataset / 'annotations/train.json'}: {w}" for w in training_warnings(str(tmp_path))] == [warning]
    assert training_warnings(str(tmp_path / "no-model")) == []
    assert warning.startswith(str(dataset / "annotations/train.json")) and "try the config overrides" in warning


def test_training_refuses_a_missing_image_before_its_first_iteration(dataset: Path, tmp_path: Path) -> None:
    data = load_coco(dataset / "annotations/train.json")
    data["images"][-1]["file_name"] = "gone.png"
    (tmp_path / "train.json").write_text(json.dumps(data))
    seen: list[int] = []
    with pytest.raises(FileNotFoundError, match=r"1 of its \d+ images are not under .*'.*gone\.png'"):
        train_model(
            str(tmp_path / "train.json"), str(dataset / "images"), str(tmp_path / "m"), opts=tiny_opts(4),
            on_iteration=seen.append,
        )  # fmt: skip
    assert seen == [], "not one iteration spent"


def test_training_resumes_after_an_interruption(dataset: Path, tmp_path: Path) -> None:
    class Interrupted(Exception):
        pass

    def stop_at_4(iteration: int) -> None:
        if iteration == 4:
            raise Interrupted

    args = (str(dataset / "annotations/train.json"), str(dataset / "images"), str(tmp_path))
    with pytest.raises(Interrupted):
        train_model(*args, opts=tiny_opts(6, checkpoint_period=2), on_iteration=stop_at_4)
    assert (tmp_path / "last_checkpoint").read_text().strip() == "model_0000003.pth"
    assert not (tmp_path / "metrics.json").exists()
    seen: list[int] = []
    metrics = train_model(*args, opts=tiny_opts(6, checkpoint_period=2), on_iteration=seen.append)
    assert seen == [4, 5], "training continues after the last checkpoint, not from zero"
    assert metrics["start_iter"] == 4 and metrics["iterations"] == 6 and metrics["iterations_run"] == 2
    assert torch.load(tmp_path / "model_final.pth", weights_only=True)["iteration"] == 5
    # A finished run is not trained again.
    again = train_model(*args, opts=tiny_opts(6, checkpoint_period=2), on_iteration=seen.append)
    assert seen == [4, 5] and again["start_iter"] == 4


def test_a_round_whose_previous_model_is_gone_trains_the_full_schedule_and_says_why(
    dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from taudis.campaign import steps

    note = "not fine-tuned: round 0's model is gone"
    monkeypatch.setattr(steps, "finetune_weights", lambda campaign, round_index: ("", note))
    metrics = steps.train_round(
        str(dataset / "annotations/train.json"), str(dataset / "images"), str(tmp_path / "model"),
        config="mask_rcnn_R18_slim_cpu.yaml", opts=tiny_opts(4), campaign_uri=str(tmp_path / "c"), round_index=1,
        finetune=True,
    )  # fmt: skip
    assert metrics["notes"] == [note] and metrics["iterations"] == 4, "the full schedule, not fine-tuning's half"
    assert training_warnings(str(tmp_path / "model"))[-1] == note, "the round's metrics and reports show it"


def test_fine_tuning_trains_its_own_schedule_from_the_given_weights(
    trained: tuple[Path, dict[str, Any]], dataset: Path, tmp_path: Path
) -> None:
    model_dir, _ = trained
    seen: list[int] = []
    args = (str(dataset / "annotations/train.json"), str(dataset / "images"), str(tmp_path))
    tuned = train_model(
        *args, opts=tiny_opts(4), weights=str(model_dir / "model_final.pth"), finetune=True, on_iteration=seen.append
    )
    # The initial weights were trained to iteration 3: that is not where fine-tuning starts.
    assert seen == [0, 1] and tuned["start_iter"] == 0 and tuned["iterations"] == tuned["iterations_run"] == 2
    before = torch.load(model_dir / "model_final.pth", weights_only=True)["model"]
    after = torch.load(tmp_path / "model_final.pth", weights_only=True)
    assert after["iteration"] == 1
    stem = "backbone.bottom_up.stem.conv1.weight"
    change = torch.linalg.vector_norm(after["model"][stem] - before[stem])
    # Started from the given weights, not from a new initialisation: two clipped steps move them a little.
    assert 0 < change < 0.1 * torch.linalg.vector_norm(before[stem])


COLLAPSE_ALWAYS = ["TAUDIS.COLLAPSE.MAX_CLS_LOSS_RATIO", "1e-9", "TAUDIS.COLLAPSE.MIN_ITERS", "0"]


def test_a_collapsed_run_is_trained_again_with_another_seed(
    dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import taudis.model.train as train

    judged = train.collapse_reason
    # The first attempt (seed 1) is judged collapsed by a threshold every run reaches, the rest normally.
    monkeypatch.setattr(train, "collapse_reason", lambda m, ratio, n: judged(m, 1e-9 if m["seed"] == 1 else ratio, n))
    seen: list[int] = []
    args = (str(dataset / "annotations/train.json"), str(dataset / "images"), str(tmp_path))
    metrics = train_model(
        *args, opts=[*tiny_opts(4), "TAUDIS.COLLAPSE.MIN_ITERS", "0"], seed=1, on_iteration=seen.append
    )
    assert seen == [0, 1, 2, 3, 0, 1, 2, 3], "the second attempt starts from scratch, not from the first's checkpoint"
    assert metrics["seed"] == 1 + train.RETRY_SEED_STEP and metrics["start_iter"] == 0
    assert [c["seed"] for c in metrics["collapsed_attempts"]] == [1]
    assert "box classification loss" in metrics["collapsed_attempts"][0]["reason"]
    assert json.loads((tmp_path / "metrics.json").read_text())["collapsed_attempts"] == metrics["collapsed_attempts"]
    assert f"SEED: {1 + train.RETRY_SEED_STEP}" in (tmp_path / "config.yaml").read_text()


def test_training_that_always_collapses_fails_and_leaves_no_model(dataset: Path, tmp_path: Path) -> None:
    from taudis.model.collapse import TrainingCollapsedError

    args = (str(dataset / "annotations/train.json"), str(dataset / "images"), str(tmp_path))
    opts = [*tiny_opts(4), *COLLAPSE_ALWAYS, "TAUDIS.COLLAPSE.RETRIES", "1"]
    with pytest.raises(TrainingCollapsedError, match=r"all 2 attempts \(seeds 0, 1000\).*SOLVER.BASE_LR"):
        train_model(*args, opts=opts)
    assert not (tmp_path / "model_final.pth").exists() and not (tmp_path / "metrics.json").exists()
    # Fine-tuned runs start with a low loss: they are not judged.
    first = train_model(*args, opts=tiny_opts(4))
    tuned = train_model(*args[:2], str(tmp_path / "tuned"), opts=opts, weights=str(tmp_path / "model_final.pth"))
    assert first["collapsed_attempts"] == [] and tuned["collapsed_attempts"] == []


def test_inference_shard_invariants(trained: tuple[Path, dict[str, Any]], dataset: Path, tmp_path: Path) -> None:
    model_dir, _ = trained
    pool = dataset / "annotations/pool.json"
    path = infer_instances(str(model_dir), str(pool), str(dataset / "images"), str(tmp_path), batch_size=4)
    assert path == tmp_path / shard_name(0, 1)
    shard = read_shard(path)
    validate_shard(shard)
    assert sorted(shard.image_ids.tolist()) == sorted(img["id"] for img in load_coco(pool)["images"])
    assert shard.num_instances > 0, "an untrained model at threshold 0.05 still detects things"
    probs = np.asarray(shard.class_probs, dtype=np.float64)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert (np.asarray(shard.classes) < probs.shape[1] - 1).all(), "background is never a predicted class"
    assert np.asarray(shard.scores).min() > 0.05, "every kept detection beats the score threshold"
    np.testing.assert_allclose(np.linalg.norm(np.asarray(shard.embeddings, np.float64), axis=1), 1.0, atol=1e-4)
    masks = np.asarray(shard.mask_probs, dtype=np.float32)
    assert masks.shape[1:] == (28, 28) and masks.min() >= 0 and masks.max() <= 1
    assert len(np.unique(masks.round(2))) > 2, "mask probabilities are unthresholded"
    boxes = np.asarray(shard.boxes)
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= 64).all() and (boxes[:, 3] <= 64).all()
    assert shard.model_id == model_id_of(model_dir) and shard.model_id.startswith("sha256:")
    assert shard.header["embedding_dim"] == 64 and shard.failed_images == []


def test_roi_feature_embeddings_are_the_mask_heads_input(
    trained: tuple[Path, dict[str, Any]], dataset: Path, tmp_path: Path
) -> None:
    """TAUDIS.EMBEDDING_LAYER roi_features: the same detections, embedded by the features the mask head reads."""
    from taudis.model.infer import iter_batches, pool_images

    model_dir, _ = trained
    pool, images = str(dataset / "annotations/pool.json"), str(dataset / "images")
    default = read_shard(infer_instances(str(model_dir), pool, images, str(tmp_path / "mask_head")))
    roi = read_shard(
        infer_instances(str(model_dir), pool, images, str(tmp_path / "roi"), embedding_layer="roi_features")
    )
    validate_shard(roi)
    for column in ("instance_image", "classes", "boxes", "class_probs", "mask_probs"):
        np.testing.assert_array_equal(np.asarray(getattr(roi, column)), np.asarray(getattr(default, column)))
    assert [s.header["extra"]["embedding_layer"] for s in (default, roi)] == ["mask_head", "roi_features"]
    ours, theirs = np.asarray(roi.embeddings, np.float64), np.asarray(default.embeddings, np.float64)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-4)
    assert theirs.min() >= 0 > ours.min()  # post-ReLU against FPN features of both signs
    # by hand: the mask pooler's output on the detections' boxes, averaged over space and normalised
    model, cfg = load_model(model_dir, opts=["TAUDIS.EMBEDDING_LAYER", "roi_features"])
    pooled: list[Any] = []
    model.roi_heads.mask_pooler.register_forward_hook(lambda _m, _i, out: pooled.append(out.mean(dim=(2, 3))))
    batch = next(iter_batches(pool_images(pool)[:1], images, cfg, 1, []))
    with torch.inference_mode():
        (instances,) = model.inference(batch.inputs, do_postprocess=False)
    assert len(instances) > 0 and model.roi_heads.embedding_dim() == instances.pred_embeddings.shape[1]
    by_hand = torch.nn.functional.normalize(pooled[0], dim=1)
    np.testing.assert_allclose(instances.pred_embeddings.numpy(), by_hand.numpy(), atol=1e-6)
    with pytest.raises(ValueError, match=r"TAUDIS\.EMBEDDING_LAYER 'box' is not one of mask_head, roi_features"):
        load_model(model_dir, opts=["TAUDIS.EMBEDDING_LAYER", "box"])
    # set at training (a pipeline's train_opts), the model's config carries it to every inference
    layered = tmp_path / "layered"
    opts = [*tiny_opts(2), "TAUDIS.EMBEDDING_LAYER", "roi_features"]
    train_model(str(dataset / "annotations/train.json"), images, str(layered), opts=opts, seed=1)
    shard = read_shard(infer_instances(str(layered), pool, images, str(tmp_path / "from-config")))
    assert shard.header["extra"]["embedding_layer"] == "roi_features"


def test_inference_rows_match_the_plain_predictor(
    trained: tuple[Path, dict[str, Any]], dataset: Path, tmp_path: Path
) -> None:
    from detectron2.data.detection_utils import read_image
    from detectron2.engine import DefaultPredictor

    from taudis.model.config import model_config

    model_dir, _ = trained
    pool = load_coco(dataset / "annotations/pool.json")
    shard = read_shard(
        infer_instances(
            str(model_dir), str(dataset / "annotations/pool.json"), str(dataset / "images"), str(tmp_path), batch_size=1
        )
    )
    cfg = model_config(model_dir)
    predictor = DefaultPredictor(cfg)
    for image in pool["images"]:
        plain = predictor(read_image(str(dataset / "images" / image["file_name"]), format="BGR"))["instances"]
        rows = np.flatnonzero(np.asarray(shard.instance_image) == image["id"])
        assert len(rows) == len(plain), f"image {image['id']}: one shard row per plain detection"
        np.testing.assert_array_equal(np.asarray(shard.classes)[rows], plain.pred_classes.numpy())
        np.testing.assert_allclose(np.asarray(shard.boxes)[rows], plain.pred_boxes.tensor.numpy(), atol=1e-3)
        np.testing.assert_allclose(np.asarray(shard.scores)[rows], plain.scores.numpy(), atol=1e-5)
        np.testing.assert_array_equal(np.asarray(shard.instance_index)[rows], np.arange(len(rows)))


def test_inference_records_unreadable_images_and_reads_odd_modes(
    trained: tuple[Path, dict[str, Any]], dataset: Path, tmp_path: Path
) -> None:
    model_dir, _ = trained
    like = next((dataset / "images").glob("*.png"))
    files = write_odd_images(tmp_path / "odd", like)
    coco = write_coco_for_files(tmp_path / "odd.json", {name: info["size"] for name, info in files.items()})
    shard = read_shard(infer_instances(str(model_dir), str(coco), str(tmp_path / "odd"), str(tmp_path / "out")))
    ids = {img["file_name"]: img["id"] for img in read_coco_json(coco)["images"]}
    failed = {f["file"]: f for f in shard.failed_images}
    assert set(failed) == {name for name, info in files.items() if not info["ok"]}
    for name, entry in failed.items():
        assert entry["image_id"] == str(ids[name]) and name in entry["error"]
    readable = {ids[name]: info["size"] for name, info in files.items() if info["ok"]}
    assert sorted(shard.image_ids.tolist()) == sorted(readable)
    for image_id, size in zip(shard.image_ids.tolist(), shard.image_sizes.tolist(), strict=True):
        assert tuple(size) == readable[image_id]
    large = ids["large.jpg"]
    rows = np.asarray(shard.instance_image) == large
    h, w = files["large.jpg"]["size"]
    assert (np.asarray(shard.boxes)[rows][:, 2] <= w).all() and (np.asarray(shard.boxes)[rows][:, 3] <= h).all()


def test_existing_shard_is_skipped_and_shards_partition_images(
    trained: tuple[Path, dict[str, Any]], dataset: Path, tmp_path: Path
) -> None:
    model_dir, _ = trained
    args = (str(model_dir), str(dataset / "annotations/pool.json"), str(dataset / "images"), str(tmp_path))
    first = infer_instances(*args, shard=1, num_shards=2)
    stamp = (first / "header.json").stat().st_mtime_ns
    assert infer_instances(*args, shard=1, num_shards=2) == first
    assert (first / "header.json").stat().st_mtime_ns == stamp, "a complete shard is not recomputed"
    images = load_coco(dataset / "annotations/pool.json")["images"]
    parts = [shard_images(images, s, 3) for s in range(3)]
    assert sorted(r["id"] for p in parts for r in p) == sorted(r["id"] for r in images)
    with pytest.raises(ValueError, match="shard"):
        shard_images(images, 3, 3)


def test_evaluation_of_ground_truth_is_perfect(dataset: Path) -> None:
    gt = load_coco(dataset / "annotations/val.json")
    as_predictions = [
        {
            "image_id": a["image_id"],
            "category_id": a["category_id"],
            "bbox": a["bbox"],
            "score": 1.0,
            "segmentation": a["segmentation"],
        }
        for a in gt["annotations"]
    ]
    report = evaluate_predictions(gt, as_predictions)
    for iou_type in ("segm", "bbox"):
        assert report[iou_type]["AP"] == pytest.approx(100.0)
        present = {c["name"] for c in gt["categories"] if any(a["category_id"] == c["id"] for a in gt["annotations"])}
        for name, ap in report[iou_type]["per_class"].items():
            assert (ap == pytest.approx(100.0)) if name in present else ap is None
    # Dropping one class's predictions drops that class to 0 and the mean below 100.
    dropped = gt["annotations"][0]["category_id"]
    partial = evaluate_predictions(gt, [p for p in as_predictions if p["category_id"] != dropped])
    name = {c["id"]: c["name"] for c in gt["categories"]}[dropped]
    assert partial["segm"]["per_class"][name] == 0.0 and partial["segm"]["AP"] < 100.0
    assert evaluate_predictions(gt, [])["segm"]["AP"] == 0.0


def test_evaluate_model_reports_ap_and_writes_only_when_asked(
    trained: tuple[Path, dict[str, Any]], dataset: Path, tmp_path: Path
) -> None:
    model_dir, _ = trained
    before = sorted(os.listdir(model_dir))
    report = evaluate_model(str(model_dir), str(dataset / "annotations/val.json"), str(dataset / "images"))
    assert sorted(os.listdir(model_dir)) == before
    for iou_type in ("segm", "bbox"):
        assert 0.0 <= report[iou_type]["AP"] <= 100.0
        assert set(report[iou_type]["per_class"]) == {"car", "tree", "building", "pool"}
    out = tmp_path / "metrics.json"
    evaluate_model(str(model_dir), str(dataset / "annotations/val.json"), str(dataset / "images"), out=str(out))
    assert json.loads(out.read_text())["segm"]["AP"] == report["segm"]["AP"]


def test_taudis_heads_load_the_same_weights(trained: tuple[Path, dict[str, Any]]) -> None:
    model_dir, _ = trained
    taudis_model, cfg = load_model(model_dir)
    plain_model, _ = load_model(model_dir, taudis_heads=False)
    assert type(taudis_model.roi_heads).__name__ == "TaudisROIHeads" and cfg.MODEL.ROI_HEADS.NAME == "TaudisROIHeads"
    a, b = taudis_model.state_dict(), plain_model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_cli_commands(trained: tuple[Path, dict[str, Any]], dataset: Path, tmp_path: Path) -> None:
    from taudis.cli import main

    model_dir, _ = trained
    images, pool, val = (
        str(dataset / "images"),
        str(dataset / "annotations/pool.json"),
        str(dataset / "annotations/val.json"),
    )
    assert (
        main(
            [
                "infer",
                "--model",
                str(model_dir),
                "--annotations",
                pool,
                "--images",
                images,
                "--out",
                str(tmp_path),
                "--shard",
                "0",
                "--num-shards",
                "2",
            ]
        )
        == 0
    )
    expected = [img["id"] for img in shard_images(load_coco(pool)["images"], 0, 2)]
    assert read_shard(tmp_path / shard_name(0, 2)).image_ids.tolist() == expected
    assert (
        main(
            [
                "evaluate",
                "--model",
                str(model_dir),
                "--annotations",
                val,
                "--images",
                images,
                "--out",
                str(tmp_path / "eval.json"),
            ]
        )
        == 0
    )
    assert "segm" in json.loads((tmp_path / "eval.json").read_text())
    out = tmp_path / "cli-model"
    assert (
        main(
            [
                "train",
                "--annotations",
                str(dataset / "annotations/train.json"),
                "--images",
                images,
                "--out",
                str(out),
                *tiny_opts(2),
            ]
        )
        == 0
    )
    assert json.loads((out / "metrics.json").read_text())["iterations"] == 2


def test_images_without_detections_are_listed_with_zero_instances(
    trained: tuple[Path, dict[str, Any]], dataset: Path, tmp_path: Path
) -> None:
    model_dir, _ = trained
    pool = dataset / "annotations/pool.json"
    # No probability exceeds 1: nothing is detected anywhere.
    shard = read_shard(
        infer_instances(str(model_dir), str(pool), str(dataset / "images"), str(tmp_path), score_threshold=1.0)
    )
    assert shard.num_instances == 0 and shard.class_probs.shape == (0, 5) and shard.mask_probs.shape == (0, 28, 28)
    assert sorted(shard.image_ids.tolist()) == sorted(img["id"] for img in load_coco(pool)["images"])
    assert shard.header["extra"]["score_threshold"] == 1.0


def test_a_batch_holds_images_of_one_input_size_and_a_record_of_another_size_fails(tmp_path: Path) -> None:
    """detectron2 pads a batch to its largest image, which changes a smaller image's detections: in
    a pool of mixed sizes an image's predictions would depend on its neighbours."""
    from types import SimpleNamespace

    from PIL import Image

    from taudis.model.infer import iter_batches

    sizes = [(40, 40), (40, 40), (60, 30), (40, 40), (40, 40), (40, 40), (30, 60)]  # (width, height)
    records = []
    for i, (w, h) in enumerate(sizes):
        Image.new("RGB", (w, h), (i * 20, 0, 0)).save(tmp_path / f"{i}.png")
        records.append({"id": i, "file_name": f"{i}.png", "width": w, "height": h})
    records[4] = {**records[4], "width": 44}  # the record of a file replaced, or turned by its EXIF orientation
    cfg = SimpleNamespace(INPUT=SimpleNamespace(MIN_SIZE_TEST=32, MAX_SIZE_TEST=64, FORMAT="BGR"))
    failed: list[dict[str, str]] = []
    batches = list(iter_batches(records, str(tmp_path), cfg, 4, failed))
    assert [b.image_ids for b in batches] == [[0, 1], [2], [3, 5], [6]]  # in order, never two sizes in one
    for batch in batches:
        assert len({tuple(i["image"].shape) for i in batch.inputs}) == 1
    (bad,) = failed
    assert bad["image_id"] == "4" and "40x40 as displayed" in bad["error"] and "says 44x40" in bad["error"]


def test_evaluate_and_infer_name_bad_input_in_one_line(
    trained: tuple[Path, dict[str, Any]], dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from taudis.model.evaluate import main as evaluate_main
    from taudis.model.infer import main as infer_main

    model_dir, _ = trained
    val = json.loads((dataset / "annotations/val.json").read_text())
    subset = tmp_path / "val-subset.json"  # a val file that lists only the categories it uses
    subset.write_text(json.dumps({**val, "categories": val["categories"][:1], "annotations": []}))
    images = str(dataset / "images")
    assert evaluate_main(["--model", str(model_dir), "--annotations", str(subset), "--images", images]) == 1
    err = capsys.readouterr().err
    assert "val-subset.json: the model was trained on categories" in err and "those without examples too" in err
    assert "Traceback" not in err
    missing = ["--model", str(tmp_path / "no-model"), "--annotations", str(dataset / "annotations/val.json")]
    assert evaluate_main([*missing, "--images", images]) == 1
    assert "is not a trained model directory" in capsys.readouterr().err
    args = ["--model", str(model_dir), "--annotations", str(tmp_path / "none.json"), "--images", images]
    assert infer_main([*args, "--out", str(tmp_path / "shards")]) == 1
    assert "none.json: cannot read" in capsys.readouterr().err


def test_training_refuses_an_image_whose_size_is_not_its_records_before_the_first_iteration(
    dataset: Path, tmp_path: Path
) -> None:
    import shutil

    from PIL import Image

    from taudis.data.coco import CocoFormatError

    train = json.loads((dataset / "annotations/train.json").read_text())
    images = tmp_path / "images"
    shutil.copytree(dataset / "images", images)
    replaced = train["images"][1]
    with Image.open(images / replaced["file_name"]) as original:  # a file replaced by one of another size
        original.resize((replaced["width"] + 8, replaced["height"])).save(images / replaced["file_name"])
    with pytest.raises(CocoFormatError, match=rf"image id {replaced['id']}, field 'width'.*as displayed"):
        train_model(str(dataset / "annotations/train.json"), str(images), str(tmp_path / "model"), opts=tiny_opts(2))
    assert not (tmp_path / "model" / "model_final.pth").exists()
