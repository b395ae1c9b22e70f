"""Portable numerics: a training asked for them runs the AVX2 path and records it; too late is refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from taudis.model import numerics

ROOT = Path(__file__).resolve().parents[1]

# Trains 6 images for 4 iterations in a fresh process (the variables act when torch first picks
# its kernels) and prints the metrics' numerics and a digest of the weights.
TRAIN = """
import hashlib, json, sys
sys.path.insert(0, {tests!r})
import torch
from model_fixtures import make_tiny_dataset, tiny_opts
from taudis.model.train import train_model
root = {root!r}
make_tiny_dataset(__import__("pathlib").Path(root))
m = train_model(root + "/annotations/train.json", root + "/images", {out!r}, opts=tiny_opts(4), resume=False)
state = torch.load({out!r} + "/model_final.pth", weights_only=True)["model"]
digest = hashlib.sha256(b"".join(state[k].numpy().tobytes() for k in sorted(state))).hexdigest()
print(json.dumps({{"numerics": m["numerics"], "digest": digest}}))
"""


def _train(tmp_path: Path, name: str, env: dict[str, str]) -> dict:
    script = TRAIN.format(tests=str(ROOT / "tests"), root=str(tmp_path / "data"), out=str(tmp_path / name))
    clean = {k: v for k, v in os.environ.items() if k not in (numerics.SWITCH, *numerics.PORTABLE)}
    done = subprocess.run(
        [sys.executable, "-c", script], env={**clean, "OMP_WAIT_POLICY": "PASSIVE", **env}, cwd=ROOT,
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def test_portable_numerics_train_on_the_avx2_path_without_onednn_and_say_so(tmp_path: Path) -> None:
    native = _train(tmp_path, "native", {})
    assert native["numerics"]["portable"] is False and native["numerics"]["onednn"] is True
    # the switch alone: the process sets the variables itself, before torch picks a kernel
    first = _train(tmp_path, "portable", {numerics.SWITCH: "1"})
    assert first["numerics"] == {"cpu": numerics.cpu(), "portable": True, "cpu_capability": "AVX2", "mkl_cbwr": "AVX2",
                                 "onednn": False, "threads": 1}  # fmt: skip
    again = _train(tmp_path, "again", numerics.portable_environment())
    assert again == first  # the same weights to the last bit


def test_portable_numerics_asked_for_after_torch_chose_other_kernels_are_refused(monkeypatch) -> None:
    monkeypatch.setenv(numerics.SWITCH, "1")
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    monkeypatch.setenv("MKL_CBWR", "AUTO")  # another branch than the portable one
    with pytest.raises(RuntimeError, match="ATEN_CPU_CAPABILITY=avx2 MKL_CBWR=AVX2"):
        numerics.configure(0)
    import torch

    assert torch.backends.mkldnn.enabled  # refused before it changed anything
