"""The objects' size at the model's input: measured, warned about, and a suggestion that fixes it."""

from __future__ import annotations

import shlex
from typing import Any

import pytest

pytest.importorskip("detectron2", reason="install it with scripts/install-detectron2.sh")

from taudis.model.config import CPU_CONFIG, GPU_CONFIG, load_config
from taudis.model.scale import for_config, measure

pytestmark = pytest.mark.model
SLIM_ANCHORS = [[8], [16], [32], [64], [128]]


def _coco(side: float, image: tuple[int, int], objects: int = 9, **extra: Any) -> dict[str, Any]:
    """One image of ``image`` (height, width) holding ``objects`` boxes of ``side`` px, plus ``extra`` fields."""
    height, width = image
    annotations = [{"id": i + 1, "image_id": 1, "bbox": [0, 0, side, side], **extra} for i in range(objects)]
    return {"images": [{"id": 1, "height": height, "width": width}], "annotations": annotations}


def test_objects_that_fit_the_anchors_raise_no_problem() -> None:
    scale = measure(_coco(20, (128, 128)), 128, 256, SLIM_ANCHORS)
    assert scale is not None and scale.median_side == 20 and scale.median_resize == 1.0
    assert scale.suggested_opts == "" and scale.problem() is None


def test_big_scenes_shrunk_to_the_cpu_input_are_named_with_a_larger_input_that_fixes_them() -> None:
    data = _coco(20, (512, 768))  # shrunk 4x at 128 px: 5 px objects against 8 px anchors
    scale = for_config(data, load_config(CPU_CONFIG))
    assert scale is not None and scale.median_side == 5.0 and scale.median_resize == 0.25
    problem = scale.problem()
    assert problem is not None and "5.0 px across" in problem and "smallest anchor (8 px)" in problem
    assert "INPUT.MIN_SIZE_TEST 416" in scale.suggested_opts and "ANCHOR" not in scale.suggested_opts
    # The overrides are valid detectron2 options and bring the objects back above the anchors.
    fixed = for_config(data, load_config(CPU_CONFIG, shlex.split(scale.suggested_opts)))
    assert fixed is not None and fixed.problem() is None and fixed.median_side >= 16


def test_objects_small_even_at_full_size_get_smaller_anchors_too() -> None:
    data = _coco(4, (1024, 1024))
    scale = for_config(data, load_config(CPU_CONFIG))
    assert scale is not None and scale.problem() is not None
    assert "INPUT.MIN_SIZE_TEST 1024" in scale.suggested_opts  # no larger than the images themselves
    assert "MODEL.ANCHOR_GENERATOR.SIZES [[4],[8],[16],[32],[64]]" in scale.suggested_opts
    fixed = for_config(data, load_config(CPU_CONFIG, shlex.split(scale.suggested_opts)))
    assert fixed is not None and fixed.problem() is None
    at_input = for_config(_coco(3, (128, 128)), load_config(CPU_CONFIG))
    assert at_input is not None and at_input.suggested_opts == "MODEL.ANCHOR_GENERATOR.SIZES [[2],[4],[8],[16],[32]]"


def test_the_gpu_config_reads_small_tiles_upscaled() -> None:
    scale = for_config(_coco(14, (128, 128)), load_config(GPU_CONFIG))  # 800 px input: 6.25x
    assert scale is not None and scale.median_resize == 6.25 and scale.problem() is None


def test_crowd_regions_boxless_records_and_empty_datasets_are_not_measured() -> None:
    crowd = _coco(2, (128, 128), iscrowd=1)
    crowd["annotations"] += [{"id": 99, "image_id": 1, "bbox": [0, 0, 30, 30]}, {"id": 100, "image_id": 1}]
    scale = measure(crowd, 128, 256, SLIM_ANCHORS)
    assert scale is not None and scale.objects == 1 and scale.problem() is None
    assert measure(_coco(20, (128, 128), objects=0), 128, 256, SLIM_ANCHORS) is None
