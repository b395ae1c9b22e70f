"""Every pipeline compiles, carries the right platform settings, and is submitted and scheduled as intended."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from taudis_kfp.pipelines.cli import compile_pipeline, main, pipeline_spec, schedule_runs, submit_run, typed_arguments
from tests.fake_kfp import start_fake_kfp

GPU_EXECUTORS = {"exec-train-model", "exec-evaluate-model", "exec-infer-instances"}
REQUIRED = {
    "campaign_uri": "gs://bucket/campaigns/c1",
    "pool_annotations": "gs://bucket/data/pool.json",
    "image_root": "gs://bucket/data/images",
    "val_annotations": "gs://bucket/data/val.json",
}


def _documents(package: Path) -> list[dict]:
    return list(yaml.safe_load_all(package.read_text()))


def _executors(spec: dict) -> dict:
    return spec["deploymentSpec"]["executors"]


def _all_tasks(spec: dict) -> dict:
    """Every task of the root DAG and of nested DAGs (loops), by task name."""
    tasks = dict(spec["root"]["dag"]["tasks"])
    for component in spec["components"].values():
        tasks.update(component.get("dag", {}).get("tasks", {}))
    return tasks


@pytest.fixture(scope="module")
def packages(tmp_path_factory) -> dict[tuple[str, str, str], Path]:
    out = tmp_path_factory.mktemp("compiled")
    compiled = {}
    for pipeline in ("round", "campaign"):
        for strategy in ("taudis", "random", "uncertainty", "coreset", "diversity"):
            for target in ("kubernetes", "vertex"):
                path = out / f"{pipeline}-{strategy}-{target}.yaml"
                compile_pipeline(path, pipeline, strategy, rounds=2, num_shards=2, target=target)
                compiled[pipeline, strategy, target] = path
    return compiled


def test_every_pipeline_compiles_with_the_stages_of_its_strategy(packages):
    for (pipeline, strategy, _), package in packages.items():
        spec = _documents(package)[0]
        executors = set(_executors(spec))
        taudis_stages = {
            "exec-score-uncertainty",
            "exec-oversample-instances",
            "exec-select-max-k-cover",
            "exec-vote-images",
        }
        baseline = "exec-select-coreset" if strategy == "coreset" else "exec-select-baseline"
        if strategy == "taudis":
            assert taudis_stages <= executors, package
            assert not {"exec-select-baseline", "exec-select-coreset"} & executors
        else:
            assert not taudis_stages & executors
            assert baseline in executors
        labels = "exec-ingest-labels" if pipeline == "round" else "exec-reveal-oracle-labels"
        round_steps = {"exec-claim-round", "exec-export-tasks", "exec-report-round", "exec-commit-round"}
        assert {labels, "exec-check-parameters"} | round_steps | GPU_EXECUTORS <= executors
        assert ("exec-close-round" in executors) == (pipeline == "campaign")
        assert spec["pipelineInfo"]["name"] == f"taudis-{pipeline}-{strategy}"


def test_the_cover_options_reach_every_step_that_covers(packages):
    """centre and whiten are run parameters (off by default) wired into each step that builds a cover's graph."""
    for (_, strategy, _), package in packages.items():
        spec = _documents(package)[0]
        declared = spec["root"]["inputDefinitions"]["parameters"]
        covers = [
            task
            for task in _all_tasks(spec).values()
            if task["componentRef"]["name"].startswith(("comp-select-max-k-cover", "comp-select-baseline"))
        ]
        assert bool(covers) == (strategy != "coreset"), (package, strategy)
        for name in ("centre", "whiten"):
            assert declared[name] == {"defaultValue": False, "isOptional": True, "parameterType": "BOOLEAN"}
            for task in covers:
                assert task["inputs"]["parameters"][name]["componentInputParameter"].endswith(name), package


def test_campaign_unrolls_its_rounds_and_a_final_evaluation(packages):
    spec = _documents(packages["campaign", "taudis", "kubernetes"])[0]
    tasks = _all_tasks(spec)
    trains = [
        t
        for t in tasks.values()
        if t["componentRef"]["name"] == "comp-train-model" or t["componentRef"]["name"].startswith("comp-train-model-")
    ]
    assert len(trains) == 3  # rounds 0 and 1 select, round 2 only trains and evaluates
    evaluations = [t for t in tasks.values() if t["componentRef"]["name"].startswith("comp-evaluate-model")]
    assert len(evaluations) == 3
    commits = [t for t in tasks.values() if t["componentRef"]["name"].startswith("comp-commit-round")]
    assert len(commits) == 2
    closes = [t for t in tasks.values() if t["componentRef"]["name"].startswith("comp-close-round")]
    assert len(closes) == 1


def test_gpu_steps_get_gpu_settings_and_cpu_steps_do_not(packages):
    spec, platform = _documents(packages["round", "taudis", "kubernetes"])
    for name, executor in _executors(spec).items():
        resources = executor["container"].get("resources", {})
        if name in GPU_EXECUTORS:
            assert resources["accelerator"]["resourceType"] == "nvidia.com/gpu"
            assert resources["accelerator"]["resourceCount"] == "1"
            assert executor["container"]["image"].endswith(f"taudis-gpu:{__import__('taudis').__version__}")
        else:
            assert "accelerator" not in resources
            assert ":latest" not in executor["container"]["image"]
            assert "taudis-cpu:" in executor["container"]["image"]
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert set(k8s) == GPU_EXECUTORS
    for settings in k8s.values():
        assert settings["emptyDirMounts"][0]["mountPath"] == "/dev/shm"
        assert settings["emptyDirMounts"][0]["medium"] == "Memory"
        assert settings["tolerations"][0]["key"] == "nvidia.com/gpu"
        assert "cloud.google.com/gke-accelerator" in settings["nodeSelector"]["labels"]


def test_vertex_target_has_no_kubernetes_platform_spec(packages):
    documents = _documents(packages["round", "taudis", "vertex"])
    assert len(documents) == 1
    resources = _executors(documents[0])["exec-train-model"]["container"]["resources"]
    assert resources["accelerator"]["resourceType"] == "NVIDIA_L4"


BUCKET_STATE_COMPONENTS = (
    "comp-check-parameters",
    "comp-claim-round",
    "comp-ingest-labels",
    "comp-reveal-oracle-labels",
    "comp-train-model",
    "comp-evaluate-model",
    "comp-infer-instances",
    "comp-export-tasks",
    "comp-report-round",
    "comp-commit-round",
    "comp-close-round",
)


def test_steps_that_touch_bucket_state_are_never_cached_and_are_retried(packages):
    for key, package in packages.items():  # every round of every pipeline, whatever its task's name
        checked = 0
        for name, task in _all_tasks(_documents(package)[0]).items():
            if task["componentRef"]["name"].startswith(BUCKET_STATE_COMPONENTS):
                assert task["cachingOptions"].get("enableCache", False) is False, (key, name)
                assert task["retryPolicy"]["maxRetryCount"] == 3, (key, name)
                assert task["retryPolicy"]["backoffDuration"] == "30s", (key, name)
                checked += 1
            elif task["componentRef"]["name"].startswith(("comp-score", "comp-oversample", "comp-select", "comp-vote")):
                assert task["cachingOptions"]["enableCache"] is True  # pure functions of their inputs
        rounds = 1 if key[0] == "round" else 3
        assert checked >= 1 + rounds * 7, (key, checked)


def test_steps_that_need_the_run_get_its_id(packages):
    spec = _documents(packages["round", "taudis", "kubernetes"])[0]
    tasks = _all_tasks(spec)
    for name in ("claim-round", "ingest-labels", "evaluate-model", "commit-round"):
        run_id = tasks[name]["inputs"]["parameters"]["run_id"]
        assert run_id["runtimeValue"]["constant"] == "{{$.pipeline_job_uuid}}", name


def test_components_install_nothing_at_run_time(packages):
    spec = _documents(packages["round", "taudis", "kubernetes"])[0]
    for name, executor in _executors(spec).items():
        command = " ".join(executor["container"]["command"])
        assert "pip install" not in command, name


def test_typed_arguments_convert_and_reject_bad_parameters(packages):
    package = packages["round", "taudis", "kubernetes"]
    params = [f"{k}={v}" for k, v in REQUIRED.items()]
    arguments = typed_arguments(package, [*params, "budget=7", "sigma=0.5"])
    assert arguments["budget"] == 7 and arguments["sigma"] == 0.5
    with pytest.raises(ValueError, match="alpha"):
        typed_arguments(package, [*params, "alpha=1.2", "beta=1.5"])
    with pytest.raises(ValueError, match="sigma"):
        typed_arguments(package, [*params, "sigma=1.5"])
    with pytest.raises(ValueError, match="budget"):
        typed_arguments(package, [*params, "budget=0"])
    with pytest.raises(ValueError, match="metric"):
        typed_arguments(package, [*params, "metric=nonsense"])
    with pytest.raises(ValueError, match="no parameter 'bugdet'"):
        typed_arguments(package, [*params, "bugdet=3"])
    with pytest.raises(ValueError, match="missing required parameter"):
        typed_arguments(package, params[:2])
    with pytest.raises(ValueError, match="NUMBER_INTEGER"):
        typed_arguments(package, [*params, "budget=ten"])


def test_unknown_strategy_is_rejected_when_compiling(tmp_path, capsys):
    assert main(["compile", "--strategy", "bogus", "--out", str(tmp_path / "p.yaml")]) == 2
    assert "strategy 'bogus'" in capsys.readouterr().err
    assert not (tmp_path / "p.yaml").exists()


@pytest.fixture
def fake_kfp():
    fake, server = start_fake_kfp()
    yield fake
    server.shutdown()


def test_submit_sends_the_spec_parameters_and_pipeline_root(packages, fake_kfp):
    package = packages["round", "taudis", "kubernetes"]
    arguments = typed_arguments(package, {**REQUIRED, "budget": "12"})
    run_id = submit_run(fake_kfp.host, package, arguments, pipeline_root="gs://bucket/kfp-root", experiment="al")
    assert run_id == "run-1"
    (sent,) = fake_kfp.sent("POST", "/apis/v2beta1/runs")
    body = sent.body
    assert body["runtime_config"]["pipeline_root"] == "gs://bucket/kfp-root"
    assert body["runtime_config"]["parameters"] == {**REQUIRED, "budget": 12}
    assert body["pipeline_spec"]["pipeline_spec"]["pipelineInfo"]["name"] == "taudis-round-taudis"
    assert (
        set(body["pipeline_spec"]["platform_spec"]["platforms"]["kubernetes"]["deploymentSpec"]["executors"])
        == GPU_EXECUTORS
    )
    assert body["experiment_id"] == "exp-1"
    (experiment,) = fake_kfp.sent("POST", "/apis/v2beta1/experiments")
    assert experiment.body["display_name"] == "al"


def test_schedule_creates_one_recurring_run_at_a_time_without_catch_up(packages, fake_kfp):
    package = packages["round", "taudis", "kubernetes"]
    job = schedule_runs(
        fake_kfp.host,
        package,
        dict(REQUIRED),
        cron="0 0 6 * * 1",
        pipeline_root="gs://bucket/kfp-root",
        experiment="al",
        name="weekly-round",
    )
    assert job == "recurring-1"
    (sent,) = fake_kfp.sent("POST", "/apis/v2beta1/recurringruns")
    body = sent.body
    assert body["trigger"] == {"cron_schedule": {"cron": "0 0 6 * * 1"}}
    assert body["max_concurrency"] == 1
    assert body["no_catchup"] is True
    assert body["mode"] == "ENABLE"
    assert body["display_name"] == "weekly-round"
    assert body["runtime_config"] == {"parameters": REQUIRED, "pipeline_root": "gs://bucket/kfp-root"}
    assert body["pipeline_spec"]["pipeline_spec"] == pipeline_spec(package)


def test_an_unreachable_kfp_endpoint_is_one_line_not_a_traceback(packages, capsys):
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        host = f"http://127.0.0.1:{probe.getsockname()[1]}"
    params = [arg for k, v in REQUIRED.items() for arg in ("-p", f"{k}={v}")]
    args = ["submit", str(packages["round", "taudis", "kubernetes"]), "--host", host, "--pipeline-root", "gs://b/r"]
    assert main([*args, *params]) == 1
    err = capsys.readouterr().err
    assert f"the KFP API at {host}: cannot be reached" in err and "Traceback" not in err


def test_cli_schedule_refuses_bad_parameters_before_sending_anything(packages, fake_kfp, capsys):
    package = packages["round", "taudis", "kubernetes"]
    params = [arg for k, v in REQUIRED.items() for arg in ("-p", f"{k}={v}")]
    code = main(
        [
            "schedule",
            str(package),
            "--host",
            fake_kfp.host,
            "--cron",
            "0 0 6 * * 1",
            "--pipeline-root",
            "gs://bucket/kfp",
            *params,
            "-p",
            "beta=0.5",
        ]
    )
    assert code == 2
    assert "beta" in capsys.readouterr().err
    assert fake_kfp.requests == []
