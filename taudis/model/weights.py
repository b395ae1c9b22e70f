"""Initial weights: only files that load without running code, and a converter for the pickled ones.

detectron2 reads a ``.pkl`` checkpoint with :func:`pickle.load`, which runs whatever code the file
asks for. taudis never hands it one: weights must be a PyTorch ``.pth``/``.pt`` file, which
detectron2 loads through ``torch.load`` with ``weights_only=True`` (tensors and plain containers
only). A model-zoo ``.pkl`` (a dict of numpy arrays) is converted once, here, by an unpickler that
accepts numpy arrays and plain containers and refuses everything else:

    taudis weights convert model_final_f10217.pkl model_final_f10217.pth
"""

from __future__ import annotations

import argparse
import collections
import pickle
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

SAFE_SUFFIXES = (".pth", ".pt")

# What a detectron2 model-zoo pickle is made of: numpy arrays (with their dtypes) in dicts.
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("collections", "OrderedDict"),
}


class UnsafeWeightsError(ValueError):
    """A weights file that would run code when loaded, or that holds something other than arrays."""


def check_weights_path(path: str) -> None:
    """Refuse weights taudis would not load safely (anything but .pth / .pt), saying what to do.

    Raises:
        UnsafeWeightsError: naming the file and the conversion command.
    """
    suffix = Path(path).suffix.lower()
    if suffix not in SAFE_SUFFIXES:
        hint = (
            f" Convert it once with: taudis weights convert {path} {Path(path).with_suffix('.pth')}"
            if suffix == ".pkl"
            else ""
        )
        raise UnsafeWeightsError(
            f"initial weights {path!r}: a {suffix or 'suffix-less'} file is not loaded (pickles run code when "
            f"loaded); taudis takes PyTorch {' or '.join(SAFE_SUFFIXES)} checkpoints, loaded with weights_only.{hint}"
        )


class _ArraysOnly(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise UnsafeWeightsError(f"the pickle asks for {module}.{name}, which is not an array or a plain container")


def convert_pickle(src: str | Path, dst: str | Path) -> dict[str, Any]:
    """Convert a detectron2 model-zoo ``.pkl`` (numpy arrays) into a ``.pth`` that loads with weights_only.

    Returns:
        {"tensors": count, "matching_heuristics": bool} of what was written. The output keeps
        detectron2's zoo keys ("model", "matching_heuristics"), so name matching still applies.

    Raises:
        UnsafeWeightsError: the pickle holds anything but arrays and plain containers.
    """
    import numpy as np
    import torch

    with open(src, "rb") as f:
        data = _ArraysOnly(f, encoding="latin1").load()
    if not isinstance(data, dict):
        raise UnsafeWeightsError(f"{src}: expected a dict of arrays, got {type(data).__name__}")
    model = data.get("model", data.get("blobs", data))
    if not isinstance(model, dict):
        raise UnsafeWeightsError(f"{src}: 'model' is a {type(model).__name__}, not a dict of arrays")
    tensors = {
        str(k): torch.as_tensor(np.asarray(v)) for k, v in model.items() if isinstance(v, np.ndarray | np.generic)
    }
    # Zoo pickles name parameters their own way: detectron2 matches them by name, and converts
    # Caffe2 (Detectron1) names when the author says so, as it does for the .pkl itself.
    author = (
        data.get("__author__") if isinstance(data.get("__author__"), str) else ("" if "model" in data else "Caffe2")
    )
    out: dict[str, Any] = {"model": collections.OrderedDict(tensors), "matching_heuristics": True}
    if author:
        out["__author__"] = author
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    torch.save(out, dst)
    return {"tensors": len(tensors), "matching_heuristics": True}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="taudis weights", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    convert = commands.add_parser("convert", help="convert a model-zoo .pkl into a .pth that loads safely")
    convert.add_argument("src")
    convert.add_argument("dst")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        result = convert_pickle(args.src, args.dst)
    except (UnsafeWeightsError, OSError, pickle.UnpicklingError) as err:
        print(f"taudis weights: {err}", file=sys.stderr)
        return 1
    print(f"{args.dst}: {result['tensors']} tensors")
    return 0
