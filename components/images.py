"""The container images of the pipeline steps, named in this one place.

GPU image: train_model, evaluate_model, infer_instances (torch + detectron2 + CUDA).
CPU image: everything else (numpy, numba, google-cloud-storage, pycocotools).
Both install the same pinned taudis; the tag is the package version, never :latest.
TAUDIS_IMAGE_REGISTRY, read when the pipeline is compiled, points at your registry.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from kfp import dsl

from taudis import __version__

REGISTRY = os.environ.get("TAUDIS_IMAGE_REGISTRY", "ghcr.io/taudis")
GPU_IMAGE = f"{REGISTRY}/taudis-gpu:{__version__}"
CPU_IMAGE = f"{REGISTRY}/taudis-cpu:{__version__}"


def cpu_component(func: Callable[..., Any]) -> Any:
    """A lightweight Python component on the CPU image."""
    return dsl.component(func, base_image=CPU_IMAGE, install_kfp_package=False)


def gpu_component(func: Callable[..., Any]) -> Any:
    """A lightweight Python component on the GPU image (its GPU request comes from pipelines.kubernetes)."""
    return dsl.component(func, base_image=GPU_IMAGE, install_kfp_package=False)
