"""A JSON REST server on loopback that records every request and answers from a function.

The fakes of the KFP and Vertex AI APIs (tests/fake_kfp.py, tests/fake_vertex.py) are each a
``respond`` function over this server: the HTTP plumbing lives here once.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    body: Any


Respond = Callable[[Request], tuple[int, dict[str, Any]]]


def serve(respond: Respond, requests: list[Request]) -> tuple[str, ThreadingHTTPServer]:
    """Start a server in a daemon thread; returns its base URL and the server (to shut down)."""

    class Handler(BaseHTTPRequestHandler):
        def _handle(self) -> None:
            url = urlparse(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            request = Request(self.command, url.path, parse_qs(url.query), json.loads(raw) if raw else None)
            requests.append(request)
            status, payload = respond(request)
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
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}", server
