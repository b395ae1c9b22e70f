"""Where a storage benchmark writes: the fake-gcs-server the tests use, or a local temporary folder.

with storage_root("gcs", "ledger-bench") as root:   # gs://ledger-bench
    ...
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@contextmanager
def storage_root(kind: str, name: str) -> Iterator[str]:
    """A fresh bucket ``name`` on a fake-gcs-server started for the block ("gcs"), or a new local
    folder ("local"); taudis.storage reaches the server through STORAGE_EMULATOR_HOST."""
    if kind != "gcs":
        yield tempfile.mkdtemp(prefix=f"taudis-{name}-")
        return
    sys.path.insert(0, str(ROOT / "tests"))
    from gcs_server import FakeGcsServer

    server = FakeGcsServer(backend="memory").start()
    os.environ["STORAGE_EMULATOR_HOST"] = server.url
    try:
        yield server.create_bucket(name)
    finally:
        server.stop()
