#!/usr/bin/env bash
# Install detectron2 0.6 (pure Python, patched for today's torch / numpy / Pillow) into the
# environment of the given interpreter:   bash scripts/install-detectron2.sh /path/to/python
#
# detectron2 is not on PyPI as such. The sdist `pb1-detectron2==0.6` is upstream tag v0.6 without
# C++ sources; Mask R-CNN needs none (ROIAlign and NMS come from torchvision). This script
#   1. downloads that sdist (pip download; pip >= 24 refuses it because an extra declares a direct
#      URL, so it falls back to the index's simple page), and verifies its sha256;
#   2. patches the sources (each patch fails loudly if its target is gone):
#      setup.py: no C++ extension, model-zoo YAML configs as package_data, runtime requirements
#      trimmed to what taudis uses; Pillow's Image.LINEAR -> BILINEAR; numpy's removed np.int /
#      np.float / np.str aliases; np.array(copy=False) -> np.asarray; pkg_resources ->
#      importlib.resources; a stub `detectron2._C` whose attributes raise a clear error;
#   3. builds it with --no-build-isolation (setup.py imports torch; setuptools<81 at build);
#   4. installs the pinned runtime dependencies from scripts/detectron2-requirements.txt.
# Idempotent: a marker in the environment records the sdist sha256 and this script's inputs, so a
# rerun with the same inputs returns at once.
#
# Environment: TAUDIS_DETECTRON2_SDIST=/path/to/pb1-detectron2-0.6.tar.gz uses a local copy
# (container builds, offline machines); PIP_INDEX_URL is honoured for the fallback download.
set -euo pipefail

python=${1:?usage: install-detectron2.sh PYTHON}
# Absolute (not resolved: a venv's python is a symlink that must stay one), as we cd later.
[[ $python == */* ]] && python="$(cd "$(dirname "$python")" && pwd)/$(basename "$python")"
here=$(cd "$(dirname "$0")" && pwd)
requirements="$here/detectron2-requirements.txt"
name=pb1-detectron2
version=0.6
sdist="$name-$version.tar.gz"
sha256=5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29

[[ -f $requirements ]] || { echo "install-detectron2: missing $requirements" >&2; exit 1; }
prefix=$("$python" -c 'import sys; print(sys.prefix)')
marker="$prefix/.taudis-detectron2"
want="$sha256 $(cat "$0" "$requirements" | sha256sum | cut -d' ' -f1)"
if [[ -f $marker && $(cat "$marker") == "$want" ]] &&
  "$python" -c 'import importlib.util as u, sys; sys.exit(u.find_spec("detectron2") is None)'; then
  exit 0
fi

pip=("$python" -m pip --disable-pip-version-check)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "install-detectron2: installing $name==$version into $prefix" >&2

# Build requirements first: setup.py imports torch and pkg_resources-era setuptools.
"$python" -c 'import torch' 2>/dev/null || { echo "install-detectron2: install torch first" >&2; exit 1; }
"${pip[@]}" install -q 'setuptools<81' wheel

# 1. Fetch and verify the sdist.
if [[ -n ${TAUDIS_DETECTRON2_SDIST:-} ]]; then
  cp "$TAUDIS_DETECTRON2_SDIST" "$work/$sdist"
elif ! "${pip[@]}" download -q --no-deps --no-binary :all: --no-build-isolation "$name==$version" -d "$work" \
  2>"$work/pip-download.log" || [[ ! -f $work/$sdist ]]; then
  echo "install-detectron2: pip download refused the sdist (see below); fetching it from the index" >&2
  tail -n 2 "$work/pip-download.log" >&2 || true
  "$python" - "$work/$sdist" "$name" "$sdist" <<'PY'
import os, re, sys, urllib.request
out, name, filename = sys.argv[1:]
index = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/")
page = urllib.request.urlopen(f"{index}/{name}/", timeout=120).read().decode()
links = [h for h in re.findall(r'href="([^"]+)"', page) if h.split("#")[0].endswith("/" + filename)]
if not links:
    sys.exit(f"install-detectron2: {filename} is not listed at {index}/{name}/")
url = urllib.request.urljoin(f"{index}/{name}/", links[0].split("#")[0])
with urllib.request.urlopen(url, timeout=300) as response, open(out, "wb") as f:
    f.write(response.read())
PY
fi
got=$(sha256sum "$work/$sdist" | cut -d' ' -f1)
if [[ $got != "$sha256" ]]; then
  echo "install-detectron2: sha256 mismatch for $sdist: got $got, expected $sha256" >&2
  exit 1
fi
tar -xzf "$work/$sdist" -C "$work"
src="$work/$name-$version"

# 2. Patch. Every patch names its file and fails if its target text is not there.
"$python" - "$src" <<'PY'
import re
import sys
from pathlib import Path

src = Path(sys.argv[1])


def patch(relative: str, old: str, new: str, *, regex: bool = False, count: int | None = None) -> None:
    """Replace `old` by `new` in one file; fail unless the target occurs (exactly `count` times if given)."""
    path = src / relative
    text = path.read_text()
    found = len(re.findall(old, text)) if regex else text.count(old)
    if found == 0 or (count is not None and found != count):
        sys.exit(f"install-detectron2: patch target {old!r} found {found} times in {relative} (expected {count or '>0'})")
    path.write_text(re.sub(old, new, text) if regex else text.replace(old, new))


# setup.py: no C++ extension (the sdist has no sources), YAML configs inside the package, and the
# runtime requirements taudis needs (see scripts/detectron2-requirements.txt for the pins).
patch("setup.py", "    ext_modules=get_extensions(),\n", "", count=1)
# Upstream's find_packages also installs the sdist's scripts folder as a top-level `tools` package.
patch("setup.py", 'find_packages(exclude=("configs", "tests*"))', 'find_packages(exclude=("configs", "tests*", "tools*"))', count=1)
patch("setup.py", '    cmdclass={"build_ext": torch.utils.cpp_extension.BuildExtension},\n', "", count=1)
patch(
    "setup.py",
    'package_data={"detectron2.model_zoo": get_model_zoo_configs()}',
    'package_data={"detectron2.model_zoo": ["configs/*.yaml", "configs/**/*.yaml", "configs/**/*.py"]}',
    count=1,
)
requires = [
    "Pillow>=7.1", "matplotlib", "pycocotools>=2.0.2", "termcolor>=1.1", "yacs>=0.1.8", "tabulate",
    "cloudpickle", "tqdm>4.29.0", "fvcore>=0.1.5,<0.1.6", "iopath>=0.1.7,<0.1.10", "omegaconf>=2.1",
]
patch("setup.py", r"(?s)install_requires=\[.*?\n    \],", f"install_requires={requires!r},", regex=True, count=1)
if not list((src / "detectron2/model_zoo/configs").glob("**/*.yaml")):
    sys.exit("install-detectron2: the sdist has no detectron2/model_zoo/configs/*.yaml")

# Pillow 10 removed Image.LINEAR (it was an alias of BILINEAR).
patch("detectron2/data/transforms/transform.py", "interp=Image.LINEAR", "interp=Image.BILINEAR", count=1)
# numpy 1.24 removed the np.int / np.float / np.str aliases of the builtins.
for relative in (
    "detectron2/data/build.py",
    "detectron2/evaluation/sem_seg_evaluation.py",
    "detectron2/data/datasets/pascal_voc.py",
):
    patch(relative, r"\bnp\.(int|float|str)\b(?!_)", r"\1", regex=True)
# numpy 2: copy=False means "never copy" and raises when a copy is needed.
patch("detectron2/layers/mask_ops.py", "mask = np.array(mask, copy=False)", "mask = np.asarray(mask)", count=1)
# setuptools 81 removes pkg_resources.
patch("detectron2/model_zoo/model_zoo.py", "import pkg_resources\n", "import importlib.resources\n", count=1)
patch(
    "detectron2/model_zoo/model_zoo.py",
    'cfg_file = pkg_resources.resource_filename(\n        "detectron2.model_zoo", os.path.join("configs", config_path)\n    )',
    'cfg_file = str(importlib.resources.files("detectron2.model_zoo").joinpath("configs", config_path))',
    count=1,
)
# The compiled ops (deformable conv, rotated boxes, fast COCO eval) are not built: a stub module lets
# detectron2.layers import, and any use of a missing op says why.
(src / "detectron2/_C.py").write_text(
    '"""Stub: this detectron2 is installed without its C++/CUDA extension (scripts/install-detectron2.sh)."""\n\n\n'
    "def __getattr__(name: str):\n"
    '    raise AttributeError(\n'
    '        f"detectron2._C.{name} is not available: detectron2 was installed without its C++ ops "\n'
    '        "(deformable conv, rotated boxes, fast COCO eval); use ops from torchvision or use_fast_impl=False"\n'
    "    )\n"
)
print("install-detectron2: patched", file=sys.stderr)
PY

# 3. Dependencies (pinned), then detectron2 itself without touching them.
"${pip[@]}" install -q -r "$requirements"
"${pip[@]}" install -q --no-build-isolation --no-deps "$src"

# 4. Smoke check: the model builds and a model-zoo config resolves.
(cd "$work" && "$python" - <<'PY'
import os
from detectron2.config import get_cfg
from detectron2.model_zoo import get_config_file
from detectron2.modeling import build_model

assert os.path.isfile(get_config_file("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml"))
cfg = get_cfg()
cfg.MODEL.DEVICE = "cpu"
build_model(cfg)
PY
)
echo "$want" >"$marker"
echo "install-detectron2: done" >&2
