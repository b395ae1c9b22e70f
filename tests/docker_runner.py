"""kfp.local's DockerRunner on podman, for the container tier of the tests (importable by any test module).

- :class:`PodmanService`: podman's Docker-compatible API on a unix socket of the test run's own
  (``podman system service --time=0 unix://PATH``); DockerRunner reaches it through DOCKER_HOST.
- :func:`run_docker_container`: the one workaround, for tests only. kfp 2.17's
  ``docker_task_handler.run_docker_container`` starts each step with ``auto_remove=True`` and
  then streams its logs and waits for its exit code. podman 4.3 answers 500 instead of 404 for a
  container that is already gone, so a short step crashes the runner (an APIError kfp does not
  catch), and kfp's own fallback for a vanished container (``except NotFound: return 0``) can
  report a failed step as a success. This replacement keeps the container until its exit code is
  read, then removes it. ``test_kfp_docker_internals_are_what_the_workaround_replaces`` fails as
  soon as kfp's function changes, so the workaround is revisited (or dropped) then.
- :func:`require`: the container tier is required in CI (CI=true) and skipped, saying why, elsewhere.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

# What the workaround replaces: kfp.local.docker_task_handler.run_docker_container.
KFP_MODULE = "kfp.local.docker_task_handler"
KFP_FUNCTION = "run_docker_container"


def require(present: bool, what: str) -> None:
    """Skip (or, with CI=true, fail) unless ``present``; ``what`` says what is missing and how to get it."""
    if present:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"required in CI (CI=true) but missing: {what}")
    pytest.skip(f"container tier not run: {what} (CI requires it)")


def run_docker_container(client: Any, image: str, command: list[str], volumes: dict[str, Any], **run_args: Any) -> int:
    """kfp's run_docker_container without auto-remove: stream the logs, return the real exit code.

    The image must exist already (the tests build it): nothing is pulled from a registry.
    """
    container = client.containers.run(
        image=image,
        command=command,
        detach=True,
        stdout=True,
        stderr=True,
        volumes=volumes,
        auto_remove=False,
        **run_args,
    )
    try:
        for line in container.logs(stream=True, follow=True):
            print(line.decode(errors="replace"), end="")
        return int(container.wait()["StatusCode"])
    finally:
        container.remove(force=True)


class PodmanService:
    """podman's Docker-compatible API on a private unix socket, for as long as the tests need it.

    Args:
        env: the environment podman runs with (CONTAINERS_CONF, CONTAINERS_STORAGE_CONF, ...).
    """

    def __init__(self, env: Mapping[str, str]):
        self.env = dict(env)
        self._tmp = tempfile.mkdtemp(prefix="taudis-podman-api-")
        self.socket = Path(self._tmp) / "podman.sock"
        self.log_path = Path(self._tmp) / "service.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def docker_host(self) -> str:
        """The value for DOCKER_HOST."""
        return f"unix://{self.socket}"

    def start(self, timeout: float = 30.0) -> PodmanService:
        """Start the service and wait until it answers a ping."""
        import docker

        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                ["podman", "system", "service", "--time=0", self.docker_host],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"podman system service exited with {self.process.returncode}: {self.log()}")
            if self.socket.exists():
                try:
                    client = docker.DockerClient(base_url=self.docker_host)
                    client.ping()
                    client.close()
                    return self
                except docker.errors.DockerException:
                    pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"podman system service did not answer within {timeout} s: {self.log()}")

    def stop(self) -> None:
        """Stop the service (SIGTERM, then SIGKILL) and remove its socket folder."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        shutil.rmtree(self._tmp, ignore_errors=True)

    def log(self) -> str:
        """The service's output so far (for failure messages)."""
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except FileNotFoundError:
            return ""
