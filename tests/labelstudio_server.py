"""A real Label Studio for tests: its own cached venv (tests/tool_venv.py), started headless on the loopback.

The server runs on a free loopback port with SQLite in a data folder of the test's, a user and a
legacy API token given on the command line, and local files served from one document root
(LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED, LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT).

Usage::

    venv = ensure_installed()                       # InstallError when it cannot be installed
    with LabelStudioServer(venv, data_dir, document_root) as server:
        server.url, server.token                    # http://127.0.0.1:PORT, API token
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests import tool_venv
from tests.gcs_server import free_port

VERSION = "1.23.2"
VENV_NAME = "label-studio-1.23"
REQUIREMENTS = (f"label-studio=={VERSION}",)
START_TIMEOUT = 300.0
USERNAME = "taudis@example.com"
PASSWORD = "taudis-test-password"
TOKEN = "taudis0test0token0000000000000000000000"


def is_installed() -> bool:
    """Whether the cached Label Studio venv is complete."""
    return tool_venv.is_installed(VENV_NAME, REQUIREMENTS)


def ensure_installed() -> Path:
    """The cached Label Studio venv, installed first (about 4 minutes, 1 GB) if it is not there.

    Raises:
        tool_venv.InstallError: it could not be installed.
    """
    return tool_venv.ensure_venv(VENV_NAME, REQUIREMENTS)


def seed_data_dir(venv: Path, dest: Path) -> Path:
    """Fill ``dest`` with a copy of an empty, migrated data folder (the user and token made).

    A fresh data folder costs the first start about a minute of database migrations; the
    template made once (by starting and stopping a server on it) is cached beside the venv, so
    later sessions start in seconds.
    """
    template = tool_venv.cache_dir() / f"{VENV_NAME}.data"
    with tool_venv.locked(template.parent / f"{template.name}.lock"):
        if not (template / tool_venv.READY_MARK).is_file():
            staging = Path(tempfile.mkdtemp(prefix=f"{template.name}.", suffix=".tmp", dir=template.parent))
            try:
                LabelStudioServer(venv, staging, staging).start().stop()
                (staging / "server.log").unlink(missing_ok=True)
                (staging / tool_venv.READY_MARK).write_text(VERSION + "\n")
                shutil.rmtree(template, ignore_errors=True)
                staging.rename(template)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(template, dest, dirs_exist_ok=True)
    return dest


class LabelStudioServer:
    """One Label Studio process (SQLite in ``data_dir``) serving local files under ``document_root``.

    Args:
        venv: the Label Studio venv (``ensure_installed()``).
        data_dir: Label Studio's data folder (database, exports, uploads).
        document_root: LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT: local-files storages must lie under it.
        port: the port (default: a free one).
    """

    def __init__(self, venv: Path, data_dir: Path, document_root: Path, port: int | None = None):
        self.venv, self.data_dir, self.document_root = venv, Path(data_dir), Path(document_root)
        self.port = port or free_port()
        self.token = TOKEN
        self.log_path = self.data_dir / "server.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = START_TIMEOUT) -> LabelStudioServer:
        """Start the process and wait until /health answers."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
            "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(self.document_root),
            "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
            "DJANGO_DB": "sqlite",
            # Nothing leaves the machine: no error reports, no version check, no analytics.
            "SENTRY_DSN": "",
            "FRONTEND_SENTRY_DSN": "",
            "LATEST_VERSION_CHECK": "false",
            "COLLECT_ANALYTICS": "false",
            "OMP_WAIT_POLICY": "PASSIVE",
        }
        env.pop("VIRTUAL_ENV", None)
        command = [
            str(self.venv / "bin" / "python"), "-m", "label_studio.server", "start",
            "--no-browser", "--internal-host", "127.0.0.1", "--port", str(self.port),
            "--data-dir", str(self.data_dir), "--username", USERNAME, "--password", PASSWORD,
            "--user-token", self.token, "--enable-legacy-api-token",
        ]  # fmt: skip
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        atexit.register(self.stop)
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"label-studio exited with {self.process.returncode}: {self.log()}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.5)
        raise RuntimeError(f"label-studio did not answer /health within {timeout:.0f} s: {self.log()}")

    def stop(self) -> None:
        """Stop the process group (SIGTERM, then SIGKILL): the server runs workers of its own."""
        if self.process is None or self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        except ProcessLookupError:
            pass

    def log(self) -> str:
        return tool_venv.tail(self.log_path, 4000)

    def __enter__(self) -> LabelStudioServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
