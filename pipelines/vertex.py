"""Vertex AI Pipelines: one run, or a schedule of runs, of a package compiled with ``--target vertex``.

Through google-cloud-aiplatform (``pip install 'taudis[vertex]'``): a ``PipelineJob`` for one run,
a ``PipelineJobSchedule`` for recurring runs. What is always sent:

- the pipeline root is an explicit ``gs://`` URI (Vertex keeps every artifact there);
- the job-level caching flag is left unset, so each task keeps its compiled caching option: the
  steps that read or write the campaign's bucket state are never served from the cache, while
  the pure selection steps may be (a job-level ``enable_caching=True`` would cache them all);
- a schedule runs one round at a time (``max_concurrent_run_count=1``) and never queues a run
  that falls due while one is still running (``allow_queueing=False``): rounds of a campaign must
  not overlap, and a missed week is one round later, not a burst of rounds.

Credentials come from the environment (Application Default Credentials) unless given; the
``api_endpoint`` argument exists for tests against a local fake of the REST API.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from taudis_kfp.pipelines.platform import package_target


def pipeline_job(
    package: str | Path,
    arguments: Mapping[str, Any],
    *,
    project: str,
    location: str,
    pipeline_root: str,
    display_name: str | None = None,
    credentials: Any = None,
    api_endpoint: str | None = None,
) -> Any:
    """An ``aiplatform.PipelineJob`` for one run of ``package``, not yet submitted.

    Raises:
        ValueError: the package was not compiled for Vertex, or the pipeline root is not gs://.
    """
    from google.cloud import aiplatform

    _check_package(package)
    if not pipeline_root.startswith("gs://"):
        raise ValueError(f"a Vertex AI pipeline root must be a gs:// URI, got {pipeline_root!r}")
    aiplatform.init(
        project=project,
        location=location,
        credentials=credentials,
        api_endpoint=api_endpoint,
        # The REST transport reaches a plain-HTTP endpoint too (tests); gRPC stays the default.
        api_transport="rest" if api_endpoint else None,
    )
    return aiplatform.PipelineJob(
        display_name=display_name or _pipeline_name(package),
        template_path=str(package),
        pipeline_root=pipeline_root,
        parameter_values=dict(arguments),
        enable_caching=None,  # keep each task's compiled caching option (see the module docstring)
        project=project,
        location=location,
        credentials=credentials,
    )


def submit_vertex_run(
    package: str | Path,
    arguments: Mapping[str, Any],
    *,
    project: str,
    location: str,
    pipeline_root: str,
    service_account: str | None = None,
    run_name: str | None = None,
    credentials: Any = None,
    api_endpoint: str | None = None,
) -> str:
    """Submit one run to Vertex AI Pipelines; returns the job's resource name."""
    job = pipeline_job(
        package,
        arguments,
        project=project,
        location=location,
        pipeline_root=pipeline_root,
        display_name=run_name,
        credentials=credentials,
        api_endpoint=api_endpoint,
    )
    job.submit(service_account=service_account)
    return str(job.resource_name)


def schedule_vertex_runs(
    package: str | Path,
    arguments: Mapping[str, Any],
    *,
    project: str,
    location: str,
    pipeline_root: str,
    cron: str,
    name: str,
    service_account: str | None = None,
    credentials: Any = None,
    api_endpoint: str | None = None,
) -> str:
    """Create a Vertex AI schedule (one run at a time, nothing queued); returns its resource name.

    Args:
        cron: the CLI's 6-field cron (seconds first, as for KFP); see :func:`vertex_cron`.
    """
    job = pipeline_job(
        package,
        arguments,
        project=project,
        location=location,
        pipeline_root=pipeline_root,
        display_name=name,
        credentials=credentials,
        api_endpoint=api_endpoint,
    )
    schedule = job.create_schedule(
        cron=vertex_cron(cron),
        display_name=name,
        max_concurrent_run_count=1,
        allow_queueing=False,
        service_account=service_account,
    )
    return str(schedule.resource_name)


def vertex_cron(cron: str) -> str:
    """A Vertex AI cron (5 fields, optional ``TZ=...`` prefix) from the CLI's 6-field one.

    KFP's cron starts with a seconds field; Vertex schedules have minute resolution, so that field
    must be 0 and is dropped. A 5-field cron passes unchanged.

    Raises:
        ValueError: a seconds field other than 0, or neither 5 nor 6 fields.
    """
    prefix, fields = "", cron.split()
    if fields and fields[0].startswith(("TZ=", "CRON_TZ=")):
        prefix, fields = fields[0] + " ", fields[1:]
    if len(fields) == 6:
        if fields[0] != "0":
            raise ValueError(f"cron {cron!r}: Vertex AI schedules have minute resolution; the seconds field must be 0")
        fields = fields[1:]
    if len(fields) != 5:
        raise ValueError(f"cron {cron!r} has {len(fields)} fields; expected 6 (seconds first) or 5")
    return prefix + " ".join(fields)


def _check_package(package: str | Path) -> None:
    with open(package) as stream:
        documents = list(yaml.safe_load_all(stream))
    target = package_target(documents)
    if target != "vertex":
        raise ValueError(
            f"{package} was compiled for target {target!r}; compile it with --target vertex for Vertex AI Pipelines"
        )


def _pipeline_name(package: str | Path) -> str:
    with open(package) as stream:
        name = next(iter(yaml.safe_load_all(stream)))["pipelineInfo"]["name"]
    return f"{name}-{datetime.datetime.now(datetime.UTC):%Y%m%d-%H%M%S}"
