#!/usr/bin/env bash
# Install the system tools the test suite's container tier needs beyond .venv: podman (with runc,
# the runtime that works on hybrid cgroups) and mmdebstrap (the base image made here).
#   bash scripts/install-test-tools.sh        (make test runs it before pytest)
# Idempotent and quick: nothing happens when the tools are there. Installs with apt-get, as root
# or through sudo. Where it cannot, it says so and the container tests skip, saying why; with
# CI=true it fails instead, since CI requires that tier.
set -euo pipefail
tools=(podman runc mmdebstrap)
missing=()
for tool in "${tools[@]}"; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0

fail() {
  echo "install-test-tools: $*" >&2
  if [[ ${CI:-} == true ]]; then exit 1; fi
  echo "install-test-tools: the container tests will be skipped" >&2
  exit 0
}

command -v apt-get >/dev/null 2>&1 || fail "missing ${missing[*]} and no apt-get here: install them by hand"
sudo=()
if [[ $(id -u) -ne 0 ]]; then
  command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null || fail "missing ${missing[*]}: run as root, or with sudo"
  sudo=(sudo -n)
fi
echo "install-test-tools: installing ${missing[*]} (apt-get)" >&2
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq || fail "apt-get update failed"
"${sudo[@]}" apt-get install -y -qq podman runc mmdebstrap >/dev/null || fail "apt-get install failed"
for tool in "${tools[@]}"; do
  command -v "$tool" >/dev/null 2>&1 || fail "$tool still missing after apt-get install"
done
echo "install-test-tools: done" >&2
