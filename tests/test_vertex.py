"""Vertex AI Pipelines: what `taudis pipeline submit/schedule --target vertex` would send, checked offline.

google-cloud-aiplatform builds the real requests with anonymous credentials; they go over its REST
transport to a fake Vertex API on loopback (tests/fake_vertex.py), and any other connection is
refused, so nothing leaves this machine.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from taudis_kfp.pipelines.cli import compile_pipeline, main, pipeline_spec, typed_arguments
from taudis_kfp.pipelines.vertex import pipeline_job, schedule_vertex_runs, submit_vertex_run, vertex_cron
from tests.fake_vertex import start_fake_vertex

pytest.importorskip("google.cloud.aiplatform", reason="pip install 'taudis[vertex]'")

REGISTRY = "europe-west4-docker.pkg.dev/my-project/taudis"
PROJECT, LOCATION, ROOT = "my-project", "europe-west4", "gs://my-bucket/vertex-root"
SERVICE_ACCOUNT = "taudis-runner@my-project.iam.gserviceaccount.com"
REQUIRED = {
    "campaign_uri": "gs://my-bucket/campaigns/c1",
    "pool_annotations": "gs://my-bucket/data/pool.json",
    "image_root": "gs://my-bucket/data/images",
    "val_annotations": "gs://my-bucket/data/val.json",
}
# The compiled steps that read or write the campaign's bucket state: never cached (pipelines.common).
NEVER_CACHED = ("check-parameters", "ingest-labels")


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Refuse every connection but loopback (the fake API): the requests are built offline."""
    connect = socket.socket.connect

    def loopback_only(sock, address):
        host = address[0] if isinstance(address, tuple) else address
        if sock.family == socket.AF_UNIX or host in ("127.0.0.1", "::1", "localhost"):
            return connect(sock, address)
        raise ConnectionRefusedError(f"test: no network, refused {address!r}")

    monkeypatch.setattr(socket.socket, "connect", loopback_only)
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    # Clients made without explicit credentials find none at once instead of probing for a GCE metadata server.
    monkeypatch.setenv("NO_GCE_CHECK", "True")


@pytest.fixture(scope="module")
def packages(tmp_path_factory) -> dict[tuple[str, str], Path]:
    out = tmp_path_factory.mktemp("vertex")
    return {
        (pipeline, target): compile_pipeline(
            out / f"{pipeline}-{target}.yaml", pipeline, "taudis", registry=REGISTRY, rounds=1, target=target
        )
        for pipeline in ("round", "campaign")
        for target in ("vertex", "kubernetes")
    }


@pytest.fixture
def fake_vertex(monkeypatch):
    fake, server = start_fake_vertex()
    # Before submitting, aiplatform looks the pipeline root's bucket up: the fake refuses that too.
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", fake.endpoint)
    yield fake
    server.shutdown()


@pytest.fixture
def anonymous():
    from google.auth.credentials import AnonymousCredentials

    return AnonymousCredentials()


def _where(fake, anonymous) -> dict:
    return {
        "project": PROJECT,
        "location": LOCATION,
        "pipeline_root": ROOT,
        "credentials": anonymous,
        "api_endpoint": fake.endpoint,
    }


def _tasks(spec: dict) -> dict:
    tasks = dict(spec["root"]["dag"]["tasks"])
    for component in spec["components"].values():
        tasks.update(component.get("dag", {}).get("tasks", {}))
    return tasks


def test_both_vertex_packages_construct_as_pipeline_jobs_offline(packages, anonymous):
    for pipeline in ("round", "campaign"):
        package = packages[pipeline, "vertex"]
        job = pipeline_job(
            package,
            typed_arguments(package, REQUIRED),
            project=PROJECT,
            location=LOCATION,
            pipeline_root=ROOT,
            credentials=anonymous,
        )
        # What CreatePipelineJob would carry, before anything is sent.
        request = type(job._gca_resource).to_dict(job._gca_resource)
        assert request["pipeline_spec"]["pipelineInfo"]["name"] == f"taudis-{pipeline}-taudis"
        assert request["runtime_config"]["gcs_output_directory"] == ROOT


def test_submit_sends_the_template_parameters_and_root_and_leaves_caching_to_each_task(
    packages, fake_vertex, anonymous
):
    package = packages["round", "vertex"]
    arguments = typed_arguments(package, {**REQUIRED, "budget": "12"})
    name = submit_vertex_run(
        package, arguments, **_where(fake_vertex, anonymous), service_account=SERVICE_ACCOUNT, run_name="round-1"
    )

    assert fake_vertex.sent("GET", "/storage/v1/b/my-bucket")  # looked up, refused by the fake
    assert not fake_vertex.sent("POST", "/storage/v1/b")  # so never created
    (sent,) = fake_vertex.sent("POST", f"/v1/projects/{PROJECT}/locations/{LOCATION}/pipelineJobs")
    assert name == sent.path.removeprefix("/v1/") + "/" + sent.query["pipelineJobId"][0]
    body = sent.body
    assert body["displayName"] == "round-1"
    assert body["serviceAccount"] == SERVICE_ACCOUNT
    assert body["runtimeConfig"]["gcsOutputDirectory"] == ROOT
    assert body["runtimeConfig"]["parameterValues"] == {**REQUIRED, "budget": 12}
    # The template goes as compiled: no job-level caching flag rewrote any task's caching option.
    assert body["pipelineSpec"] == pipeline_spec(package)
    caching = {
        name: task.get("cachingOptions", {}).get("enableCache", False)
        for name, task in _tasks(body["pipelineSpec"]).items()
        if "cachingOptions" in task
    }
    assert not any(caching[name] for name in NEVER_CACHED)
    assert any(caching.values())  # some steps are cached, so a job-level flag would have shown
    images = {e["container"]["image"] for e in body["pipelineSpec"]["deploymentSpec"]["executors"].values()}
    assert images == {f"{REGISTRY}/taudis-cpu:0.1.0", f"{REGISTRY}/taudis-gpu:0.1.0"}


def test_schedule_sends_cron_one_run_at_a_time_and_queues_nothing(packages, fake_vertex, anonymous):
    package = packages["round", "vertex"]
    arguments = typed_arguments(package, REQUIRED)
    name = schedule_vertex_runs(
        package,
        arguments,
        **_where(fake_vertex, anonymous),
        cron="0 0 6 * * 1",
        name="weekly-round",
        service_account=SERVICE_ACCOUNT,
    )

    assert fake_vertex.sent("POST", "/pipelineJobs") == []  # a schedule creates no run by itself
    (sent,) = fake_vertex.sent("POST", f"/v1/projects/{PROJECT}/locations/{LOCATION}/schedules")
    assert name.endswith("/schedules/schedule-1")
    body = sent.body
    assert body["displayName"] == "weekly-round"
    assert body["cron"] == "0 6 * * 1"
    assert int(body["maxConcurrentRunCount"]) == 1
    assert body.get("allowQueueing", False) is False
    request = body["createPipelineJobRequest"]
    assert request["parent"] == f"projects/{PROJECT}/locations/{LOCATION}"
    job = request["pipelineJob"]
    assert job["runtimeConfig"] == {"gcsOutputDirectory": ROOT, "parameterValues": REQUIRED}
    assert job["serviceAccount"] == SERVICE_ACCOUNT
    assert job["pipelineSpec"] == pipeline_spec(package)


def test_packages_for_another_platform_and_local_roots_are_refused_before_sending(packages, fake_vertex, anonymous):
    with pytest.raises(ValueError, match=r"compiled for target 'kubernetes'.*--target vertex"):
        submit_vertex_run(packages["round", "kubernetes"], REQUIRED, **_where(fake_vertex, anonymous))
    where = {**_where(fake_vertex, anonymous), "pipeline_root": "/tmp/root"}
    with pytest.raises(ValueError, match="gs:// URI"):
        submit_vertex_run(packages["round", "vertex"], REQUIRED, **where)
    assert fake_vertex.requests == []


def test_vertex_cron_drops_a_zero_seconds_field_and_refuses_the_rest():
    assert vertex_cron("0 0 6 * * 1") == "0 6 * * 1"
    assert vertex_cron("0 6 * * 1") == "0 6 * * 1"
    assert vertex_cron("TZ=Europe/Berlin 0 30 6 * * 1") == "TZ=Europe/Berlin 30 6 * * 1"
    with pytest.raises(ValueError, match="minute resolution"):
        vertex_cron("30 0 6 * * 1")
    with pytest.raises(ValueError, match="fields"):
        vertex_cron("0 6 * *")


def test_cli_vertex_target_needs_project_and_location(packages, capsys):
    params = [arg for k, v in REQUIRED.items() for arg in ("-p", f"{k}={v}")]
    code = main(["submit", str(packages["round", "vertex"]), "--target", "vertex", "--pipeline-root", ROOT, *params])
    assert code == 2
    assert "--project and --location" in capsys.readouterr().err
