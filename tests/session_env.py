"""The environment of the whole test session, set before any test module is imported.

A pytest plugin (``-p tests.session_env`` in pyproject.toml), so it holds for every way pytest is
started and for xdist workers alike.

- ``TAUDIS_IMAGE_REGISTRY``: compiling a pipeline for a cluster target needs an image registry.
  Tests compile cluster pipelines to read them, never to push or pull, so by default they get a
  registry that cannot resolve (``.invalid``, RFC 2606); the tests of the missing-registry error
  unset it themselves.
"""

from __future__ import annotations

import os

os.environ.setdefault("TAUDIS_IMAGE_REGISTRY", "registry.invalid/taudis-tests")
