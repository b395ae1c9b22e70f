"""Shared fixtures: a real fake-gcs-server for the whole session, buckets, and storage roots.

Fixtures for any test module:

- ``gcs_server`` (session): a running :class:`tests.gcs_server.FakeGcsServer` (memory backend)
  with ``STORAGE_EMULATOR_HOST`` pointing at it for the whole session.
- ``gcs_bucket`` (function): ``"gs://<new bucket>"`` on that server, empty.
- ``storage_root`` (function, parametrised ``local`` / ``gcs``): a base URI for a test's files:
  a fresh temporary directory, or ``gs://<new bucket>/root``. A test that takes it runs twice.
- ``fs_gcs_server`` (function): a separate server with the filesystem backend (data survives
  ``restart()``), with ``STORAGE_EMULATOR_HOST`` pointing at it for the test only, for fault tests.
"""

from __future__ import annotations

import itertools
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Fail fast in tests: retries of a dead server give up after 30 s instead of 120 s.
os.environ.setdefault("TAUDIS_GCS_RETRY_TIMEOUT", "30")

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gcs_server import FakeGcsServer

_bucket_numbers = itertools.count()


@pytest.fixture(scope="session")
def gcs_server() -> Iterator[FakeGcsServer]:
    """A fake-gcs-server (memory backend) for the session, with STORAGE_EMULATOR_HOST set."""
    server = FakeGcsServer(backend="memory").start()
    previous = os.environ.get("STORAGE_EMULATOR_HOST")
    os.environ["STORAGE_EMULATOR_HOST"] = server.url
    try:
        yield server
    finally:
        server.stop()
        if previous is None:
            os.environ.pop("STORAGE_EMULATOR_HOST", None)
        else:
            os.environ["STORAGE_EMULATOR_HOST"] = previous


@pytest.fixture
def gcs_bucket(gcs_server: FakeGcsServer) -> str:
    """A new empty bucket on the session server, as ``gs://name``."""
    os.environ["STORAGE_EMULATOR_HOST"] = gcs_server.url
    return gcs_server.create_bucket(f"taudis-test-{os.getpid()}-{next(_bucket_numbers)}")


@pytest.fixture(params=["local", "gcs"])
def storage_root(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A base URI for a test's files: a temporary directory, or a folder in a new bucket."""
    if request.param == "local":
        return str(tmp_path / "root")
    bucket = request.getfixturevalue("gcs_bucket")
    return f"{bucket}/root"


@pytest.fixture
def fs_gcs_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeGcsServer]:
    """A fake-gcs-server with the filesystem backend, restartable without losing data."""
    server = FakeGcsServer(backend="filesystem", root=tmp_path / "gcs-data").start()
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", server.url)
    try:
        yield server
    finally:
        server.stop()
