"""The wheel is fit for an image: its own namespace, configs inside, a library that never imports the KFP layer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from taudis.model.config import MIN_SHM_BYTES, loader_workers

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

import build_images  # noqa: E402


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel the build command puts into both images, built from this checkout."""
    return build_images.build_wheel(tmp_path_factory.mktemp("wheel"))


@pytest.fixture(scope="module")
def unpacked(wheel, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(out)
    return out


def test_wheel_installs_only_the_projects_own_top_level_packages(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    top = {name.split("/", 1)[0] for name in names if not name.split("/", 1)[0].endswith(".dist-info")}
    assert top == {"taudis", "taudis_kfp"}
    assert "taudis_kfp/components/images.py" in names and "taudis_kfp/pipelines/cli.py" in names
    assert not [name for name in names if name.startswith(("components/", "pipelines/", "configs/", "tests/"))]


def test_configs_ship_as_package_data_and_are_found_in_an_installed_wheel(wheel, unpacked):
    with zipfile.ZipFile(wheel) as archive:
        configs = {Path(name).name for name in archive.namelist() if name.startswith("taudis/configs/")}
    assert {path.name for path in (REPO / "configs").glob("*.yaml")} <= configs
    probe = (
        "import json, taudis.model.config as c; from pathlib import Path; "
        "print(json.dumps({'dir': str(c.CONFIG_DIR), 'cpu': Path(c.CPU_CONFIG).is_file(), "
        "'gpu': Path(c.GPU_CONFIG).is_file(), 'resolved': str(c.resolve_config_path('mask_rcnn_R18_slim_cpu.yaml'))}))"
    )
    env = {k: v for k, v in os.environ.items() if k != "TAUDIS_CONFIG_DIR"} | {"PYTHONPATH": str(unpacked)}
    run = subprocess.run([sys.executable, "-c", probe], env=env, cwd=unpacked, check=True, capture_output=True)
    found = json.loads(run.stdout)
    assert found["dir"] == str(unpacked / "taudis" / "configs")  # the wheel's copy, not the checkout's
    assert found["cpu"] and found["gpu"]
    assert found["resolved"].startswith(str(unpacked))


def test_the_cli_finds_the_kfp_commands_through_entry_points(wheel):
    with zipfile.ZipFile(wheel) as archive:
        (entry_points,) = [n for n in archive.namelist() if n.endswith(".dist-info/entry_points.txt")]
        text = archive.read(entry_points).decode()
    assert "[taudis.commands]" in text
    assert "pipeline = taudis_kfp.pipelines.cli" in text and "demo = taudis_kfp.pipelines.demo" in text
    from taudis.cli import commands

    found = commands()
    assert found["pipeline"][0] == "taudis_kfp.pipelines.cli" and found["demo"][0] == "taudis_kfp.pipelines.demo"


def test_importing_every_library_module_never_imports_the_kfp_layer():
    probe = """
import importlib, json, pkgutil, sys
import taudis
names = sorted(m.name for m in pkgutil.walk_packages(taudis.__path__, "taudis."))
failed = {}
for name in names:
    try:
        importlib.import_module(name)
    except ImportError as err:  # an optional dependency (e.g. detectron2) missing here
        failed[name] = str(err)
print(json.dumps({"modules": names, "failed": failed, "kfp_layer": sorted(
    m for m in sys.modules if m == "kfp" or m.startswith(("kfp.", "taudis_kfp")))}))
"""
    out = json.loads(subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True).stdout)
    assert len(out["modules"]) > 30
    assert not [name for name in out["failed"] if "taudis_kfp" in out["failed"][name]]
    assert out["kfp_layer"] == []


def test_data_loader_workers_need_a_large_dev_shm():
    assert loader_workers(4, MIN_SHM_BYTES) == 4  # the 8 GiB memory-backed mount of the kubernetes target
    assert loader_workers(4, 64 << 20) == 0  # a container's default 64 MiB: batches in the main process
    assert loader_workers(4, None) == 4  # no /dev/shm at all (not Linux)
    assert loader_workers(0, 64 << 20) == 0
