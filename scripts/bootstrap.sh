#!/usr/bin/env bash
# Create the project's virtual environment from nothing: pinned torch, the patched detectron2,
# taudis itself (editable) and the development tools. Idempotent: a venv built from the same
# pyproject.toml and install scripts is reused, so `make test` and `make demo` stay fast on reruns.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${TAUDIS_VENV:-.venv}
python=${PYTHON:-python3.11}
command -v "$python" >/dev/null || python=python3
if ! "$python" -c 'import sys; sys.exit(sys.version_info[:2] < (3, 11))' 2>/dev/null; then
  echo "bootstrap: $python is not Python 3.11 or newer, which taudis needs: install python3.11, or set PYTHON" >&2
  exit 1
fi
stamp="$venv/.taudis-bootstrap"
want=$(cat pyproject.toml setup.py scripts/bootstrap.sh scripts/install-detectron2.sh scripts/detectron2-requirements.txt | sha256sum | cut -d' ' -f1)
if [[ -f $stamp && $(cat "$stamp") == "$want" ]]; then
  exit 0
fi
echo "bootstrap: creating $venv (torch, detectron2, taudis); a few minutes on a new machine" >&2
if [[ ! -x $venv/bin/python ]] && ! "$python" -m venv "$venv"; then
  rm -rf "$venv"  # a venv without pip would pass the check above next time
  echo "bootstrap: '$python -m venv' failed; on Debian and Ubuntu: apt install python3.11-venv" >&2
  exit 1
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check)
"${pip[@]}" install -q --upgrade pip 'setuptools<81' wheel
"${pip[@]}" install -q 'torch==2.14.1' 'torchvision==0.29.1'
bash scripts/install-detectron2.sh "$venv/bin/python"
"${pip[@]}" install -q -e '.[model,dev]'
"${pip[@]}" check
echo "$want" >"$stamp"
echo "bootstrap: $venv ready" >&2
