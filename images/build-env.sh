# Sourced by the Dockerfiles' RUN steps that install Python packages (sh, not bash).
#
# Build-time pip settings come only from build secrets, mounted for one RUN step at a time
# (scripts/build_images.py --host-pip): a pip.conf (pipconf) and a CA bundle (cacert). Nothing
# here is baked into a layer or the image's ENV; without the secrets pip uses its defaults (PyPI
# over the image's own CA certificates).
if [ -s /run/secrets/pipconf ]; then
  export PIP_CONFIG_FILE=/run/secrets/pipconf
fi
if [ -s /run/secrets/cacert ]; then
  # pip, and urllib in install-detectron2.sh's fallback download, verify TLS with this bundle.
  export PIP_CERT=/run/secrets/cacert SSL_CERT_FILE=/run/secrets/cacert
fi
export PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
