"""taudis: active learning for instance segmentation (TAUDIS, arXiv 2309.16139)."""

__version__ = "0.1.0"
