"""GLIP's dense grounding losses: token focal, centerness-weighted GIoU, centerness.

``GLIPLoss`` assigns anchors with ATSS, builds token / box targets and returns the three official loss terms
(``cls_logits``' loss is always x0 officially and is not computed). Normalisers are averaged over workers, and
everything runs in float32 as the official ``custom_fwd(cast_inputs=float32)`` does.
"""

import torch
import torch.distributed as dist
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.utils import comm
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

from .atss import ATSSMatcher
from .box_coder import GLIPBoxCoder

__all__ = [
    "token_sigmoid_focal_loss",
    "giou_loss",
    "centerness_targets",
    "build_token_targets",
    "GLIPLoss",
]


def token_sigmoid_focal_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    text_mask: torch.Tensor | None,
    alpha: float = 0.25,
    gamma: float = 2.0,
) -> torch.Tensor:
    """Summed binary focal loss over (anchor, token) pairs whose token is valid in ``text_mask`` [B, L].

    ``logits`` and ``targets`` are [B, A, L]; pairs of padded tokens are dropped (masked_select) before the loss.
    """
    if logits.shape != targets.shape or logits.dim() != 3:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} must both be [B, A, L]")
    if text_mask is not None:
        if text_mask.shape != (logits.shape[0], logits.shape[2]):
            raise ValueError(f"text_mask must be [B, L] = {(logits.shape[0], logits.shape[2])}, got {tuple(text_mask.shape)}")
        keep = (text_mask > 0)[:, None, :].expand_as(logits)
        logits = torch.masked_select(logits, keep)
        targets = torch.masked_select(targets, keep)
    return sigmoid_focal_loss(logits, targets, alpha=alpha, gamma=gamma, reduction="sum")


def giou_loss(pred_boxes: torch.Tensor, target_boxes: torch.Tensor, weight: torch.Tensor | None = None):
    """Sum of ``(1 - GIoU) * weight`` with continuous areas (no +1) and eps 1e-7, as GLIP's ``GIoULoss``.

    Predicted x2/y2 are first raised to at least x1/y1. If ``weight`` sums to 0 the unweighted sum is returned.
    """
    # the official loss first raises x2/y2 to at least x1/y1; the rest is torchvision's GIoU (same eps)
    pred_boxes = torch.cat([pred_boxes[:, :2], torch.max(pred_boxes[:, :2], pred_boxes[:, 2:])], dim=1)
    losses = generalized_box_iou_loss(pred_boxes, target_boxes, reduction="none", eps=1e-7)
    if weight is not None and weight.sum() > 0:
        return (losses * weight).sum()
    return losses.sum()


def centerness_targets(gt_boxes: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """sqrt(min(l,r)/max(l,r) * min(t,b)/max(t,b)) of the anchor centre w.r.t. its (decoded) box, [N]."""
    cx = (anchors[:, 2] + anchors[:, 0]) / 2
    cy = (anchors[:, 3] + anchors[:, 1]) / 2
    left, top = cx - gt_boxes[:, 0], cy - gt_boxes[:, 1]
    right, bottom = gt_boxes[:, 2] - cx, gt_boxes[:, 3] - cy
    lr = torch.stack((left, right), dim=1)
    tb = torch.stack((top, bottom), dim=1)
    ctr = torch.sqrt((lr.min(dim=1).values / lr.max(dim=1).values) * (tb.min(dim=1).values / tb.max(dim=1).values))
    if torch.isnan(ctr).any():
        raise FloatingPointError("NaN centerness target: a positive anchor centre lies on its box border")
    return ctr


def build_token_targets(matched: torch.Tensor, gt_positive_map: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """Token targets [A, num_tokens]: the matched box's positive-map row, or the [NoObj] one-hot for negatives.

    The [NoObj] slot is the last token position (index MAX_QUERY_LEN - 1 with PAD_MAX, official detail 9); it only
    matters when a caption fills every position, otherwise that position is padding and masked out of the loss.
    """
    pm = gt_positive_map.to(torch.float32)
    if pm.dim() != 2:
        raise ValueError(f"gt_positive_map must be [N, L], got {tuple(pm.shape)}")
    if pm.shape[1] > num_tokens:
        if pm[:, num_tokens:].any():
            raise ValueError(
                f"gt_positive_map marks token positions >= {num_tokens}, beyond the tokenized caption length"
            )
        pm = pm[:, :num_tokens]
    elif pm.shape[1] < num_tokens:
        pm = F.pad(pm, (0, num_tokens - pm.shape[1]))
    no_obj = torch.zeros(num_tokens, dtype=torch.float32, device=matched.device)
    no_obj[-1] = 1.0
    if pm.shape[0] == 0:
        return no_obj[None, :].repeat(matched.shape[0], 1)
    pm = pm.to(matched.device)
    targets = pm[matched.clamp(min=0)]
    return torch.where((matched >= 0)[:, None], targets, no_obj[None, :])


def _all_reduce_sum(value: torch.Tensor) -> torch.Tensor:
    if comm.get_world_size() > 1:
        value = value.clone()
        dist.all_reduce(value)
    return value


class GLIPLoss:
    """ATSS targets + the three official loss terms. Stateless; call with the head outputs of one batch."""

    @configurable
    def __init__(
        self,
        *,
        box_coder: GLIPBoxCoder,
        matcher: ATSSMatcher,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        token_loss_weight: float = 1.0,
        reg_loss_weight: float = 2.0,
        centerness_loss_weight: float = 1.0,
    ):
        self.box_coder = box_coder
        self.matcher = matcher
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.token_loss_weight = token_loss_weight
        self.reg_loss_weight = reg_loss_weight
        self.centerness_loss_weight = centerness_loss_weight

    @classmethod
    def from_config(cls, cfg, box_coder: GLIPBoxCoder | None = None):
        return {
            "box_coder": box_coder or GLIPBoxCoder(cfg.MODEL.ATSS.BBOX_REG_WEIGHTS),
            "matcher": ATSSMatcher(cfg.MODEL.ATSS.TOPK, len(cfg.MODEL.ATSS.ASPECT_RATIOS)),
            "focal_alpha": cfg.MODEL.GLIP.TOKEN_ALPHA,
            "focal_gamma": cfg.MODEL.GLIP.TOKEN_GAMMA,
            "token_loss_weight": cfg.MODEL.GLIP.TOKEN_LOSS_WEIGHT,
            "reg_loss_weight": cfg.MODEL.ATSS.REG_LOSS_WEIGHT,
            "centerness_loss_weight": cfg.MODEL.GLIP.CENTERNESS_LOSS_WEIGHT,
        }

    def __call__(
        self,
        box_regression: list[torch.Tensor],
        centerness: list[torch.Tensor],
        dot_product_logits: list[torch.Tensor],
        anchors: list[torch.Tensor],
        gt_boxes: list[torch.Tensor],
        gt_positive_maps: list[torch.Tensor],
        text_masks: torch.Tensor,
        matched_idxs: list[torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Head outputs per level ([B,4,H,W], [B,1,H,W], [B,HW,L]); anchors per level [HW,4];
        per image ``gt_boxes`` [G,4] in legacy "+1" xyxy and ``gt_positive_maps`` [G, L]; ``text_masks`` [B, L].
        ``matched_idxs``: :meth:`match`'s result when the caller needs the assignment too (computed here if None).
        """
        with torch.autocast(device_type=text_masks.device.type, enabled=False):
            return self._losses(
                [b.float() for b in box_regression],
                [c.float() for c in centerness],
                [d.float() for d in dot_product_logits],
                [a.float() for a in anchors],
                [g.float() for g in gt_boxes],
                gt_positive_maps,
                text_masks,
                matched_idxs,
            )

    def match(self, anchors: list[torch.Tensor], gt_boxes: list[torch.Tensor]) -> list[torch.Tensor]:
        """ATSS assignment per image (box index per anchor, -1 = negative), exactly as the loss computes it, so
        that other objectives on the same anchors (GLIPv2's region-word loss) run the matcher only once."""
        with torch.autocast(device_type=anchors[0].device.type, enabled=False):
            level_anchors = [a.float() for a in anchors]
            return [self.matcher(level_anchors, boxes.float()) for boxes in gt_boxes]

    def _losses(self, box_regression, centerness, dot_product_logits, anchors, gt_boxes, gt_positive_maps, masks,
                matched_idxs=None):
        num_images = box_regression[0].shape[0]
        if len(gt_boxes) != num_images or len(gt_positive_maps) != num_images:
            raise ValueError(f"{len(gt_boxes)} gt box sets / {len(gt_positive_maps)} maps for {num_images} images")
        box_reg = torch.cat([b.permute(0, 2, 3, 1).reshape(num_images, -1, 4) for b in box_regression], dim=1)
        ctr = torch.cat([c.permute(0, 2, 3, 1).reshape(num_images, -1) for c in centerness], dim=1)
        logits = torch.cat(dot_product_logits, dim=1)  # [B, A, L]
        all_anchors = torch.cat(anchors, dim=0)
        if box_reg.shape[1] != all_anchors.shape[0] or logits.shape[1] != all_anchors.shape[0]:
            raise ValueError(
                f"{all_anchors.shape[0]} anchors but {box_reg.shape[1]} box and {logits.shape[1]} token predictions"
            )
        num_tokens = logits.shape[2]
        if matched_idxs is not None and len(matched_idxs) != num_images:
            raise ValueError(f"{len(matched_idxs)} matched index sets for {num_images} images")

        token_targets, reg_targets, positive = [], [], []
        for i, (boxes, pmap) in enumerate(zip(gt_boxes, gt_positive_maps)):
            if pmap.shape[0] != boxes.shape[0]:
                raise ValueError(f"{boxes.shape[0]} gt boxes but {pmap.shape[0]} positive-map rows")
            matched = self.matcher(anchors, boxes) if matched_idxs is None else matched_idxs[i]
            token_targets.append(build_token_targets(matched, pmap, num_tokens))
            if boxes.shape[0]:
                reg_targets.append(self.box_coder.encode(boxes[matched.clamp(min=0)], all_anchors))
            else:
                reg_targets.append(torch.zeros_like(all_anchors))
            positive.append(matched >= 0)
        token_targets = torch.stack(token_targets)
        reg_targets = torch.stack(reg_targets)
        positive = torch.stack(positive)

        world_size = comm.get_world_size()
        num_pos = positive.sum().to(torch.float32)
        num_pos_avg = max(_all_reduce_sum(num_pos).item() / world_size, 1.0)

        loss_token = (
            token_sigmoid_focal_loss(logits, token_targets, masks, self.focal_alpha, self.focal_gamma) / num_pos_avg
        )

        pos_reg = box_reg[positive]
        pos_ctr = ctr[positive]
        if pos_reg.shape[0] > 0:
            pos_targets = reg_targets[positive]
            pos_anchors = all_anchors[None].expand(num_images, -1, -1)[positive]
            target_boxes = self.box_coder.decode(pos_targets, pos_anchors)
            ctr_targets = centerness_targets(target_boxes, pos_anchors)
            ctr_sum_avg = _all_reduce_sum(ctr_targets.sum()).item() / world_size
            pred_boxes = self.box_coder.decode(pos_reg, pos_anchors)
            loss_reg = giou_loss(pred_boxes, target_boxes, weight=ctr_targets) / ctr_sum_avg
            loss_ctr = F.binary_cross_entropy_with_logits(pos_ctr, ctr_targets, reduction="sum") / num_pos_avg
        else:
            _all_reduce_sum(ctr.new_zeros(()))  # keep the collective in step with workers that have positives
            loss_reg = pos_reg.sum()
            loss_ctr = pos_ctr.sum()
        return {
            "loss_dot_product_token": loss_token * self.token_loss_weight,
            "loss_reg": loss_reg * self.reg_loss_weight,
            "loss_centerness": loss_ctr * self.centerness_loss_weight,
        }
