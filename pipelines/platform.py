"""Where a step runs: every Kubernetes-only task setting lives here, in one helper.

The pipelines call `on_gpu(task, target)` for the GPU steps and nothing else: with target
"kubernetes" the task gets the GPU request, node selector, toleration and a memory-backed /dev/shm
(PyTorch data loaders need more shared memory than a pod's 64 MiB default) through kfp-kubernetes;
with target "vertex" only the portable accelerator request, so the same pipeline compiles for
Vertex AI Pipelines; with target "local" nothing (kfp.local runs on this machine's devices).

:func:`package_target` reads back which of these a compiled package was made for, so that a
package is never sent to a platform it was not compiled for.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kfp import kubernetes
from kfp.dsl import PipelineTask

TARGETS = ("kubernetes", "vertex", "local")


@dataclass(frozen=True)
class GpuSettings:
    """The GPU request of the train, evaluate and infer steps."""

    accelerator: str = "nvidia.com/gpu"
    vertex_accelerator: str = "NVIDIA_L4"
    count: int = 1
    node_selector: tuple[str, str] | None = ("cloud.google.com/gke-accelerator", "nvidia-l4")
    toleration_key: str | None = "nvidia.com/gpu"
    shm_size: str = "8Gi"
    cpu: str = "8"
    memory: str = "32G"


def on_gpu(task: PipelineTask, target: str, settings: GpuSettings = GpuSettings()) -> PipelineTask:
    """Give ``task`` a GPU on ``target`` ("kubernetes", "vertex" or "local")."""
    if target not in TARGETS:
        raise ValueError(f"target {target!r} is not one of {', '.join(TARGETS)}")
    if target == "local":
        return task
    task.set_cpu_limit(settings.cpu).set_memory_limit(settings.memory)
    if target == "vertex":
        return task.set_accelerator_type(settings.vertex_accelerator).set_accelerator_limit(settings.count)
    task.set_accelerator_type(settings.accelerator).set_accelerator_limit(settings.count)
    if settings.node_selector:
        kubernetes.add_node_selector(task, *settings.node_selector)
    if settings.toleration_key:
        kubernetes.add_toleration(task, key=settings.toleration_key, operator="Exists", effect="NoSchedule")
    kubernetes.empty_dir_mount(
        task, volume_name="dshm", mount_path="/dev/shm", medium="Memory", size_limit=settings.shm_size
    )
    return task


def package_target(documents: Sequence[dict[str, Any]]) -> str:
    """The target a compiled package was made for: "kubernetes", "vertex" or "local".

    Args:
        documents: the package's YAML documents (the pipeline spec, then the platform spec if any).

    Kubernetes packages carry a Kubernetes platform spec or a Kubernetes resource name as
    accelerator (``nvidia.com/gpu``); Vertex packages a Vertex accelerator type (``NVIDIA_L4``,
    no slash); local packages no accelerator at all.
    """
    spec, platforms = documents[0], documents[1:]
    if any("kubernetes" in (doc.get("platforms") or {}) for doc in platforms):
        return "kubernetes"
    accelerators = {
        executor["container"]["resources"]["accelerator"].get("resourceType", "")
        for executor in spec.get("deploymentSpec", {}).get("executors", {}).values()
        if "accelerator" in executor.get("container", {}).get("resources", {})
    }
    if not accelerators:
        return "local"
    return "kubernetes" if any("/" in kind for kind in accelerators) else "vertex"
