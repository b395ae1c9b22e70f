"""Portable numerics: a training asked for them runs the AVX2 path, MKL's compatible branch and no oneDNN, and
records it; too late is refused."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from model_fixtures import make_tiny_dataset, tiny_opts

from bench.numerics import train
from taudis.model import numerics


def test_portable_numerics_train_on_the_avx2_path_without_onednn_and_say_so(tmp_path: Path) -> None:
    make_tiny_dataset(tmp_path)
    native = train("native", tmp_path, tiny_opts(4))
    assert native["numerics"]["portable"] is False and native["numerics"]["onednn"] is True
    portable = train("portable", tmp_path, tiny_opts(4))
    assert portable["numerics"] == {"cpu": numerics.cpu(), "portable": True, "cpu_capability": "AVX2",
                                    "mkl_cbwr": "COMPATIBLE", "onednn": False, "threads": 1}  # fmt: skip
    assert train("portable", tmp_path, tiny_opts(4))["digest"] == portable["digest"]  # the same weights to the bit


def test_portable_numerics_asked_for_after_torch_chose_other_kernels_are_refused(monkeypatch) -> None:
    monkeypatch.setenv(numerics.SWITCH, "1")
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    monkeypatch.setenv("MKL_CBWR", "AUTO")  # another branch than the portable one
    with pytest.raises(RuntimeError, match="ATEN_CPU_CAPABILITY=avx2 MKL_CBWR=COMPATIBLE"):
        numerics.configure(0)
    import torch

    assert torch.backends.mkldnn.enabled  # refused before it changed anything


def test_portable_numerics_on_a_cpu_without_avx2_are_refused_by_name(monkeypatch) -> None:
    monkeypatch.setenv(numerics.SWITCH, "1")
    monkeypatch.delenv("MKL_CBWR", raising=False)
    monkeypatch.setattr(numerics, "_cpuinfo", lambda: {"model name": "Old Opteron", "flags": "fpu sse sse2"})
    with pytest.raises(RuntimeError, match=r"this CPU \(Old Opteron\) has no AVX2 and FMA"):
        numerics.configure(0)
    assert "MKL_CBWR" not in os.environ  # refused before it set anything
