"""A fake Vertex AI REST API (v1) on loopback that records what google-cloud-aiplatform sends.

Just enough for ``PipelineJob.submit`` and ``PipelineJob.create_schedule`` over the REST
transport: each request is kept as (method, path, query, JSON body); creations answer with the
body plus a resource name, as the real API does.

Before it submits, aiplatform looks the pipeline root's bucket up in Cloud Storage (creating it
when missing, checking its owner project when present); with STORAGE_EMULATOR_HOST pointing here
that lookup arrives here too and is refused (403), which aiplatform logs and passes over, so no
bucket is created and no other Google API is asked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from typing import Any

from tests.fake_rest import Request, serve


@dataclass
class FakeVertex:
    endpoint: str
    requests: list[Request] = field(default_factory=list)

    def sent(self, method: str, path_suffix: str) -> list[Request]:
        """Requests of ``method`` whose path ends with ``path_suffix`` (e.g. "/pipelineJobs")."""
        return [r for r in self.requests if r.method == method and r.path.endswith(path_suffix)]


def _respond(request: Request) -> tuple[int, dict[str, Any]]:
    collection = request.path.rsplit("/", 1)[-1]
    if request.method == "POST" and collection == "pipelineJobs":
        job_id = request.query.get("pipelineJobId", ["job-1"])[0]
        return 200, {**request.body, "name": f"{request.path.removeprefix('/v1/')}/{job_id}", "state": 2}
    if request.path.startswith("/storage/v1/b"):  # the pipeline root's bucket: see the module docstring
        return 403, {"error": {"code": 403, "message": "fake Vertex: no access to buckets"}}
    if request.method == "POST" and collection == "schedules":
        return 200, {**request.body, "name": f"{request.path.removeprefix('/v1/')}/schedule-1", "state": 1}
    return 404, {"error": {"code": 404, "message": f"fake Vertex has no {request.method} {request.path}"}}


def start_fake_vertex() -> tuple[FakeVertex, ThreadingHTTPServer]:
    fake = FakeVertex(endpoint="")
    fake.endpoint, server = serve(_respond, fake.requests)
    return fake, server
