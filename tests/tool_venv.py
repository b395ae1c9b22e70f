"""Tools the tests need that cannot share taudis's environment, each in its own cached venv.

Label Studio and datumaro pin their own numpy, pandas, Pillow or Django, so each lives in
``$TAUDIS_CACHE/<name>`` (default ``${XDG_CACHE_HOME:-~/.cache}/taudis/<name>``), outside any
clone, installed once from PyPI under ``nice`` into a temporary folder that is renamed into place
only when pip finished, so a killed install never leaves a half venv. Run a tool as
``<venv>/bin/python -m <module>``: that works after the rename, the scripts' shebangs do not.
A file lock serialises installs of parallel test workers.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

READY_MARK = ".taudis-ready"
INSTALL_TIMEOUT = 1800.0


class InstallError(RuntimeError):
    """A tool could not be installed (no network, no disk, a failed build)."""


def cache_dir() -> Path:
    """Where slow-to-make test tools are cached, outside any clone."""
    if os.environ.get("TAUDIS_CACHE"):
        return Path(os.environ["TAUDIS_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "taudis"


def is_installed(name: str, requirements: Sequence[str]) -> bool:
    """Whether the venv ``name`` is complete, with exactly these requirements."""
    mark = cache_dir() / name / READY_MARK
    return mark.is_file() and mark.read_text().split() == list(requirements)


def ensure_venv(name: str, requirements: Sequence[str]) -> Path:
    """The cached venv ``name`` with ``requirements`` installed, installing it first if needed.

    Raises:
        InstallError: with the tail of pip's output (the whole log is ``<cache>/<name>.install.log``).
    """
    target = cache_dir() / name
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with locked(target.parent / f"{name}.lock"):  # another worker may be installing it right now
            if not is_installed(name, requirements):
                _install(target, list(requirements), target.parent / f"{name}.install.log")
    except OSError as err:
        raise InstallError(f"cannot use the cache folder {target.parent}: {err}") from err
    return target


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if need be) for the block."""
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _install(target: Path, requirements: list[str], log: Path) -> None:
    staging = Path(tempfile.mkdtemp(prefix=f"{target.name}.", suffix=".tmp", dir=target.parent))
    python = str(staging / "bin" / "python")
    commands = [
        ["nice", "-n", "10", sys.executable, "-m", "venv", str(staging)],
        ["nice", "-n", "10", python, "-m", "pip", "install", "--disable-pip-version-check", "-q", *requirements],
    ]
    try:
        with open(log, "w") as out:
            for command in commands:
                done = subprocess.run(
                    command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, timeout=INSTALL_TIMEOUT
                )
                if done.returncode != 0:
                    raise InstallError(f"{' '.join(command[3:])} exited {done.returncode}: {tail(log)}")
        (staging / READY_MARK).write_text(" ".join(requirements) + "\n")
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise InstallError(f"installing {' '.join(requirements)} failed: {err}: {tail(log)}") from err
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def tail(path: Path, size: int = 2000) -> str:
    """The end of a log file ('' if there is none)."""
    try:
        return path.read_text(errors="replace")[-size:]
    except OSError:
        return ""
