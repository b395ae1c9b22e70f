"""CPU numerics of training and inference: threads, and portable kernels.

torch on a CPU picks its kernels by the instruction set it finds, in three layers: its own
vectorised kernels, MKL's BLAS and oneDNN's convolutions. Each layer changes the trained weights:
on an AVX-512 machine a 40-iteration training gave five different models, one with the defaults,
one for each layer pinned to AVX2 and one with portable numerics (bench/numerics.py). So the same
seed, images and config train different models on machines of different CPU generations, and a
comparison of campaigns run on several machines compares their CPUs as well.

Portable numerics (``TAUDIS_PORTABLE_NUMERICS=1``) takes a path that every x86-64 CPU with AVX2
has, Intel's and AMD's alike: torch's kernels at AVX2 (``ATEN_CPU_CAPABILITY``), MKL in its
conditional numerical reproducibility mode on its ``COMPATIBLE`` branch (``MKL_CBWR``), and
convolutions through torch and MKL instead of oneDNN, which makes no such promise. MKL's AVX2
branch is documented for Intel CPUs only: on any other it silently falls back to the CPU's own
branch. Measured on an AMD EPYC (bench/numerics.py), ``MKL_CBWR=AVX2`` trained the same weights
as no setting, and the portable weights so defined differed from an Intel Xeon's.
``COMPATIBLE`` is the branch MKL documents for Intel and compatible CPUs alike (SSE2 without the
approximate rcpps/rsqrtps, whose results each CPU design defines). Both variables are
read when the kernels are first used, so they belong in the environment the process starts with
(:func:`portable_environment`); :func:`configure` sets them if they are missing and refuses to
go on if torch has already chosen other kernels; a compiled pipeline carries them in its model
steps' containers (``taudis pipeline compile --portable-numerics``). The price is in
bench/results/numerics.csv (``vs_native``).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

SWITCH = "TAUDIS_PORTABLE_NUMERICS"
PORTABLE = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "COMPATIBLE"}


def portable_environment() -> dict[str, str]:
    """What a child process's environment needs for portable numerics."""
    return {SWITCH: "1", **PORTABLE}


def portable() -> bool:
    return os.environ.get(SWITCH, "") not in ("", "0")


def configure(num_threads: int) -> None:
    """Set torch's CPU threads (0: torch's default) and, when asked for, portable numerics.
    Raises RuntimeError if portable numerics come too late."""
    import torch

    if num_threads > 0:
        torch.set_num_threads(num_threads)
    if portable():
        if not {"avx2", "fma"} <= _flags():
            raise RuntimeError(f"{SWITCH}=1, but this CPU ({cpu()['model'] or 'unknown'}) has no AVX2 and FMA: "
                               "portable numerics need an x86-64 CPU that has them")  # fmt: skip
        for name, value in PORTABLE.items():
            os.environ.setdefault(name, value)
        capability = torch.backends.cpu.get_cpu_capability()
        if capability != "AVX2" or os.environ["MKL_CBWR"] != PORTABLE["MKL_CBWR"]:
            raise RuntimeError(
                f"{SWITCH}=1, but torch already runs {capability} kernels (MKL_CBWR="
                f"{os.environ['MKL_CBWR']}): start the process with "
                + " ".join(f"{k}={v}" for k, v in PORTABLE.items())
            )
        torch.backends.mkldnn.enabled = False  # type: ignore[assignment]  # the documented switch; typed as a descriptor


def cpu() -> dict[str, str]:
    """This machine's CPU: vendor, model name and a digest of its flags (the kernels it can run;
    virtual machines often share one generic model name)."""
    fields = _cpuinfo()
    flags = " ".join(sorted(set(fields.get("flags", "").split())))
    return {
        "vendor": fields.get("vendor_id", ""),
        "model": fields.get("model name", ""),
        "flags": hashlib.sha256(flags.encode()).hexdigest()[:8],
    }


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (empty where there is none)."""
    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.is_file() else []
    fields: dict[str, str] = {}
    for key, _, value in (line.partition(":") for line in lines):
        fields.setdefault(key.strip(), value.strip())
    return fields


def _flags() -> set[str]:
    return set(_cpuinfo().get("flags", "").split())


def describe() -> dict[str, Any]:
    """The numerics this process runs with, for a training's metrics."""
    import torch

    return {
        "cpu": cpu(),
        "portable": portable(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "mkl_cbwr": os.environ.get("MKL_CBWR"),
        "onednn": bool(torch.backends.mkldnn.enabled),
        "threads": torch.get_num_threads(),
    }
