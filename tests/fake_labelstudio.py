"""A small fake of Label Studio's REST API on the loopback, with faults on demand (for push/pull unit tests).

It answers the endpoints ``taudis labelstudio`` calls, the way Label Studio 1.23 does (checked
against the real one in tests/test_labelstudio.py): projects (list with a ``title`` filter that
matches substrings, create, get, patch), tasks (paged ``{"total", "tasks"}``, 404 past the last
page), import, the JSON export, and annotations. Faults: ``fail(method, path, *statuses)`` answers
the next matching requests with those statuses; ``lose_import_answers`` applies an import and
then answers 502, as a proxy that drops the reply would; ``expire_access()`` revokes the access
tokens issued for ``PERSONAL_TOKEN`` at ``/api/token/refresh/``.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

TOKEN = "fake-token"
PERSONAL_TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJ0b2tlbl90eXBlIjoicmVmcmVzaCJ9.ZmFrZS1zaWduYXR1cmU"  # a JWT's shape


class FakeLabelStudio:
    def __init__(self) -> None:
        self.projects: dict[int, dict[str, Any]] = {}
        self.tasks: dict[int, dict[str, Any]] = {}
        self.faults: list[tuple[str, str, int]] = []
        self.lose_import_answers = 0
        self.access_tokens: set[str] = set()  # issued for PERSONAL_TOKEN; expire_access() revokes them
        self.refreshes = 0
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                with fake.lock:
                    status, answer = fake.answer(method, self.path, self.headers.get("Authorization"), body)
                self._send(status, answer)

            def do_GET(self) -> None:
                self._handle("GET")

            def do_POST(self) -> None:
                self._handle("POST")

            def do_PATCH(self) -> None:
                self._handle("PATCH")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> FakeLabelStudio:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def expire_access(self) -> None:
        """Every access token issued so far stops working, as they do after minutes."""
        self.access_tokens.clear()

    def _refresh(self, body: Any) -> tuple[int, Any]:
        if not isinstance(body, dict) or body.get("refresh") != PERSONAL_TOKEN:
            return 401, {"detail": "Token is invalid", "code": "token_not_valid"}
        self.refreshes += 1
        access = f"access-{self.refreshes}"
        self.access_tokens.add(access)
        return 200, {"access": access}

    def fail(self, method: str, path: str, *statuses: int) -> None:
        self.faults += [(method, path, status) for status in statuses]

    # ---------------------------------------------------------------------------- the API

    def answer(self, method: str, raw_path: str, auth: str | None, body: Any) -> tuple[int, Any]:
        parts = urlsplit(raw_path)
        path, query = parts.path, {k: v[0] for k, v in parse_qs(parts.query).items()}
        self.requests.append((method, path))
        for k, (m, p, status) in enumerate(self.faults):
            if m == method and path.startswith(p):
                del self.faults[k]
                return status, {"detail": "injected"}
        if (method, path) == ("POST", "/api/token/refresh/"):
            return self._refresh(body)
        if auth != f"Token {TOKEN}" and not (auth and auth.removeprefix("Bearer ") in self.access_tokens):
            return 401, {"detail": "Authentication credentials were not provided."}
        route = path.rstrip("/").split("/")[2:]  # after /api
        if route == ["projects"]:
            return self._projects(method, query, body)
        if len(route) == 2 and route[0] == "projects":
            return self._project(method, int(route[1]), body)
        if len(route) == 3 and route[0] == "projects" and route[2] == "import":
            return self._import(int(route[1]), body)
        if len(route) == 3 and route[0] == "projects" and route[2] == "export":
            pid = int(route[1])
            return 200, [t for t in self.tasks.values() if t["project"] == pid and t["annotations"]]
        if route == ["tasks"]:
            return self._tasks(query)
        if len(route) == 3 and route[0] == "tasks" and route[2] == "annotations":
            return self._annotate(int(route[1]), body)
        return 404, {"detail": "Not found."}

    def _projects(self, method: str, query: dict[str, str], body: Any) -> tuple[int, Any]:
        if method == "POST":
            pid = len(self.projects) + 1
            self.projects[pid] = {"id": pid, "title": body["title"], "label_config": body.get("label_config", "")}
            return 201, self.projects[pid]
        found = [p for p in self.projects.values() if query.get("title", "") in p["title"]]
        size, page = int(query.get("page_size", 30)), int(query.get("page", 1))
        chunk = found[(page - 1) * size : page * size]
        more = page * size < len(found)
        return 200, {"count": len(found), "next": "more" if more else None, "previous": None, "results": chunk}

    def _project(self, method: str, pid: int, body: Any) -> tuple[int, Any]:
        if pid not in self.projects:
            return 404, {"detail": "Not found."}
        if method == "PATCH":
            self.projects[pid].update(body)
        return 200, self.projects[pid]

    def _import(self, pid: int, tasks: list[dict[str, Any]]) -> tuple[int, Any]:
        for task in tasks:
            tid = len(self.tasks) + 1
            self.tasks[tid] = {"id": tid, "project": pid, "annotations": [], **task}
        if self.lose_import_answers:
            self.lose_import_answers -= 1
            return 502, {"detail": "the answer was lost"}
        return 201, {"task_count": len(tasks)}

    def _tasks(self, query: dict[str, str]) -> tuple[int, Any]:
        ours = [t for t in self.tasks.values() if t["project"] == int(query["project"])]
        size, page = int(query.get("page_size", 30)), int(query.get("page", 1))
        if page > 1 and (page - 1) * size >= len(ours):
            return 404, {"detail": "Invalid page."}
        return 200, {"total": len(ours), "tasks": ours[(page - 1) * size : page * size]}

    def _annotate(self, tid: int, body: dict[str, Any]) -> tuple[int, Any]:
        annotation = {"id": sum(len(t["annotations"]) for t in self.tasks.values()) + 1, "updated_at": "t0", **body}
        self.tasks[tid]["annotations"].append(annotation)
        return 201, annotation
