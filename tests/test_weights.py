"""Initial weights load without running code: pickles are refused, converted only through an allow-list."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from taudis.model.weights import UnsafeWeightsError, check_weights_path, convert_pickle, main

pytestmark = pytest.mark.model


class _Exploit:
    """A pickle that runs code when loaded (writes a file)."""

    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return (Path.write_text, (self.target, "pwned"))


def test_only_pth_weights_are_taken_and_a_pkl_is_told_how_to_convert() -> None:
    check_weights_path("gs://bucket/r50.pth")
    check_weights_path("/models/model_final.pt")
    with pytest.raises(UnsafeWeightsError, match=r"taudis weights convert zoo\.pkl zoo\.pth"):
        check_weights_path("zoo.pkl")
    with pytest.raises(UnsafeWeightsError, match="not loaded"):
        check_weights_path("weights.bin")


def test_a_model_zoo_pickle_converts_to_weights_that_load_with_weights_only(tmp_path: Path) -> None:
    import torch

    src = tmp_path / "zoo.pkl"
    arrays = {"backbone.conv1.weight": np.ones((4, 3, 1, 1), np.float32), "head.bias": np.arange(3, dtype=np.float32)}
    src.write_bytes(pickle.dumps({"model": arrays, "__author__": "Detectron2 Model Zoo"}))
    assert main(["convert", str(src), str(tmp_path / "zoo.pth")]) == 0
    loaded = torch.load(tmp_path / "zoo.pth", weights_only=True)
    assert loaded["matching_heuristics"] is True and loaded["__author__"] == "Detectron2 Model Zoo"
    assert torch.equal(loaded["model"]["head.bias"], torch.arange(3, dtype=torch.float32))


def test_a_pickle_that_runs_code_is_refused_and_nothing_runs(tmp_path: Path) -> None:
    target = tmp_path / "side-effect.txt"
    src = tmp_path / "evil.pkl"
    src.write_bytes(pickle.dumps({"model": {"w": _Exploit(target)}}))
    with pytest.raises(UnsafeWeightsError, match="not an array"):
        convert_pickle(src, tmp_path / "evil.pth")
    assert not target.exists() and not (tmp_path / "evil.pth").exists()


def test_training_refuses_pickled_and_code_running_weights(tmp_path: Path) -> None:
    """A .pkl is refused before anything loads it; a .pth that runs code fails to load (weights_only)."""
    import torch
    from model_fixtures import make_tiny_dataset, tiny_opts

    from taudis.model.train import train_model

    data = tmp_path / "data"
    make_tiny_dataset(data)
    opts = tiny_opts(1)
    pkl = tmp_path / "zoo.pkl"
    pkl.write_bytes(pickle.dumps({"model": {}}))
    with pytest.raises(UnsafeWeightsError):
        train_model(
            str(data / "annotations/train.json"),
            str(data / "images"),
            str(tmp_path / "m1"),
            opts=opts,
            weights=str(pkl),
        )
    target = tmp_path / "side-effect.txt"
    evil = tmp_path / "evil.pth"
    torch.save({"model": {}, "payload": _Exploit(target)}, evil)
    with pytest.raises(pickle.UnpicklingError):
        train_model(
            str(data / "annotations/train.json"),
            str(data / "images"),
            str(tmp_path / "m2"),
            opts=opts,
            weights=str(evil),
        )
    assert not target.exists()
