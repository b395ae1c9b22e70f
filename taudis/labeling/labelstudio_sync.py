"""`taudis labelstudio`: push a round's tasks into a Label Studio project, pull its finished labels back.

Talks to a running Label Studio (1.x) through its REST API with either kind of its tokens (see
:class:`Client`): a personal access token, or a legacy token (``--user-token`` at start). The URL and
token come from ``--url`` / ``LABEL_STUDIO_URL`` and ``LABEL_STUDIO_API_KEY`` (never put a token on
a command line others can read). Transient HTTP failures (connection errors, 429, 5xx) are retried
with backoff.

``push TASKS`` reads ``TASKS/tasks.json`` and ``TASKS/label_config.xml`` (a round's
``tasks/labelstudio/`` folder, written by ``taudis export``; local or ``gs://``) and imports into the
project every task that it does not hold yet (a task is known by its ``data.image_id``, else by its
``data.image``), so pushing twice adds nothing. ``--title T --create`` makes the project with the
labelling config if no project is called T. A project whose labelling config differs from the
folder's is refused unless ``--update-config`` replaces it (predictions that name controls the
project lacks would not show).

``pull --out FOLDER`` exports the project in Label Studio's JSON format, keeps the tasks that have
a submitted annotation that no earlier pull has written (any ``*.json`` under FOLDER, so also
ingest's done/ and rejected/), drops their predictions and drafts, and writes them atomically as
``FOLDER/<name>-<8 hex of the content>.json`` (default name ``labelstudio-<project>-<UTC time>``, so
that ingest, which goes in name order, takes pulls in the order they were made). Nothing new:
nothing is written, so pulling twice writes one file. An annotation edited in Label Studio after
it was pulled is pulled again into ``FOLDER/corrections/``: when FOLDER is a campaign's
``incoming/``, the next ingest replaces those images' labels with the edit. A task the labels
reader refuses on its own (two annotators and no ground truth, a rectangle) is written apart, to
``FOLDER/<name>-refused-<hash>.json``, so that ingest's refusal of it holds back no other task;
once one of its annotations changes in Label Studio (marked ground truth, edited or deleted), it
comes with a later pull. ``--retry-rejected`` pulls again the tasks of files ingest rejected, as
they stand now (fix first what ingest refused them for: an image name the pool lacks, a category).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import re
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import requests

from taudis import storage

TASKS_FILE = "tasks.json"
CONFIG_FILE = "label_config.xml"
URL_ENV = "LABEL_STUDIO_URL"
TOKEN_ENV = "LABEL_STUDIO_API_KEY"
TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}
ATTEMPTS = 6
BACKOFF = 0.5  # seconds, doubled per attempt: 0.5 + 1 + 2 + 4 + 8 s at most
TIMEOUT = 120.0
REFRESH_PATH = "/api/token/refresh/"
JWT = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
PAGE_SIZE = 500
REFUSED_FILE = re.compile(r"-refused-[0-9a-f]{8}\.json$")  # pull's file of the tasks the reader refuses
IMPORT_BATCH = 200


def is_personal_token(token: str) -> bool:
    """Whether ``token`` is a personal access token (a JWT: three dot-separated base64url parts)."""
    return JWT.fullmatch(token) is not None


class LabelStudioError(RuntimeError):
    """Label Studio refused a request, or the project and the tasks do not fit; the message says which."""


class TransientError(LabelStudioError):
    """A failure that may pass: the request ran out of retries on connection errors, 429 or 5xx."""


class Client:
    """A Label Studio REST API client with retries of transient failures.

    Either kind of Label Studio token works. A personal access token (a JWT: what Account &
    Settings offers in Label Studio 1.23, whose new organizations allow no other kind) is a
    refresh token: the client trades it for an access token at ``/api/token/refresh/`` and again
    whenever one is refused, since they live minutes and a pull can take longer. A legacy token
    (40 hex digits) is sent as is (``Authorization: Token ...``).

    Args:
        url: the server, e.g. ``http://localhost:8080``.
        token: the personal access token or the legacy token.
        attempts: tries per request on transient failures.
        backoff: the first pause between tries in seconds (doubled each time).
    """

    def __init__(self, url: str, token: str, *, attempts: int = ATTEMPTS, backoff: float = BACKOFF):
        self.url = url.rstrip("/")
        self.session = requests.Session()
        self.token = token.strip()
        self.personal = is_personal_token(self.token)
        if not self.personal:
            self.session.headers["Authorization"] = f"Token {self.token}"
        self.attempts, self.backoff = attempts, backoff

    def request(self, method: str, path: str, *, retry: bool = True, **kwargs: Any) -> requests.Response:
        """Send one request; retry transient failures when ``retry`` (the request is safe to repeat).

        Raises:
            TransientError: still failing transiently after the last try (or at once, if not ``retry``).
            LabelStudioError: any other non-2xx answer, with Label Studio's message.
        """
        if self.personal and "Authorization" not in self.session.headers:
            self._refresh_access()
        response = self._send(method, path, retry, kwargs)
        if response.status_code == 401 and self.personal:  # the access token expired: a 401 did nothing
            self._refresh_access()
            response = self._send(method, path, retry, kwargs)
        if not response.ok:
            raise LabelStudioError(f"{method} {path}: HTTP {response.status_code} {response.text[:500]}")
        return response

    def _send(self, method: str, path: str, retry: bool, kwargs: dict[str, Any]) -> requests.Response:
        """The first answer that is not transient (whatever its status), after retries."""
        kwargs.setdefault("timeout", TIMEOUT)
        for attempt in range(self.attempts if retry else 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                response = self.session.request(method, self.url + path, **kwargs)
            except (requests.ConnectionError, requests.Timeout) as err:
                failure = f"{method} {path}: {err}"
                continue
            if response.status_code in TRANSIENT_STATUS:
                failure = f"{method} {path}: HTTP {response.status_code} {response.text[:300]}"
                continue
            return response
        raise TransientError(f"{failure} (after {self.attempts if retry else 1} tries)")

    def _refresh_access(self) -> None:
        """Trade the personal access token for a fresh access token (retried like any safe request)."""
        self.session.headers.pop("Authorization", None)  # a stale access token must not ride along
        response = self._send("POST", REFRESH_PATH, True, {"json": {"refresh": self.token}})
        answer = f"POST {REFRESH_PATH}: HTTP {response.status_code} {response.text[:300]}"
        if response.status_code in (401, 403):
            raise LabelStudioError(
                f"{answer}: Label Studio refused the personal access token (revoked or expired?); create one in "
                "Account & Settings"
            )
        try:
            access = response.json().get("access") if response.ok else None
        except (ValueError, AttributeError):  # not JSON, or not an object: not Label Studio's answer
            access = None
        if not isinstance(access, str):
            raise LabelStudioError(
                f"{answer}: no access token in the answer (is {self.url} a Label Studio with personal access "
                "tokens?); a legacy token works with any version"
            )
        self.session.headers["Authorization"] = f"Bearer {access}"

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.request(method, path, **kwargs).json()

    # -------------------------------------------------------------------------------- projects

    def project(self, project_id: int) -> dict[str, Any]:
        return dict(self.json("GET", f"/api/projects/{project_id}"))

    def projects_titled(self, title: str) -> list[dict[str, Any]]:
        """Every project whose title is exactly ``title``."""
        found, page = [], 1
        while True:
            doc = self.json("GET", "/api/projects", params={"title": title, "page": page, "page_size": 100})
            results = doc.get("results", []) if isinstance(doc, dict) else doc
            found += [p for p in results if p.get("title") == title]
            if not (isinstance(doc, dict) and doc.get("next")):
                return found
            page += 1

    def create_project(self, title: str, label_config: str) -> dict[str, Any]:
        # Not retried: a retry whose first try landed would make a second project.
        body = {"title": title, "label_config": label_config}
        return dict(self.json("POST", "/api/projects", json=body, retry=False))

    def set_label_config(self, project_id: int, label_config: str) -> None:
        self.request("PATCH", f"/api/projects/{project_id}", json={"label_config": label_config})

    # ----------------------------------------------------------------------------------- tasks

    def tasks(self, project_id: int) -> list[dict[str, Any]]:
        """Every task of the project (its data and ids), page by page."""
        found: list[dict[str, Any]] = []
        page = 1
        while True:
            params = {"project": project_id, "page": page, "page_size": PAGE_SIZE}
            doc = self.json("GET", "/api/tasks", params=params)
            found += doc.get("tasks", [])
            if len(found) >= int(doc.get("total", 0)) or not doc.get("tasks"):
                return found
            page += 1

    def import_tasks(self, project_id: int, tasks: Sequence[Mapping[str, Any]]) -> int:
        # Not retried here: push() re-lists the project's tasks before trying again.
        doc = self.json("POST", f"/api/projects/{project_id}/import", json=list(tasks), retry=False)
        return int(doc.get("task_count", len(tasks)))

    def export_json(self, project_id: int) -> list[dict[str, Any]]:
        """The project's tasks with annotations in Label Studio's JSON export format."""
        params = {"exportType": "JSON", "download_all_tasks": "false"}
        doc = self.json("GET", f"/api/projects/{project_id}/export", params=params)
        if not isinstance(doc, list):
            raise LabelStudioError(f"project {project_id}: the JSON export is not a list of tasks")
        return doc

    def export(self, project_id: int, export_type: str) -> bytes:
        """The project's export in any of Label Studio's formats (``COCO`` comes as a zip)."""
        params = {"exportType": export_type, "download_all_tasks": "false"}
        return self.request("GET", f"/api/projects/{project_id}/export", params=params).content


# -------------------------------------------------------------------------------------- push


def task_key(task: Mapping[str, Any]) -> str:
    """What identifies a task across pushes: its pool image id, else its image URL."""
    data = task.get("data", {})
    if isinstance(data.get("image_id"), int):
        return f"image_id:{data['image_id']}"
    return f"image:{data.get('image')}"


def _config_names(label_config: str) -> set[tuple[str, str]]:
    """(tag, name) of every named tag: what predictions refer to."""
    try:
        root = ET.fromstring(label_config)
    except ET.ParseError as err:
        raise LabelStudioError(f"the labelling config is not valid XML: {err}") from err
    return {(element.tag, str(element.get("name"))) for element in root.iter() if element.get("name")}


def resolve_project(
    client: Client,
    label_config: str,
    *,
    project_id: int | None = None,
    title: str | None = None,
    create: bool = False,
    update_config: bool = False,
) -> tuple[dict[str, Any], bool]:
    """The project to push into (by id, or by exact title), and whether it was created now.

    Raises:
        LabelStudioError: no such project (and not ``create``), several of that title, or a
            labelling config that differs (and not ``update_config``).
    """
    if project_id is not None:
        project = client.project(project_id)
    else:
        if not title:
            raise LabelStudioError("name the project: --project ID or --title TITLE")
        found = client.projects_titled(title)
        if len(found) > 1:
            raise LabelStudioError(f"{len(found)} projects are titled {title!r} (ids {[p['id'] for p in found]})")
        if not found:
            if not create:
                raise LabelStudioError(f"no project is titled {title!r} (pass --create to make it)")
            return client.create_project(title, label_config), True
        project = found[0]
    if project.get("label_config", "").strip() != label_config.strip():
        if not update_config:
            missing = _config_names(label_config) - _config_names(project.get("label_config") or "<View/>")
            raise LabelStudioError(
                f"project {project['id']}'s labelling config differs from the tasks' (theirs lacks {sorted(missing)}); "
                "pass --update-config to replace it"
            )
        client.set_label_config(int(project["id"]), label_config)
    return project, False


def push(
    client: Client,
    tasks_uri: str,
    *,
    project_id: int | None = None,
    title: str | None = None,
    create: bool = False,
    update_config: bool = False,
) -> dict[str, Any]:
    """Import a tasks folder's tasks that the project does not hold yet (see the module docstring).

    Returns:
        A summary: project, created, tasks (in the folder), imported, already (there before).
    """
    tasks = storage.read_json(storage.join(tasks_uri, TASKS_FILE))
    label_config = storage.read_text(storage.join(tasks_uri, CONFIG_FILE))
    if not isinstance(tasks, list):
        raise LabelStudioError(f"{storage.join(tasks_uri, TASKS_FILE)}: expected a list of tasks")
    project, created = resolve_project(
        client, label_config, project_id=project_id, title=title, create=create, update_config=update_config
    )
    pid = int(project["id"])
    imported, already = _import_missing(client, pid, tasks)
    return {"project": pid, "created": created, "tasks": len(tasks), "imported": imported, "already": already}


def _import_missing(client: Client, project_id: int, tasks: Sequence[Mapping[str, Any]]) -> tuple[int, int]:
    """Import what is missing, batch by batch; after a failed batch, look again before retrying.

    Returns:
        (imported, already): how many of ``tasks`` this call added, and how many were there before.
    """
    ours = {task_key(t) for t in tasks}
    before = ours & {task_key(t) for t in client.tasks(project_id)}
    known = before
    for attempt in range(client.attempts):
        missing = [t for t in tasks if task_key(t) not in known]
        try:
            for start in range(0, len(missing), IMPORT_BATCH):
                client.import_tasks(project_id, missing[start : start + IMPORT_BATCH])
            break
        except TransientError:
            if attempt == client.attempts - 1:
                raise
            time.sleep(client.backoff * 2**attempt)
            known = {task_key(t) for t in client.tasks(project_id)}  # what landed despite the failure
    after = ours & {task_key(t) for t in client.tasks(project_id)}
    return len(after - before), len(before)


# -------------------------------------------------------------------------------------- pull


def _submitted(task: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    annotations = task.get("annotations") or []
    return [a for a in annotations if isinstance(a, dict) and not a.get("was_cancelled")]


def pulled_keys(tasks: Iterable[Any]) -> set[tuple[Any, ...]]:
    """(project, task, annotation, updated_at) of every submitted annotation of a task list."""
    return {
        (task.get("project"), task.get("id"), a.get("id"), a.get("updated_at"))
        for task in tasks
        if isinstance(task, dict)
        for a in _submitted(task)
    }


def _earlier_pulls(
    folder: str, *, skip: str | None = None
) -> tuple[set[tuple[Any, ...]], set[frozenset[tuple[Any, ...]]]]:
    """What the Label Studio JSON exports under ``folder`` (but under ``skip``) hold: the annotation
    keys of every task pulled, and, for the tasks pulled into a file of refused tasks, each task's
    whole set of keys (:data:`REFUSED_FILE`)."""
    keys: set[tuple[Any, ...]] = set()
    refused: set[frozenset[tuple[Any, ...]]] = set()
    for uri in storage.list_uris(folder.rstrip("/") + "/"):
        if not uri.endswith(".json") or uri.endswith(".report.json"):
            continue
        if skip is not None and _under(uri, skip):
            continue
        try:
            doc = json.loads(storage.read_bytes(uri))
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue  # not ours to judge: ingest reports it
        if not isinstance(doc, list):
            continue
        if REFUSED_FILE.search(uri.rsplit("/", 1)[-1]):
            refused |= {frozenset(pulled_keys([task])) for task in doc}
        else:
            keys |= pulled_keys(doc)
    return keys, refused


def _under(uri: str, folder: str) -> bool:
    """Whether ``uri`` lies under ``folder``, however a local one is spelt (``file://`` or a path)."""
    if not storage.is_gcs(folder):
        uri, folder = str(storage.local_path(uri)), str(storage.local_path(folder))
    return uri.startswith(folder.rstrip("/") + "/")


def pull(
    client: Client, project_id: int, out: str, *, name: str | None = None, retry_rejected: bool = False
) -> dict[str, Any]:
    """Write the project's newly finished tasks to ``out`` (see the module docstring).

    Args:
        retry_rejected: pull again the tasks of files ingest rejected (under ``out/rejected/``), as
            they stand now: how the good tasks of a file that an earlier version of this command
            wrote whole, one bad task and all, come back.

    Returns:
        A summary: project, exported (tasks with a submitted annotation), new, written (URI or None),
        edited, corrections (URI or None), refused (tasks of ``new`` the reader refuses), held (URI
        of their own file, or None).
    """
    exported = [t for t in client.export_json(project_id) if _submitted(t)]
    for task in exported:
        task.setdefault("project", project_id)
    earlier, held = _earlier_pulls(out, skip=storage.join(out, "rejected") if retry_rejected else None)
    seen = {key[:3] for key in earlier}  # (project, task, annotation) without updated_at
    # A task refused before is pulled again once one of its annotations changes: one marked ground
    # truth (which touches it), or one deleted (which leaves the others as they were).
    fresh = [t for t in exported if not pulled_keys([t]) <= earlier and frozenset(pulled_keys([t])) not in held]
    edited = [t for t in fresh if any(key[:3] in seen for key in pulled_keys([t]) - earlier)]
    # Ingest takes or refuses a file whole: a task it would refuse (two annotators and no ground
    # truth, a rectangle) goes in a file of its own, so that it holds back no other task's labels.
    refused = [t for t in fresh if _refused_alone(t)]
    new = [t for t in fresh if t not in edited and t not in refused]
    edited = [t for t in edited if t not in refused]
    summary: dict[str, Any] = {
        "project": project_id, "exported": len(exported), "new": len(new), "written": None,
        "edited": len(edited), "corrections": None, "refused": len(refused), "held": None,
    }  # fmt: skip
    # Ingest takes files in name order, so names start with the pull's time: a later pull is
    # ingested after an earlier one. An annotation edited in Label Studio after it was pulled is
    # the tool's newer word on those images: it goes to corrections/, which replaces their labels.
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
    stem = name or f"labelstudio-{project_id}-{stamp}"
    for tasks, folder, key, suffix in (
        (new, out, "written", ""),
        (refused, out, "held", "-refused"),
        (edited, storage.join(out, "corrections"), "corrections", ""),
    ):
        if tasks:
            summary[key] = _write_pull(tasks, folder, stem + suffix)
    return summary


def _refused_alone(task: Mapping[str, Any]) -> bool:
    """Whether the labels reader finds a problem in ``task`` on its own (as ingest would, in any file)."""
    from taudis.labeling.labelstudio import read_labelstudio_json

    return bool(read_labelstudio_json([task], f"task {task.get('id')}").problems)


def _write_pull(tasks: Sequence[Mapping[str, Any]], folder: str, stem: str) -> str:
    slim = [{k: v for k, v in task.items() if k not in ("predictions", "drafts")} for task in tasks]
    data = storage.dumps_json(slim)
    target = storage.join(folder, f"{stem}-{hashlib.sha256(data).hexdigest()[:8]}.json")
    storage.write_bytes(target, data, content_type="application/json")  # atomic: a reader sees all or none
    return target


# --------------------------------------------------------------------------------------- CLI


def _client(args: argparse.Namespace, environ: Mapping[str, str]) -> Client:
    url = args.url or environ.get(URL_ENV)
    token = environ.get(TOKEN_ENV)
    if not url or not token:
        raise LabelStudioError(f"set --url (or {URL_ENV}) and {TOKEN_ENV} (the API token)")
    return Client(url, token)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="taudis labelstudio", description=__doc__.splitlines()[0])
    parser.add_argument("--url", help=f"the Label Studio server (default: ${URL_ENV}); token in ${TOKEN_ENV}")
    commands = parser.add_subparsers(dest="command", required=True)
    push_cmd = commands.add_parser("push", help="import a round's tasks folder into a project")
    push_cmd.add_argument("tasks", help="the tasks folder (<round>/tasks/labelstudio), local or gs://")
    push_cmd.add_argument("--project", type=int, help="the project id")
    push_cmd.add_argument("--title", help="the project's title (exact)")
    push_cmd.add_argument("--create", action="store_true", help="create the project (with --title) if missing")
    push_cmd.add_argument("--update-config", action="store_true", help="replace a differing labelling config")
    pull_cmd = commands.add_parser("pull", help="write the project's newly finished tasks as a JSON export")
    pull_cmd.add_argument("--project", type=int, help="the project id")
    pull_cmd.add_argument("--title", help="the project's title (exact)")
    pull_cmd.add_argument("--out", required=True, help="the folder, normally <campaign>/incoming")
    pull_cmd.add_argument("--name", help="the file's name without .json (default: from the project and content)")
    pull_cmd.add_argument(
        "--retry-rejected", action="store_true", help="pull again the tasks of files ingest rejected (OUT/rejected/)"
    )
    return parser


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Run ``push`` or ``pull`` and print its summary as JSON."""
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        client = _client(args, os.environ if environ is None else environ)
        if args.command == "push":
            summary = push(
                client,
                args.tasks,
                project_id=args.project,
                title=args.title,
                create=args.create,
                update_config=args.update_config,
            )
        else:
            summary = pull(
                client, _project_id(client, args), args.out, name=args.name, retry_rejected=args.retry_rejected
            )
    except (LabelStudioError, storage.StorageError) as err:
        print(f"taudis labelstudio {args.command}: {err}", file=sys.stderr)
        return 1
    print(json.dumps(summary))
    return 0


def _project_id(client: Client, args: argparse.Namespace) -> int:
    if args.project is not None:
        return int(args.project)
    if not args.title:
        raise LabelStudioError("name the project: --project ID or --title TITLE")
    found = client.projects_titled(args.title)
    if len(found) != 1:
        raise LabelStudioError(f"{len(found)} projects are titled {args.title!r}")
    return int(found[0]["id"])
