# Sourced by the Dockerfiles' RUN steps that install Python packages (sh, not bash).
#
# Build-time pip settings come only from secrets that the build command mounts for one RUN step
# (scripts/build_images.py --host-pip): a pip.conf and a CA bundle. Nothing here is baked into an
# image layer or its ENV; without the secrets pip uses its defaults (PyPI over the image's CAs).
if [ -s /run/taudis-build/pip.conf ]; then
  export PIP_CONFIG_FILE=/run/taudis-build/pip.conf
fi
if [ -s /run/taudis-build/ca.crt ]; then
  # pip, and urllib in install-detectron2.sh's fallback download, verify TLS with this bundle.
  export PIP_CERT=/run/taudis-build/ca.crt SSL_CERT_FILE=/run/taudis-build/ca.crt
fi
export PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
