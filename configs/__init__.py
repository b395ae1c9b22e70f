"""detectron2 YAML configs (``_BASE_`` inheritance); installed as the package data ``taudis.configs``."""
