"""The model layer: detectron2 Mask R-CNN training, instance inference for selection, and evaluation.

Public entry points (each module also has a ``main(argv)`` for ``taudis <command>``):

- :func:`taudis.model.train.train_model` (``taudis train``)
- :func:`taudis.model.infer.infer_instances` (``taudis infer``)
- :func:`taudis.model.evaluate.evaluate_model` and ``evaluate_predictions`` (``taudis evaluate``)
- :mod:`taudis.model.config`: ``load_config``, ``add_taudis_config``, ``CPU_CONFIG``, ``GPU_CONFIG``

Importing this package is cheap: torch and detectron2 load only inside the functions that need them.
"""
