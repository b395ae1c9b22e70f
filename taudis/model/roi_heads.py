"""TaudisROIHeads: detectron2's standard ROI heads that also hand out what uncertainty scoring needs.

Registered in detectron2's ``ROI_HEADS_REGISTRY`` under the name ``"TaudisROIHeads"``. It has the
same parameters as ``StandardROIHeads`` (a checkpoint of one loads into the other) and trains
identically; at inference each predicted ``Instances`` gains two fields:

- ``pred_class_probs`` (N, K+1): the softmax over the K classes plus background (last) of the box
  predictor's classification logits for the *proposal* the detection came from. This is the very
  vector detectron2 thresholds and ranks, so ``scores == pred_class_probs[i, pred_classes[i]]``
  exactly. Caveat: the final box is that proposal's box after class-specific regression; the
  probabilities were computed on the proposal's features, not re-evaluated on the refined box.
  One proposal can yield detections of several classes; they then share the same vector.
- ``pred_embeddings`` (N, D): by default (``TAUDIS.EMBEDDING_LAYER`` "mask_head") the output of
  the mask head's last conv layer (after its ReLU) on the detection's box, averaged over the SxS
  positions and L2-normalised; D is the mask head's CONV_DIM. With "roi_features", the features
  the mask head reads instead: the FPN levels ROIAligned on the box, before any head layer (no
  ReLU, so entries of both signs), averaged and normalised alike; D is FPN.OUT_CHANNELS. A
  detection whose activations are all zero gets the constant unit vector 1/sqrt(D).

``pred_masks`` keeps detectron2's meaning: (N, 1, S, S) sigmoid probabilities of the predicted
class (S = 2 x ROI_MASK_HEAD.POOLER_RESOLUTION, 28 for the standard head), before any pasting.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, StandardROIHeads
from detectron2.modeling.roi_heads.mask_head import mask_rcnn_inference
from detectron2.structures import Instances

from taudis.model.config import EMBEDDING_LAYERS

NAME = "TaudisROIHeads"


@ROI_HEADS_REGISTRY.register()
class TaudisROIHeads(StandardROIHeads):
    """StandardROIHeads plus per-detection class probabilities and mask-head embeddings at inference."""

    @configurable
    def __init__(self, *, embedding_layer: str = "mask_head", **kwargs):
        super().__init__(**kwargs)
        if embedding_layer not in EMBEDDING_LAYERS:
            raise ValueError(f"TAUDIS.EMBEDDING_LAYER {embedding_layer!r} is not one of {', '.join(EMBEDDING_LAYERS)}")
        self.embedding_layer = embedding_layer

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        taudis = cfg.get("TAUDIS")
        ret["embedding_layer"] = taudis.get("EMBEDDING_LAYER", "mask_head") if taudis else "mask_head"
        return ret

    def embedding_dim(self) -> int:
        """D of ``pred_embeddings``: the last conv's channels, or the channels the mask head reads."""
        convs = getattr(self.mask_head, "conv_norm_relus", [])
        if self.embedding_layer == "mask_head" and len(convs):
            return int(convs[-1].out_channels)
        first = next(m for m in self.mask_head.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.ConvTranspose2d))
        return int(first.in_channels)

    def _forward_box(self, features: dict[str, torch.Tensor], proposals: list[Instances]):
        if self.training:
            return super()._forward_box(features, proposals)
        box_features = self.box_pooler(
            [features[f] for f in self.box_in_features], [p.proposal_boxes for p in proposals]
        )
        predictions = self.box_predictor(self.box_head(box_features))
        del box_features
        instances, kept = self.box_predictor.inference(predictions, proposals)
        probs = self.box_predictor.predict_probs(predictions, proposals)
        boxes = self.box_predictor.predict_boxes(predictions, proposals)
        for inst, kept_i, probs_i, boxes_i in zip(instances, kept, probs, boxes, strict=True):
            # fast_rcnn_inference drops proposals with non-finite outputs before indexing, so its
            # indices count finite rows only; map them back to proposal rows.
            finite = torch.isfinite(boxes_i).all(dim=1) & torch.isfinite(probs_i).all(dim=1)
            rows = kept_i if bool(finite.all()) else torch.nonzero(finite).squeeze(1)[kept_i]
            inst.pred_class_probs = probs_i[rows]
        return instances

    def _forward_mask(self, features: dict[str, torch.Tensor], instances: list[Instances]):
        if self.training or not self.mask_on:
            return super()._forward_mask(features, instances)
        head = self.mask_head
        convs = getattr(head, "conv_norm_relus", None)
        if self.mask_pooler is None or convs is None or not isinstance(head, torch.nn.Sequential):
            raise TypeError(
                f"{NAME} needs a pooled, sequential mask head such as MaskRCNNConvUpsampleHead, "
                f"got {type(head).__name__}"
            )
        x = self.mask_pooler([features[f] for f in self.mask_in_features], [i.pred_boxes for i in instances])
        last_conv = convs[-1] if len(convs) and self.embedding_layer == "mask_head" else None
        embedding = x  # roi_features, or a head without convs
        for layer in head:
            x = layer(x)
            if layer is last_conv:
                embedding = x
        mask_rcnn_inference(x, instances)
        vectors = embedding.mean(dim=(2, 3))
        norms = vectors.norm(dim=1, keepdim=True)
        dim = vectors.shape[1]
        fallback = torch.full_like(vectors, 1.0 / math.sqrt(dim)) if dim else vectors
        vectors = torch.where(norms > 1e-12, F.normalize(vectors, dim=1), fallback)
        for inst, chunk in zip(instances, vectors.split([len(i) for i in instances]), strict=True):
            inst.pred_embeddings = chunk
        return instances
