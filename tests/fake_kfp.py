"""A fake KFP REST API (v2beta1) on loopback that records what clients send.

Just enough of the API for kfp.Client to create experiments, runs and recurring runs; each
request is kept as (method, path, query, JSON body) for tests to inspect.
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

    class Handler(BaseHTTPRequestHandler):
        def _handle(self) -> None:
            url = urlparse(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            request = Request(self.command, url.path, parse_qs(url.query), json.loads(raw) if raw else None)
            fake.requests.append(request)
            status, payload = _responses(request)
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_DELETE = _handle

        def log_message(self, *args: Any) -> None:  # keep test output quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    fake.host = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return fake, server
