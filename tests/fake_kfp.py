"""A fake KFP REST API (v2beta1) on loopback that records what clients send.

Just enough of the API for kfp.Client to create experiments, runs and recurring runs; each
request is kept as (method, path, query, JSON body) for tests to inspect.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from typing import Any

from tests.fake_rest import Request, serve


@dataclass
class FakeKfp:
    host: str
    requests: list[Request] = field(default_factory=list)

    def sent(self, method: str, path: str) -> list[Request]:
        return [r for r in self.requests if r.method == method and r.path == path]


def _responses(request: Request) -> tuple[int, dict[str, Any]]:
    if request.path.endswith("/healthz"):
        return 200, {"multi_user": False}
    if request.path == "/apis/v2beta1/experiments" and request.method == "POST":
        return 200, {"experiment_id": "exp-1", "display_name": request.body.get("display_name")}
    if request.path == "/apis/v2beta1/experiments":
        return 200, {"experiments": [], "total_size": 0}
    if request.path == "/apis/v2beta1/runs" and request.method == "POST":
        return 200, {"run_id": "run-1", "display_name": request.body.get("display_name"), "state": "PENDING"}
    if request.path == "/apis/v2beta1/recurringruns" and request.method == "POST":
        return 200, {"recurring_run_id": "recurring-1", "display_name": request.body.get("display_name")}
    return 404, {"error": f"fake KFP has no {request.method} {request.path}"}


def start_fake_kfp() -> tuple[FakeKfp, ThreadingHTTPServer]:
    fake = FakeKfp(host="")
    fake.host, server = serve(_responses, fake.requests)
    return fake, server
