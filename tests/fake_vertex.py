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

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    body: Any


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

    class Handler(BaseHTTPRequestHandler):
        def _handle(self) -> None:
            url = urlparse(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            request = Request(self.command, url.path, parse_qs(url.query), json.loads(raw) if raw else None)
            fake.requests.append(request)
            status, payload = _respond(request)
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PATCH = do_DELETE = _handle

        def log_message(self, *args: Any) -> None:  # keep test output quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    fake.endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return fake, server
