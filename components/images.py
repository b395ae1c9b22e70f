"""The container images of the pipeline steps, named in this one place.

GPU image (``taudis-gpu``): train_model, evaluate_model, infer_instances (the CUDA build of torch,
detectron2). CPU image (``taudis-cpu``): every other step (numpy, numba, pycocotools,
google-cloud-storage; no torch). Both install the same pinned taudis; the tag is the package
version, never ``:latest``.

Components declare the bare names (``taudis-cpu:<version>``); the registry is bound when a
pipeline is compiled (:func:`bind_images`), from ``taudis pipeline compile --registry`` or the
``TAUDIS_IMAGE_REGISTRY`` environment variable. For a cluster target neither given is an error,
never a silent default. The build command (``scripts/build_images.py``) builds and pushes
exactly :func:`image_refs` of the same registry, so the compiled YAML names what was built.
:func:`set_model_environment` gives the steps on the GPU image (the model's) environment variables
at compile time, such as portable numerics.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from typing import Any

from kfp import dsl

from taudis import __version__

REGISTRY_ENV = "TAUDIS_IMAGE_REGISTRY"
# Images built and run on this machine only (kfp.local's DockerRunner, tests). Podman and docker
# both treat a "localhost/" prefix as local: nothing is pulled for it.
LOCAL_REGISTRY = "localhost"
# image kind -> repository name; the Dockerfile of a kind is images/<kind>.Dockerfile.
REPOSITORIES: dict[str, str] = {"cpu": "taudis-cpu", "gpu": "taudis-gpu"}
# Targets whose steps run on a cluster and so must pull from a registry the user names.
CLUSTER_TARGETS = ("kubernetes", "vertex")

# host[:port] followed by lower-case path components, as OCI distribution names allow.
_REGISTRY = re.compile(r"^[A-Za-z0-9.-]+(:[0-9]+)?(/[a-z0-9]+([._-][a-z0-9]+)*)*$")


def image_name(kind: str) -> str:
    """The bare ``name:tag`` of one image, as components declare it."""
    if kind not in REPOSITORIES:
        raise ValueError(f"image kind {kind!r} is not one of {', '.join(REPOSITORIES)}")
    return f"{REPOSITORIES[kind]}:{__version__}"


def image_ref(kind: str, registry: str) -> str:
    """The full reference of one image in ``registry``, e.g. ``europe-docker.pkg.dev/p/r/taudis-cpu:0.1.0``."""
    return f"{check_registry(registry)}/{image_name(kind)}"


def image_refs(registry: str) -> dict[str, str]:
    """Every image's full reference in ``registry``, by kind: what the build command builds."""
    return {kind: image_ref(kind, registry) for kind in REPOSITORIES}


def check_registry(registry: str) -> str:
    """``registry`` without a trailing slash, if it is a registry (and optional path) an image can live in.

    Raises:
        ValueError: a scheme, a tag, upper case in the path or anything else a reference cannot hold.
    """
    value = registry.strip().rstrip("/")
    host = value.split("/", 1)[0]
    # A first part without "." or ":" is a host only when it is localhost or holds upper case (an
    # engine reads "myorg/x" as Docker Hub's myorg): "R" or "REGISTRY" is a placeholder left unfilled.
    placeholder = not any(c in host for c in ".:") and host != LOCAL_REGISTRY and host != host.lower()
    if not _REGISTRY.match(value) or placeholder:
        raise ValueError(
            f"image registry {registry!r} is not HOST[:PORT][/PATH] with a lower-case path "
            "(e.g. europe-west4-docker.pkg.dev/my-project/taudis, ghcr.io/my-org, localhost)"
            + (f": {host!r} names no host (a placeholder left unfilled?)" if placeholder else "")
        )
    return value


def resolve_registry(registry: str | None, target: str) -> str:
    """The registry to compile for: the one given, else ``TAUDIS_IMAGE_REGISTRY``.

    Locally (target "local") the fallback is :data:`LOCAL_REGISTRY`, where the build command puts
    images it does not push.

    Raises:
        ValueError: neither is set for a cluster target (kubernetes, vertex): a compiled pipeline
            must never point at images nobody built.
    """
    value = registry or os.environ.get(REGISTRY_ENV, "")
    if not value.strip():
        if target in CLUSTER_TARGETS:
            raise ValueError(
                f"no image registry for target {target!r}: pass --registry (e.g. "
                f"europe-west4-docker.pkg.dev/PROJECT/taudis) or set {REGISTRY_ENV}; push the images "
                "there with scripts/build_images.py --registry ... --push"
            )
        value = LOCAL_REGISTRY
    return check_registry(value)


def bind_images(executors: Mapping[str, Any], registry: str) -> dict[str, str]:
    """Point every executor of a compiled pipeline at its image in ``registry``; returns executor -> image.

    Args:
        executors: the pipeline spec's ``deploymentSpec.executors`` as a protobuf Struct field map
            (``spec.deployment_spec.fields["executors"].struct_value.fields``), changed in place.
        registry: as accepted by :func:`check_registry`.

    Raises:
        ValueError: an executor declares an image that is not one of :data:`REPOSITORIES`, so
            the build command would not build it.
    """
    bare = {image_name(kind): image_ref(kind, registry) for kind in REPOSITORIES}
    bound = {}
    for name, executor in executors.items():
        image = executor.struct_value.fields["container"].struct_value.fields["image"]
        if image.string_value not in bare:
            raise ValueError(
                f"executor {name} runs image {image.string_value!r}, which is none of {', '.join(bare)}: "
                "declare components with cpu_component or gpu_component"
            )
        image.string_value = bare[image.string_value]
        bound[name] = image.string_value
    return bound


def set_model_environment(executors: Mapping[str, Any], env: Mapping[str, str]) -> None:
    """Give the container of every model step (the executors on the GPU image: train, evaluate,
    infer) the environment variables ``env``, over any of the same name.

    Args:
        executors: as :func:`bind_images` takes them, before the images are bound, changed in place.
    """
    from google.protobuf import struct_pb2

    for executor in executors.values():
        container = executor.struct_value.fields["container"].struct_value
        if container.fields["image"].string_value != image_name("gpu"):
            continue
        old = container.fields["env"].list_value if "env" in container.fields else struct_pb2.ListValue()
        kept = [dict(v.struct_value) for v in old.values if v.struct_value["name"] not in env]
        container.fields["env"].list_value.Clear()
        container.fields["env"].list_value.extend([*kept, *({"name": k, "value": v} for k, v in env.items())])


def cpu_component(func: Callable[..., Any]) -> Any:
    """A lightweight Python component on the CPU image."""
    return dsl.component(func, base_image=image_name("cpu"), install_kfp_package=False)


def gpu_component(func: Callable[..., Any]) -> Any:
    """A lightweight Python component on the GPU image (its GPU request comes from pipelines.platform)."""
    return dsl.component(func, base_image=image_name("gpu"), install_kfp_package=False)
