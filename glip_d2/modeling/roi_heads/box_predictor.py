"""Fast R-CNN output layers whose classifier is region–word alignment against the image's own prompt.

Like Detic's zero-shot classifier, the stock ``FastRCNNOutputLayers`` keeps its box regression, box loss and
``fast_rcnn_inference``; only ``cls_score`` is swapped, here for :class:`RegionTokenAlignment`. There is no fixed
class list: the ROI heads treat every matched proposal as foreground (label 0, background 1) and the token targets
come from the matched object's positive map, so the same weights serve any prompt.
"""
from collections.abc import Sequence

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec, cat
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.roi_heads.fast_rcnn import (
    FastRCNNOutputLayers,
    fast_rcnn_inference,
)
from detectron2.structures import Instances
from torchvision.ops import sigmoid_focal_loss

from ..dense_heads.postprocess import token_to_label_scores
from .alignment import RegionTokenAlignment

__all__ = ["GroundingFastRCNNOutputLayers", "token_targets"]

FOREGROUND, BACKGROUND = 0, 1


def token_targets(proposals: Sequence[Instances], num_tokens: int) -> torch.Tensor:
    """Binary [R, L] token targets of sampled proposals: the matched object's positive map, zeros for background.

    Foreground proposals (``gt_classes == 0``) take the row of ``gt_positive_map`` the sampler copied from their
    matched ground truth; background (``gt_classes == 1``) and images without ground truth are positive for no token.
    """
    rows = []
    for p in proposals:
        target = torch.zeros(len(p), num_tokens, device=p.gt_classes.device)
        fg = p.gt_classes == FOREGROUND
        if fg.any():
            if not p.has("gt_positive_map"):
                raise ValueError("foreground proposals carry no 'gt_positive_map': the targets need instances.gt_positive_map")
            gt_map = p.gt_positive_map
            if gt_map.shape[1] != num_tokens:
                raise ValueError(f"gt_positive_map has {gt_map.shape[1]} tokens, the text features {num_tokens}")
            target[fg] = (gt_map[fg] > 0).to(target.dtype)
        rows.append(target)
    return cat(rows, dim=0) if rows else torch.zeros(0, num_tokens)


class GroundingFastRCNNOutputLayers(FastRCNNOutputLayers):
    """Class-agnostic box regression plus region–token alignment logits [R, L] instead of class logits."""

    @configurable
    def __init__(
        self,
        input_shape: ShapeSpec,
        *,
        lang_dim: int,
        log_scale_init: float = 0.0,
        prior_prob: float = 0.01,
        clamp_dot_product: bool = True,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        **kwargs,
    ):
        """
        Args:
            input_shape: region embedding shape from the box head (flattened to C).
            lang_dim: width D of the token features.
            log_scale_init, prior_prob, clamp_dot_product: alignment parameters, as the dense head.
            focal_alpha, focal_gamma: sigmoid focal loss on (region, token) pairs, as the dense head's token loss.
            kwargs: the remaining ``FastRCNNOutputLayers`` arguments (box2box_transform, test thresholds, ...).
        """
        kwargs["num_classes"] = 1
        kwargs["cls_agnostic_bbox_reg"] = True
        super().__init__(input_shape, **kwargs)
        region_dim = self.bbox_pred.in_features
        self.cls_score = RegionTokenAlignment(
            region_dim, lang_dim, log_scale_init=log_scale_init, prior_prob=prior_prob, clamp=clamp_dot_product
        )
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma

    @classmethod
    def from_config(cls, cfg, input_shape):
        return {
            "input_shape": input_shape,
            "box2box_transform": Box2BoxTransform(weights=cfg.MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS),
            "lang_dim": cfg.MODEL.LANGUAGE.HIDDEN_DIM,
            "log_scale_init": cfg.MODEL.GLIP.LOG_SCALE_INIT,
            "prior_prob": cfg.MODEL.GLIP.PRIOR_PROB,
            "clamp_dot_product": cfg.MODEL.GLIP.CLAMP_DOT_PRODUCT,
            "focal_alpha": cfg.MODEL.GLIP.TOKEN_ALPHA,
            "focal_gamma": cfg.MODEL.GLIP.TOKEN_GAMMA,
            "smooth_l1_beta": cfg.MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA,
            "test_score_thresh": cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST,
            "test_nms_thresh": cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST,
            "test_topk_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
            "box_reg_loss_type": cfg.MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE,
            "loss_weight": {"loss_box_reg": cfg.MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_WEIGHT},
        }

    def forward(
        self, x: torch.Tensor, lang_features: torch.Tensor, num_rois_per_image: Sequence[int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Region embeddings [R, ...] of images with token features [B, L, D] -> (logits [R, L], deltas [R, 4])."""
        if x.dim() > 2:
            x = torch.flatten(x, start_dim=1)
        if len(num_rois_per_image) != lang_features.shape[0] or sum(num_rois_per_image) != x.shape[0]:
            raise ValueError(
                f"{x.shape[0]} regions split as {list(num_rois_per_image)} do not match "
                f"{lang_features.shape[0]} prompts"
            )
        tokens, token_bias = self.cls_score.project_text(lang_features)
        logits = [
            self.cls_score(q[None], tokens[i : i + 1], token_bias[i : i + 1])[0]
            for i, q in enumerate(x.split(list(num_rois_per_image)))
        ]
        logits = cat(logits, dim=0) if logits else x.new_zeros(0, lang_features.shape[1])
        return logits, self.bbox_pred(x)

    def losses(self, predictions, proposals: list[Instances], lang_masks: torch.Tensor) -> dict[str, torch.Tensor]:
        """Token focal loss over the valid (region, token) pairs / #foreground regions, and the stock box loss."""
        logits, deltas = predictions
        num_tokens = logits.shape[1]
        if lang_masks.shape[1] != num_tokens or lang_masks.shape[0] != len(proposals):
            raise ValueError(f"lang_masks {tuple(lang_masks.shape)} do not match {len(proposals)} images x {num_tokens} tokens")
        gt_classes = cat([p.gt_classes for p in proposals], dim=0)
        targets = token_targets(proposals, num_tokens).to(logits.device)
        valid = cat([lang_masks[i : i + 1].expand(len(p), -1) for i, p in enumerate(proposals)], dim=0) > 0
        num_fg = (gt_classes == FOREGROUND).sum().item()
        loss_cls = sigmoid_focal_loss(
            logits[valid], targets[valid], alpha=self.focal_alpha, gamma=self.focal_gamma, reduction="sum"
        ) / max(num_fg, 1.0)

        proposal_boxes = cat([p.proposal_boxes.tensor for p in proposals], dim=0)
        gt_boxes = cat([(p.gt_boxes if p.has("gt_boxes") else p.proposal_boxes).tensor for p in proposals], dim=0)
        losses = {
            "loss_cls": loss_cls,
            "loss_box_reg": self.box_reg_loss(proposal_boxes, gt_boxes, deltas, gt_classes),
        }
        return {k: v * self.loss_weight.get(k, 1.0) for k, v in losses.items()}

    def inference(
        self,
        predictions,
        proposals: list[Instances],
        positive_maps: Sequence[torch.Tensor],
        positive_map_labels: Sequence[torch.Tensor],
    ) -> tuple[list[Instances], list[torch.Tensor]]:
        """Token probabilities -> category scores through each prompt's positive map -> ``fast_rcnn_inference``.

        Returned instances carry ``pred_classes`` (``positive_map_labels`` of the winning row) and
        ``pred_label_rows`` (that row, to look up the phrase or the tokens for the mask head).
        """
        if len(positive_maps) != len(proposals) or len(positive_map_labels) != len(proposals):
            raise ValueError(f"need one positive map and label vector per image ({len(proposals)} images)")
        logits, _ = predictions
        boxes = self.predict_boxes(predictions, proposals)
        probs = logits.sigmoid().split([len(p) for p in proposals])
        scores = []
        for p, pm, labels in zip(probs, positive_maps, positive_map_labels):
            if pm.shape[1] != logits.shape[1] or labels.shape[0] != pm.shape[0]:
                raise ValueError(f"positive map {tuple(pm.shape)} / labels {tuple(labels.shape)} do not match {logits.shape[1]} tokens")
            category = token_to_label_scores(p, pm.to(p.device))  # mean token probability per row (SCORE_AGG MEAN)
            scores.append(torch.cat([category, category.new_zeros(len(p), 1)], dim=1))  # stock layout: bg last
        instances, kept = fast_rcnn_inference(
            boxes, scores, [p.image_size for p in proposals],
            self.test_score_thresh, self.test_nms_thresh, self.test_topk_per_image,
        )
        for inst, labels in zip(instances, positive_map_labels):
            rows = inst.pred_classes
            inst.pred_label_rows = rows
            inst.pred_classes = labels.to(rows.device)[rows]
        return instances, kept
