"""The labelled data against the config: objects' size at its input, their number per image, overrides that fix both."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("detectron2", reason="install it with scripts/install-detectron2.sh")

from taudis.model.config import CPU_CONFIG, GPU_CONFIG, load_config
from taudis.model.fit import Limits, for_config, measure

pytestmark = pytest.mark.model
SLIM = Limits(short_edge=128, max_size=256, train_edges=(128,), train_max_size=256, detections=100, proposals=128,
              pre_nms=500, train_proposals=256, train_pre_nms=1000)  # fmt: skip


def _coco(side: float, image: tuple[int, int], objects: int = 9, images: int = 1, **extra: Any) -> dict[str, Any]:
    """``images`` images of ``image`` (height, width), each holding ``objects`` boxes of ``side`` px."""
    height, width = image
    annotations = [
        {"id": n * objects + i + 1, "image_id": n + 1, "bbox": [0, 0, side, side], **extra}
        for n in range(images)
        for i in range(objects)
    ]
    return {
        "images": [{"id": n + 1, "height": height, "width": width} for n in range(images)],
        "annotations": annotations,
    }


def test_data_that_fits_the_config_raises_no_problem() -> None:
    fit = measure(_coco(20, (128, 128)), SLIM)
    assert fit is not None and fit.median_side == 20 and fit.median_resize == 1.0 and fit.most_objects_per_image == 9
    assert fit.suggested_opts == "" and fit.problems() == []


def test_big_scenes_shrunk_to_the_cpu_input_are_named_with_a_larger_input_that_fixes_them() -> None:
    data = _coco(20, (512, 768))  # shrunk 4x at 128 px: 5 px objects against 8 px anchors
    fit = for_config(data, load_config(CPU_CONFIG))
    assert fit is not None and fit.median_side == 5.0 and fit.median_resize == 0.25
    (problem,) = fit.problems()
    assert "5.0 px across" in problem and "below the 8 px (two cells of the finest features)" in problem
    assert "INPUT.MIN_SIZE_TEST 416" in fit.size_opts and "ANCHOR" not in fit.size_opts and not fit.count_opts
    # The overrides are valid detectron2 options and bring the objects back above the anchors.
    fixed = for_config(data, load_config(CPU_CONFIG, shlex.split(fit.suggested_opts)))
    assert fixed is not None and fixed.problems() == [] and fixed.median_side >= 16


def test_objects_small_even_at_full_size_are_read_upsampled_not_with_smaller_anchors() -> None:
    data = _coco(4, (1024, 1024))
    fit = for_config(data, load_config(CPU_CONFIG))
    assert fit is not None and fit.problems()
    assert "INPUT.MIN_SIZE_TEST 4096" in fit.size_opts and "ANCHOR" not in fit.size_opts  # 4x past their size
    fixed = for_config(data, load_config(CPU_CONFIG, shlex.split(fit.suggested_opts)))
    assert fixed is not None and fixed.problems() == [] and fixed.median_side == 16
    at_input = measure(_coco(3, (128, 128)), SLIM)
    assert at_input is not None and at_input.size_opts.startswith("INPUT.MIN_SIZE_TRAIN (704,) INPUT.MIN_SIZE_TEST 704")
    # Points and lines (boxes of no area) have no size to speak of; they still count as objects.
    points = measure(_coco(0, (128, 128)), SLIM)
    assert points is not None and points.objects == 9 and points.problems() == []


def test_the_rule_is_the_objects_size_whatever_the_anchors_and_multi_scale_training_stays_so() -> None:
    """Anchors of 2 px on 3.4 px objects trained a worse model than the default's (bench/fit.py)."""
    data = _coco(3, (128, 128))
    tiny_anchors = ["MODEL.ANCHOR_GENERATOR.SIZES", "[[2],[4],[8],[16],[32]]"]
    fit = for_config(data, load_config(CPU_CONFIG, tiny_anchors))
    assert fit is not None and fit.problems()
    # The GPU config's 32 px anchors do not make 20 px objects a problem: 8 px is the rule.
    assert for_config(_coco(20, (800, 800)), load_config(GPU_CONFIG)).problems() == []  # type: ignore[union-attr]
    scenes = _coco(16, (4000, 4000))  # 3.2 px at the GPU config's 800 px input
    gpu = for_config(scenes, load_config(GPU_CONFIG))
    assert gpu is not None and gpu.problems()
    assert gpu.size_opts.startswith("INPUT.MIN_SIZE_TRAIN (3200,3360,3520,3680,3840,4000,) INPUT.MIN_SIZE_TEST 4000")
    fixed = for_config(scenes, load_config(GPU_CONFIG, shlex.split(gpu.size_opts)))
    assert fixed is not None and fixed.problems() == [] and fixed.median_side == 16


def test_images_fuller_than_the_detection_limits_get_limits_that_keep_every_object() -> None:
    data = _coco(40, (512, 512), objects=300, images=2)
    fit = for_config(data, load_config(GPU_CONFIG))  # 100 detections from 1,000 proposals
    assert fit is not None and fit.most_objects_per_image == 300 and fit.images_over_the_cap == 2
    (problem,) = fit.problems()
    assert "up to 300" in problem and "room for: 100, of 100 detections from 1000 proposals" in problem
    assert fit.count_opts == (
        "TEST.DETECTIONS_PER_IMAGE 450 MODEL.RPN.POST_NMS_TOPK_TEST 1000 MODEL.RPN.PRE_NMS_TOPK_TEST 1000 "
        "MODEL.RPN.POST_NMS_TOPK_TRAIN 1000 MODEL.RPN.PRE_NMS_TOPK_TRAIN 2000"
    )
    fixed = for_config(data, load_config(GPU_CONFIG, shlex.split(fit.suggested_opts)))
    assert fixed is not None and fixed.problems() == []
    # The slim config keeps 128 proposals: room for 64 objects, two proposals each.
    slim = measure(_coco(20, (128, 128), objects=65), SLIM)
    assert slim is not None and slim.count_opts.startswith(
        "TEST.DETECTIONS_PER_IMAGE 100 MODEL.RPN.POST_NMS_TOPK_TEST 200"
    )
    assert measure(_coco(20, (128, 128), objects=64), SLIM).problems() == []  # type: ignore[union-attr]


def test_the_gpu_config_reads_small_tiles_upscaled() -> None:
    fit = for_config(_coco(14, (128, 128)), load_config(GPU_CONFIG))  # 800 px input: 6.25x
    assert fit is not None and fit.median_resize == 6.25 and fit.problems() == []


def test_crowd_regions_boxless_records_and_empty_datasets_are_not_measured() -> None:
    crowd = _coco(2, (128, 128), iscrowd=1)
    crowd["annotations"] += [{"id": 99, "image_id": 1, "bbox": [0, 0, 30, 30]}, {"id": 100, "image_id": 1}]
    fit = measure(crowd, SLIM)
    assert fit is not None and fit.objects == 1 and fit.problems() == []
    assert measure(_coco(20, (128, 128), objects=0), SLIM) is None


def test_data_check_with_a_config_warns_and_still_passes_valid_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from taudis.data.cli import main

    scenes = _coco(20, (512, 512))
    scenes["images"][0]["file_name"] = "scene.png"
    scenes["annotations"] = [
        {**a, "category_id": 1, "area": 400.0, "iscrowd": 0, "segmentation": [[0, 0, 20, 0, 20, 20, 0, 20]]}
        for a in scenes["annotations"]
    ]
    scenes["categories"] = [{"id": 1, "name": "building"}]
    path = tmp_path / "pool.json"
    path.write_text(json.dumps(scenes))
    assert main(["check", "--annotations", str(path), "--config", "mask_rcnn_R18_slim_cpu.yaml"]) == 0
    out, err = capsys.readouterr()
    assert "taudis data check: warning: the median object is 5.0 px across" in err
    assert json.loads(out)["fit"]["size_opts"].startswith("INPUT.MIN_SIZE_TRAIN (416,)")
    fixed = ["check", "--annotations", str(path), "--config", "mask_rcnn_R18_slim_cpu.yaml",
             "--train-opts", json.loads(out)["fit"]["size_opts"]]  # fmt: skip
    assert main(fixed) == 0 and "warning" not in capsys.readouterr().err
    bad = [
        "check",
        "--annotations",
        str(path),
        "--config",
        "mask_rcnn_R18_slim_cpu.yaml",
        "--train-opts",
        "INPUT.NOPE 1",
    ]
    assert main(bad) == 2 and "taudis data check: --config mask_rcnn_R18_slim_cpu.yaml" in capsys.readouterr().err
    unlabelled = tmp_path / "unlabelled.json"  # a pool of images only: valid, nothing to measure
    unlabelled.write_text(json.dumps({"images": scenes["images"], "categories": scenes["categories"]}))
    assert main(["check", "--annotations", str(unlabelled), "--config", "mask_rcnn_R18_slim_cpu.yaml"]) == 0
    assert json.loads(capsys.readouterr().out)["fit"] is None


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    """The tiny synthetic dataset's labelled set and its image root."""
    from model_fixtures import make_tiny_dataset

    root = tmp_path_factory.mktemp("tiny")
    make_tiny_dataset(root)
    return json.loads((root / "annotations" / "train.json").read_text()), root / "images"


def _crowd(data: dict[str, Any], *positions: int) -> dict[str, Any]:
    annotations = [{**a, "iscrowd": 1} if n in positions else a for n, a in enumerate(data["annotations"])]
    return {**data, "annotations": annotations}


@pytest.mark.parametrize(
    ("edit", "why"),
    [
        (lambda d: _crowd(d, *range(len(d["annotations"]))), "annotations are iscrowd=1 (crowd regions)"),
        (lambda d: {**d, "annotations": []}, "no annotations: no object to train on"),
        (lambda d: {k: v for k, v in d.items() if k != "annotations"}, "no annotations: no object to train on"),
        (lambda d: {**d, "annotations": [], "categories": []}, "no categories"),
    ],
)
def test_training_refuses_a_dataset_without_an_object_to_learn_before_any_iteration(
    tiny: tuple[dict[str, Any], Path], tmp_path: Path, edit: Any, why: str
) -> None:
    from model_fixtures import tiny_opts

    from taudis.model.train import train_model

    data, images = tiny
    path = tmp_path / "labelled.json"
    path.write_text(json.dumps(edit(data)))

    def never(iteration: int) -> None:
        raise AssertionError(f"iteration {iteration} ran")

    with pytest.raises(ValueError, match=f"{re.escape(str(path))}: .*{re.escape(why)}") as caught:
        train_model(str(path), str(images), str(tmp_path / "model"), opts=tiny_opts(2), on_iteration=never)
    if "crowd" in why:
        assert f"all {len(data['annotations'])} annotations" in str(caught.value) and "set iscrowd 0" in str(
            caught.value
        )
    assert not (tmp_path / "model" / "config.yaml").exists()
    from taudis.model.train import main

    argv = ["--annotations", str(path), "--images", str(images), "--out", str(tmp_path / "cli"), *tiny_opts(2)]
    assert main(argv) == 1  # said, no traceback


def test_training_counts_the_instances_it_trains_on_not_the_crowd_regions(
    tiny: tuple[dict[str, Any], Path], tmp_path: Path
) -> None:
    from model_fixtures import tiny_opts

    from taudis.model.train import train_model

    data, images = tiny
    path = tmp_path / "labelled.json"
    path.write_text(json.dumps(_crowd(data, 0, 1)))
    metrics = train_model(str(path), str(images), str(tmp_path / "model"), opts=tiny_opts(1))
    assert metrics["num_instances"] == len(data["annotations"]) - 2 == metrics["data_fit"]["objects"]
