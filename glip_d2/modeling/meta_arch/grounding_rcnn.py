"""``GroundingRCNN``: GLIP with the two-stage grounding ROI heads (MODEL.GLIP.RPN_ONLY False).

Everything up to the dense head is the one-stage ``GLIP`` (backbone, language encoder, VL tower, dense head and its
ATSS losses, which keep training as in the official two-stage path where the VLDyHead is the RPN). The ROI heads
pool the tower's fused visual features and align regions with the same token features as the dense dot product.
Proposals come from detectron2's RPN on those features (MODEL.GLIP.PROPOSAL_SOURCE "rpn") or from the dense head's
top boxes ("dense"). Outputs are detectron2-convention boxes (and ``pred_masks``) through ``detector_postprocess``.
"""

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import META_ARCH_REGISTRY, build_proposal_generator
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.modeling.roi_heads import build_roi_heads
from detectron2.structures import ImageList, Instances
from torch import nn

from ...structures import PhraseList, legacy_to_continuous
from ..proposal_generator import dense_head_proposals
from .glip import GLIP, _single_prompt

__all__ = ["GroundingRCNN", "fit_token_width"]

PROPOSAL_SOURCES = ("rpn", "dense")


def fit_token_width(maps: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """Pad (with zeros) or cut [K, L'] token maps to ``num_tokens`` columns; cutting must drop only empty columns."""
    if maps.shape[1] > num_tokens:
        if maps[:, num_tokens:].any():
            raise ValueError(f"a positive map marks token positions >= {num_tokens}, beyond the tokenized caption")
        return maps[:, :num_tokens]
    return F.pad(maps, (0, num_tokens - maps.shape[1]))


@META_ARCH_REGISTRY.register()
class GroundingRCNN(GLIP):
    """GLIP + proposals + :class:`~glip_d2.modeling.roi_heads.GroundingROIHeads`."""

    @configurable
    def __init__(
        self,
        *,
        roi_heads: nn.Module,
        proposal_source: str = "rpn",
        proposal_generator: nn.Module | None = None,
        dense_proposal_topk: dict[bool, tuple] | None = None,
        dense_proposal_nms: float = 0.7,
        **kwargs,
    ):
        """
        Args:
            roi_heads: ``GroundingROIHeads`` on the tower features named like ``in_features``.
            proposal_source: "rpn" (``proposal_generator`` required) or "dense".
            dense_proposal_topk: {training: (pre_nms_topk per level, post_nms_topk)} for "dense".
            dense_proposal_nms: NMS IoU threshold of the dense proposals.
            kwargs: the ``GLIP`` arguments.
        """
        super().__init__(**kwargs)
        if proposal_source not in PROPOSAL_SOURCES:
            raise ValueError(f"MODEL.GLIP.PROPOSAL_SOURCE must be one of {PROPOSAL_SOURCES}, got {proposal_source!r}")
        if proposal_source == "rpn" and proposal_generator is None:
            raise ValueError("PROPOSAL_SOURCE 'rpn' needs a proposal_generator (MODEL.PROPOSAL_GENERATOR.NAME)")
        self.proposal_source = proposal_source
        self.proposal_generator = proposal_generator if proposal_source == "rpn" else None
        self.roi_heads = roi_heads
        self.dense_proposal_topk = dense_proposal_topk or {True: (2000, 1000), False: (1000, 1000)}
        self.dense_proposal_nms = dense_proposal_nms

    @classmethod
    def from_config(cls, cfg):
        if cfg.MODEL.GLIP.RPN_ONLY:
            raise ValueError("GroundingRCNN is the two-stage model: set MODEL.GLIP.RPN_ONLY False")
        ret = super().from_config(cfg)
        backbone_shapes = ret["backbone"].output_shape()
        # The ROI heads read the tower's outputs: same names and strides as the backbone levels, DyHead width.
        shapes = {
            f: ShapeSpec(channels=cfg.MODEL.DYHEAD.CHANNELS, stride=backbone_shapes[f].stride)
            for f in cfg.MODEL.ATSS.IN_FEATURES
        }
        for key, names in (("MODEL.ROI_HEADS.IN_FEATURES", cfg.MODEL.ROI_HEADS.IN_FEATURES),
                           ("MODEL.RPN.IN_FEATURES", cfg.MODEL.RPN.IN_FEATURES)):
            if key.startswith("MODEL.RPN") and cfg.MODEL.GLIP.PROPOSAL_SOURCE != "rpn":
                continue
            missing = [n for n in names if n not in shapes]
            if missing:
                raise ValueError(f"{key} {missing} are not VL-tower levels {list(shapes)} (MODEL.ATSS.IN_FEATURES)")
        source = cfg.MODEL.GLIP.PROPOSAL_SOURCE
        ret.update(
            roi_heads=build_roi_heads(cfg, shapes),
            proposal_source=source,
            proposal_generator=build_proposal_generator(cfg, shapes) if source == "rpn" else None,
            dense_proposal_topk={
                True: (cfg.MODEL.RPN.PRE_NMS_TOPK_TRAIN, cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN),
                False: (cfg.MODEL.RPN.PRE_NMS_TOPK_TEST, cfg.MODEL.RPN.POST_NMS_TOPK_TEST),
            },
            dense_proposal_nms=cfg.MODEL.RPN.NMS_THRESH,
        )
        return ret

    # ---- shared -------------------------------------------------------------------------------------------
    def _text(self, lang: dict, lang_out: dict) -> torch.Tensor:
        return lang_out["hidden"] if self.use_fused_text else lang["embedded"]

    def _proposals(self, images: ImageList, features: dict[str, torch.Tensor], outputs: dict, anchors,
                   positive_maps: list[torch.Tensor], gt_instances: list[Instances] | None):
        """(proposals, losses): detectron2's RPN, or the dense head's top boxes (no loss of their own)."""
        if self.proposal_source == "rpn":
            return self.proposal_generator(images, features, gt_instances)
        num_images = len(images)
        boxes = []
        for reg, level_anchors in zip(outputs["box_regression"], anchors):
            deltas = reg.permute(0, 2, 3, 1).reshape(num_images, -1, 4)
            decoded = [self.postprocessor.box_coder.decode(d, level_anchors) for d in deltas]
            boxes.append(legacy_to_continuous(torch.stack(decoded)))
        centerness = [c.permute(0, 2, 3, 1).reshape(num_images, -1) for c in outputs["centerness"]]
        pre, post = self.dense_proposal_topk[self.training]
        proposals = dense_head_proposals(
            boxes, outputs["dot_product_logits"], centerness, positive_maps, images.image_sizes,
            pre_nms_topk=pre, post_nms_topk=post, nms_thresh=self.dense_proposal_nms, training=self.training,
        )
        return proposals, {}

    # ---- training -----------------------------------------------------------------------------------------
    def forward(self, batched_inputs: list[dict]):
        if not self.training:
            return self.inference(batched_inputs)
        for x in batched_inputs:
            if "caption" not in x or "instances" not in x:
                raise ValueError(f"training needs 'caption' and 'instances' in each input dict; got {sorted(x)}")
        images = self.preprocess_image(batched_inputs)
        lang, mlm_labels = self._training_text(batched_inputs)  # GLIPv2's MLM masks the ids before the encoder
        fpn_features = self.extract_features(images)
        outputs, visual, lang_out = self.predict(fpn_features, lang)
        anchors = self.anchor_generator(visual)
        gt_instances = [x["instances"].to(self.device) for x in batched_inputs]
        gt_boxes, gt_maps = self._targets(gt_instances)
        matched = self._glipv2_matching(anchors, gt_boxes)
        losses = dict(self.loss(
            outputs["box_regression"], outputs["centerness"], outputs["dot_product_logits"], anchors,
            gt_boxes, gt_maps, lang["masks"], matched_idxs=matched,
        ))
        losses.update(self._glipv2_losses(fpn_features, lang, lang_out, mlm_labels, matched, gt_maps, batched_inputs))
        num_tokens = lang["masks"].shape[1]
        for inst in gt_instances:
            inst.gt_positive_map = fit_token_width(inst.gt_positive_map, num_tokens)
        positive_maps = [
            fit_token_width(x.get("positive_map", inst.gt_positive_map).to(self.device), num_tokens)
            for x, inst in zip(batched_inputs, gt_instances)
        ]
        features = dict(zip(self.in_features, visual))
        proposals, proposal_losses = self._proposals(images, features, outputs, anchors, positive_maps, gt_instances)
        _, detector_losses = self.roi_heads(
            images, features, proposals, gt_instances,
            lang_features=self._text(lang, lang_out), lang_masks=lang["masks"],
        )
        losses.update(proposal_losses)
        losses.update(detector_losses)
        return losses

    # ---- inference ----------------------------------------------------------------------------------------
    def inference(self, batched_inputs: list[dict], do_postprocess: bool = True):
        """Like ``GLIP.inference`` (image backbone once, every prompt through language + tower + heads, several
        prompts merged to the top TEST.DETECTIONS_PER_IMAGE), with ROI-head detections and masks."""
        images = self.preprocess_image(batched_inputs)
        features = self.extract_features(images)
        prompts = [x["prompts"] if x.get("prompts") else [_single_prompt(x)] for x in batched_inputs]
        if any(len(p) == 0 for p in prompts):
            raise ValueError("an input dict has an empty 'prompts' list")
        per_image: list[list[Instances]] = [[] for _ in batched_inputs]
        for j in range(max(len(p) for p in prompts)):
            idx = [i for i, p in enumerate(prompts) if len(p) > j]
            sub = [prompts[i][j] for i in idx]
            feats = features if len(idx) == len(batched_inputs) else [f[idx] for f in features]
            sub_images = ImageList(images.tensor[idx], [images.image_sizes[i] for i in idx])
            lang = self.encode_text([p["caption"] for p in sub])
            outputs, visual, lang_out = self.predict(feats, lang)
            num_tokens = lang["masks"].shape[1]
            maps = [fit_token_width(torch.as_tensor(p["positive_map"]).to(self.device), num_tokens) for p in sub]
            labels = [
                torch.as_tensor(p["positive_map_labels"]).to(self.device) if p.get("positive_map_labels") is not None
                else torch.arange(len(m), device=self.device)
                for p, m in zip(sub, maps)
            ]
            level_features = dict(zip(self.in_features, visual))
            anchors = self.anchor_generator(visual) if self.proposal_source == "dense" else None
            proposals, _ = self._proposals(sub_images, level_features, outputs, anchors, maps, None)
            dets, _ = self.roi_heads(
                sub_images, level_features, proposals,
                lang_features=self._text(lang, lang_out), positive_maps=maps, positive_map_labels=labels,
            )
            for i, p, det in zip(idx, sub, dets):
                if p.get("phrases") is not None:
                    det.pred_phrases = PhraseList(p["phrases"][r] for r in det.pred_label_rows.tolist())
                per_image[i].append(det)
        results = []
        for i, x in enumerate(batched_inputs):
            inst = self._merge_instances(per_image[i])
            if do_postprocess:
                h, w = inst.image_size
                inst = detector_postprocess(inst, x.get("height", h), x.get("width", w))
                results.append({"instances": inst})
            else:
                results.append(inst)
        return results

    def _merge_instances(self, dets: list[Instances]) -> Instances:
        """One prompt: as is. Several: concatenate, keep the top TEST.DETECTIONS_PER_IMAGE by score."""
        if len(dets) == 1:
            return dets[0]
        merged = Instances.cat(dets)
        if merged.has("pred_phrases"):  # Instances.cat turns lists into plain lists; keep tensor indexing
            merged.pred_phrases = PhraseList(merged.pred_phrases)
        order = torch.sort(merged.scores, descending=True, stable=True).indices
        if self.max_detections_merged > 0:
            order = order[: self.max_detections_merged]
        return merged[order]
