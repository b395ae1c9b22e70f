"""The packages of the wheel: the library (taudis.*) and the KFP layer above it.

The repository keeps the KFP layer in the top-level folders components/ and pipelines/; they
install under the project's own namespace, as taudis_kfp.components and taudis_kfp.pipelines, so
that no generic top-level package of those names lands in site-packages. Everything else about
the package is in pyproject.toml.
"""

from setuptools import find_packages, setup

KFP_LAYER = {"taudis_kfp.components": "components", "taudis_kfp.pipelines": "pipelines"}

setup(packages=[*find_packages(include=["taudis", "taudis.*"]), *KFP_LAYER], package_dir=KFP_LAYER)
