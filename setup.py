"""The packages of the wheel: the library (taudis.*), its detectron2 configs, and the KFP layer above it.

The repository keeps the KFP layer in the top-level folders components/ and pipelines/; they
install under the project's own namespace, as taudis_kfp.components and taudis_kfp.pipelines, so
that no generic top-level package of those names lands in site-packages. The YAML configs stay in
the top-level configs/ folder and install inside the library as taudis.configs (package data:
taudis.model.config finds them there, in a wheel and in an editable install alike). Everything
else about the package is in pyproject.toml.
"""

from setuptools import find_packages, setup

KFP_LAYER = {"taudis_kfp.components": "components", "taudis_kfp.pipelines": "pipelines"}
DATA = {"taudis.configs": "configs"}

setup(
    packages=[*find_packages(include=["taudis", "taudis.*"]), *DATA, *KFP_LAYER],
    package_dir={**DATA, **KFP_LAYER},
)
