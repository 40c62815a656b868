"""Two-stage grounding R-CNN heads: detectron2's ``StandardROIHeads`` with region–word alignment instead of classes.

Built by the ``GroundingRCNN`` meta-architecture (``meta_arch/grounding_rcnn.py``, MODEL.GLIP.RPN_ONLY False). The stock matching, sampling, poolers, box head, box regression,
``fast_rcnn_inference`` and mask rasterisation are kept; what changes is what a "class" is. Every prompt has its own
vocabulary, so sampling is binary (matched to an object = foreground 0, else background 1) and the classifier scores
each region against the tokens of its own image's prompt (:class:`GroundingFastRCNNOutputLayers`); a foreground
proposal is positive for exactly the tokens of its object's positive map. At inference the token probabilities
become category scores through the prompt's positive map, so ``COCOEvaluator`` sees ordinary ``pred_classes``.
The optional mask head is the language-aware one of GLIPv2 (:class:`LanguageAwareMaskHead`).
"""
from collections.abc import Sequence

import torch
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, StandardROIHeads
from detectron2.modeling.roi_heads.roi_heads import select_foreground_proposals
from detectron2.structures import Boxes, ImageList, Instances

from .box_predictor import GroundingFastRCNNOutputLayers
from .mask_head import LanguageAwareMaskHead

__all__ = ["GroundingROIHeads"]


@ROI_HEADS_REGISTRY.register()
class GroundingROIHeads(StandardROIHeads):
    """ROI heads whose box classifier and mask predictor are conditioned on each image's prompt.

    Extra inputs to ``forward`` (keyword-only): ``lang_features`` [B, L, D] (the token features the dense head's
    dot product uses: fused ``hidden`` or masked ``embedded``), ``lang_masks`` [B, L] (training), and per image
    ``positive_maps`` [K_i, L] with ``positive_map_labels`` [K_i] (inference). Targets need ``gt_boxes``,
    ``gt_positive_map`` [N, L] and, with masks, ``gt_masks``. Detections carry ``pred_boxes``, ``scores``,
    ``pred_classes`` (= ``positive_map_labels[pred_label_rows]``), ``pred_label_rows`` and ``pred_masks``.
    """

    @classmethod
    def from_config(cls, cfg, input_shape):
        if cfg.MODEL.KEYPOINT_ON:
            raise ValueError("GroundingROIHeads has no keypoint head: set MODEL.KEYPOINT_ON False")
        ret = super().from_config(cfg, input_shape)
        ret["num_classes"] = 1  # binary sampling: foreground 0, background 1; the prompt supplies the vocabulary
        return ret

    @classmethod
    def _init_box_head(cls, cfg, input_shape):
        ret = super()._init_box_head(cfg, input_shape)
        ret["box_predictor"] = GroundingFastRCNNOutputLayers(cfg, ret["box_head"].output_shape)
        return ret

    @classmethod
    def _init_mask_head(cls, cfg, input_shape):
        if not cfg.MODEL.MASK_ON:
            return {}
        if cfg.MODEL.ROI_MASK_HEAD.NAME != LanguageAwareMaskHead.__name__:
            raise ValueError(
                f"MODEL.ROI_MASK_HEAD.NAME is {cfg.MODEL.ROI_MASK_HEAD.NAME!r}; grounding needs "
                f"'{LanguageAwareMaskHead.__name__}' (a class-indexed mask head has no classes to index)"
            )
        if not cfg.MODEL.ROI_MASK_HEAD.POOLER_TYPE:
            raise ValueError("LanguageAwareMaskHead needs pooled features: set MODEL.ROI_MASK_HEAD.POOLER_TYPE")
        return super()._init_mask_head(cfg, input_shape)

    def _sample_proposals(
        self, matched_idxs: torch.Tensor, matched_labels: torch.Tensor, gt_classes: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # Category ids mean nothing across prompts: every ground-truth object is foreground (0).
        return super()._sample_proposals(matched_idxs, matched_labels, torch.zeros_like(gt_classes))

    def forward(
        self,
        images: ImageList,
        features: dict[str, torch.Tensor],
        proposals: list[Instances],
        targets: list[Instances] | None = None,
        *,
        lang_features: torch.Tensor,
        lang_masks: torch.Tensor | None = None,
        positive_maps: Sequence[torch.Tensor] | None = None,
        positive_map_labels: Sequence[torch.Tensor] | None = None,
    ) -> tuple[list[Instances], dict[str, torch.Tensor]]:
        """Training: (sampled proposals, losses ``loss_cls``, ``loss_box_reg``, ``loss_mask``); inference: (detections, {})."""
        del images
        if lang_features.dim() != 3 or lang_features.shape[0] != len(proposals):
            raise ValueError(
                f"lang_features must be [B, L, D] with B = {len(proposals)} images, got {tuple(lang_features.shape)}"
            )
        if self.training:
            if not targets:
                raise ValueError("'targets' are required in training")
            if lang_masks is None or tuple(lang_masks.shape) != tuple(lang_features.shape[:2]):
                raise ValueError(f"lang_masks must be [B, L] = {tuple(lang_features.shape[:2])} in training")
            for t in targets:
                if len(t) and not t.has("gt_positive_map"):
                    raise ValueError("targets need 'gt_positive_map' (the token map of each box) for grounding")
            proposals = self.label_and_sample_proposals(proposals, targets)
            del targets
            losses = self._forward_box(features, proposals, lang_features=lang_features, lang_masks=lang_masks)
            losses.update(self._forward_mask(features, proposals, lang_features=lang_features))
            return proposals, losses

        if positive_maps is None or positive_map_labels is None:
            raise ValueError("inference needs positive_maps and positive_map_labels (one per image)")
        pred_instances = self._forward_box(
            features, proposals, lang_features=lang_features,
            positive_maps=positive_maps, positive_map_labels=positive_map_labels,
        )
        pred_instances = self.forward_with_given_boxes(
            features, pred_instances, lang_features=lang_features, positive_maps=positive_maps
        )
        return pred_instances, {}

    def forward_with_given_boxes(
        self,
        features: dict[str, torch.Tensor],
        instances: list[Instances],
        *,
        lang_features: torch.Tensor,
        positive_maps: Sequence[torch.Tensor],
    ) -> list[Instances]:
        """Masks for given detections (``pred_boxes`` and ``pred_label_rows``, the positive-map row of each)."""
        assert not self.training
        if len(instances) and not instances[0].has("pred_label_rows"):
            raise ValueError("instances need 'pred_label_rows' to pick the tokens of their phrase")
        return self._forward_mask(features, instances, lang_features=lang_features, positive_maps=positive_maps)

    def _forward_box(
        self,
        features: dict[str, torch.Tensor],
        proposals: list[Instances],
        *,
        lang_features: torch.Tensor,
        lang_masks: torch.Tensor | None = None,
        positive_maps: Sequence[torch.Tensor] | None = None,
        positive_map_labels: Sequence[torch.Tensor] | None = None,
    ):
        features = [features[f] for f in self.box_in_features]
        box_features = self.box_pooler(features, [x.proposal_boxes for x in proposals])
        box_features = self.box_head(box_features)
        predictions = self.box_predictor(box_features, lang_features, [len(p) for p in proposals])
        del box_features

        if self.training:
            losses = self.box_predictor.losses(predictions, proposals, lang_masks)
            if self.train_on_pred_boxes:
                with torch.no_grad():
                    pred_boxes = self.box_predictor.predict_boxes_for_gt_classes(predictions, proposals)
                    for proposals_per_image, pred_boxes_per_image in zip(proposals, pred_boxes):
                        proposals_per_image.proposal_boxes = Boxes(pred_boxes_per_image)
            return losses
        pred_instances, _ = self.box_predictor.inference(predictions, proposals, positive_maps, positive_map_labels)
        return pred_instances

    def _forward_mask(
        self,
        features: dict[str, torch.Tensor],
        instances: list[Instances],
        *,
        lang_features: torch.Tensor,
        positive_maps: Sequence[torch.Tensor] | None = None,
    ):
        if not self.mask_on:
            return {} if self.training else instances
        num_tokens = lang_features.shape[1]
        if self.training:
            instances, _ = select_foreground_proposals(instances, self.num_classes)
            # Official vl mask loss: only regions whose matched phrase names at least one token.
            instances = [
                i[i.gt_positive_map.sum(dim=1) > 0] if i.has("gt_positive_map") else i[:0] for i in instances
            ]
            token_maps = [
                i.gt_positive_map if i.has("gt_positive_map") else lang_features.new_zeros(0, num_tokens)
                for i in instances
            ]
            boxes = [i.proposal_boxes for i in instances]
        else:
            token_maps = [pm.to(lang_features.device)[i.pred_label_rows] for i, pm in zip(instances, positive_maps)]
            boxes = [i.pred_boxes for i in instances]
        x = self.mask_pooler([features[f] for f in self.mask_in_features], boxes)
        return self.mask_head(x, instances, lang_features=lang_features, token_maps=token_maps)
