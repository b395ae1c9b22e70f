"""Configs: the YAML files load with their TAUDIS keys, build, and the schedule grows with the labelled set."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("detectron2", reason="install it with scripts/install-detectron2.sh")

from taudis.model.config import (
    CONFIG_DIR,
    CPU_CONFIG,
    GPU_CONFIG,
    load_config,
    model_config,
    resolve_config_path,
    scheduled_iterations,
)

pytestmark = pytest.mark.model


def test_cpu_config_is_the_slim_r18() -> None:
    cfg = load_config(CPU_CONFIG)
    assert cfg.MODEL.RESNETS.DEPTH == 18 and cfg.MODEL.ROI_MASK_HEAD.NUM_CONV == 2
    assert cfg.MODEL.WEIGHTS == "" and cfg.INPUT.MIN_SIZE_TEST == 128
    assert cfg.MODEL.ROI_HEADS.NAME == "StandardROIHeads" and cfg.TAUDIS.SCHEDULE.ENABLED
    assert cfg.MODEL.DEVICE in ("cpu", "cuda")


def test_gpu_config_is_the_standard_r50_fpn_and_builds() -> None:
    import torch
    from detectron2.modeling import build_model

    cfg = load_config(GPU_CONFIG, ["TAUDIS.DEVICE", "cpu", "MODEL.ROI_HEADS.NUM_CLASSES", "3"])
    assert cfg.MODEL.RESNETS.DEPTH == 50 and cfg.MODEL.ROI_MASK_HEAD.NUM_CONV == 4 and cfg.MODEL.WEIGHTS == ""
    torch.set_num_threads(1)
    model = build_model(cfg)
    assert model.roi_heads.mask_head.predictor.out_channels == 3


def test_schedule_grows_with_the_labelled_set_within_bounds() -> None:
    schedule = {"ITERS_PER_IMAGE": "5.0", "MIN_ITERS": "50", "MAX_ITERS": "300"}
    cfg = load_config(CPU_CONFIG, [x for k, v in schedule.items() for x in (f"TAUDIS.SCHEDULE.{k}", v)])
    assert [scheduled_iterations(cfg, n) for n in (1, 10, 20, 60, 1000)] == [50, 50, 100, 300, 300]
    fixed = load_config(CPU_CONFIG, ["TAUDIS.SCHEDULE.ENABLED", "False", "SOLVER.MAX_ITER", "77"])
    assert scheduled_iterations(fixed, 1000) == 77
    assert scheduled_iterations(load_config(CPU_CONFIG, ["SOLVER.MAX_ITER", "7"]), 1000) == 7  # what was asked for
    kept = load_config(CPU_CONFIG, ["SOLVER.MAX_ITER", "7", "TAUDIS.SCHEDULE.ENABLED", "True"])
    assert scheduled_iterations(kept, 1000) == round(float(kept.TAUDIS.SCHEDULE.ITERS_PER_IMAGE) * 1000) != 7


def test_bare_names_opts_and_errors(tmp_path: Path) -> None:
    assert resolve_config_path("mask_rcnn_R18_slim_cpu.yaml") == CONFIG_DIR / "mask_rcnn_R18_slim_cpu.yaml"
    assert load_config("mask_rcnn_R18_slim_cpu.yaml", ["SOLVER.BASE_LR", "0.5"]).SOLVER.BASE_LR == 0.5
    with pytest.raises(FileNotFoundError, match=r"nope\.yaml"):
        load_config("nope.yaml")
    with pytest.raises(ValueError, match="KEY VALUE"):
        load_config(CPU_CONFIG, ["SOLVER.BASE_LR"])
    # an int for a float key reads as the float (yacs alone refuses it); an int key stays an int
    widened = load_config(CPU_CONFIG, ["TAUDIS.SCHEDULE.ITERS_PER_IMAGE", "20", "TAUDIS.SCHEDULE.MIN_ITERS", "7"])
    assert widened.TAUDIS.SCHEDULE.ITERS_PER_IMAGE == 20.0 and isinstance(widened.TAUDIS.SCHEDULE.MIN_ITERS, int)
    with pytest.raises(ValueError, match="Type mismatch"):  # any other mismatch is still refused
        load_config(CPU_CONFIG, ["TAUDIS.SCHEDULE.MIN_ITERS", "7.5"])
    with pytest.raises(FileNotFoundError, match=r"config\.yaml"):
        model_config(tmp_path)
