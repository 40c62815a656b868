"""GLIP's legacy "+1" box geometry: box coder, IoU and clipping (GLIP_REFERENCE.md §3.2, pitfall P7).

The official model inherits maskrcnn-benchmark's pixel-index convention: a box ``[x1, y1, x2, y2]`` covers the
pixels ``x1..x2`` inclusive, so its width is ``x2 - x1 + 1``. Anchors, regression targets, ATSS IoUs, NMS and
clipping all use it; detectron2's ``Box2BoxTransform`` / ``pairwise_iou`` / ``batched_nms`` use continuous boxes
and would move every box by sub-pixel amounts, so GLIP gets its own versions here.
"""
import math
from typing import Sequence, Tuple

import torch

__all__ = ["GLIPBoxCoder", "legacy_pairwise_iou", "legacy_clip", "continuous_to_legacy", "legacy_to_continuous"]

#: Largest log-scale change of width/height allowed when decoding (exp() overflow guard, official value).
DEFAULT_SCALE_CLAMP = math.log(1000.0 / 16)


def _check_boxes(name: str, boxes: torch.Tensor) -> None:
    if boxes.dim() != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"{name} must have shape [N, 4], got {tuple(boxes.shape)}")


class GLIPBoxCoder:
    """Anchor-relative box deltas with "+1" widths and centres ``(x1 + x2) / 2`` (the VLDyHead ``BoxCoder``).

    encode: ``dx = wx (gx - ax) / aw``, ``dw = ww log(gw / aw)`` (same for y/h);
    decode: divide by the weights, clamp dw/dh from above at ``scale_clamp``, then
    ``box = [cx - (w - 1) / 2, cy - (h - 1) / 2, cx + (w - 1) / 2, cy + (h - 1) / 2]``.
    """

    def __init__(self, weights: Sequence[float] = (10.0, 10.0, 5.0, 5.0), scale_clamp: float = DEFAULT_SCALE_CLAMP):
        if len(weights) != 4:
            raise ValueError(f"box coder weights must be 4 numbers (wx, wy, ww, wh), got {weights}")
        self.weights: Tuple[float, float, float, float] = tuple(float(w) for w in weights)
        self.scale_clamp = float(scale_clamp)

    @staticmethod
    def _centre_size(boxes: torch.Tensor):
        widths = boxes[:, 2] - boxes[:, 0] + 1
        heights = boxes[:, 3] - boxes[:, 1] + 1
        ctr_x = (boxes[:, 2] + boxes[:, 0]) / 2
        ctr_y = (boxes[:, 3] + boxes[:, 1]) / 2
        return ctr_x, ctr_y, widths, heights

    def encode(self, gt_boxes: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """Deltas [N, 4] that turn ``anchors`` [N, 4] into ``gt_boxes`` [N, 4] (both legacy xyxy)."""
        _check_boxes("gt_boxes", gt_boxes)
        _check_boxes("anchors", anchors)
        wx, wy, ww, wh = self.weights
        ax, ay, aw, ah = self._centre_size(anchors)
        gx, gy, gw, gh = self._centre_size(gt_boxes)
        return torch.stack(
            (wx * (gx - ax) / aw, wy * (gy - ay) / ah, ww * torch.log(gw / aw), wh * torch.log(gh / ah)), dim=1
        )

    def decode(self, deltas: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """Boxes [N, 4] (legacy xyxy) from ``deltas`` [N, 4] relative to ``anchors`` [N, 4]."""
        _check_boxes("deltas", deltas)
        _check_boxes("anchors", anchors)
        anchors = anchors.to(deltas.dtype)
        wx, wy, ww, wh = self.weights
        ax, ay, aw, ah = self._centre_size(anchors)
        dx, dy = deltas[:, 0] / wx, deltas[:, 1] / wy
        dw = torch.clamp(deltas[:, 2] / ww, max=self.scale_clamp)
        dh = torch.clamp(deltas[:, 3] / wh, max=self.scale_clamp)
        cx, cy = dx * aw + ax, dy * ah + ay
        w, h = torch.exp(dw) * aw, torch.exp(dh) * ah
        return torch.stack((cx - 0.5 * (w - 1), cy - 0.5 * (h - 1), cx + 0.5 * (w - 1), cy + 0.5 * (h - 1)), dim=1)


def legacy_pairwise_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """IoU matrix [N, M] with "+1" areas and intersections (maskrcnn-benchmark ``boxlist_iou``)."""
    _check_boxes("boxes1", boxes1)
    _check_boxes("boxes2", boxes2)
    area1 = (boxes1[:, 2] - boxes1[:, 0] + 1) * (boxes1[:, 3] - boxes1[:, 1] + 1)
    area2 = (boxes2[:, 2] - boxes2[:, 0] + 1) * (boxes2[:, 3] - boxes2[:, 1] + 1)
    lt = torch.max(boxes1[:, None, :2], boxes2[None, :, :2])
    rb = torch.min(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = (rb - lt + 1).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area1[:, None] + area2[None, :] - inter)


def legacy_clip(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Clamp x to [0, width - 1] and y to [0, height - 1] (``BoxList.clip_to_image``, pixel-index bounds)."""
    _check_boxes("boxes", boxes)
    x = boxes[:, 0::2].clamp(min=0, max=width - 1)
    y = boxes[:, 1::2].clamp(min=0, max=height - 1)
    return torch.stack((x[:, 0], y[:, 0], x[:, 1], y[:, 1]), dim=1)


def continuous_to_legacy(boxes: torch.Tensor) -> torch.Tensor:
    """detectron2's continuous xyxy (``x2 = x + w``) -> GLIP's pixel-index xyxy (``x2 = x + w - 1``).

    This is the one conversion point for ground truth (used by the ``GLIP`` meta-architecture on the resized,
    possibly flipped ``gt_boxes``). Subtracting 1 in the resized frame commutes with horizontal flips (the
    legacy flip ``x -> W - 1 - x`` of ``[x1, x2 - 1]`` equals the continuous flip then -1), whereas the official
    pipeline subtracts 1 before resizing by ``scale``; the two differ by ``scale - 1`` pixels on one side of the
    box (x2/y2, or x1 after a flip) -- a sub-pixel-to-one-pixel difference in training targets only.
    """
    _check_boxes("boxes", boxes)
    return boxes - boxes.new_tensor([0.0, 0.0, 1.0, 1.0])


def legacy_to_continuous(boxes: torch.Tensor) -> torch.Tensor:
    """GLIP's pixel-index xyxy -> detectron2's continuous xyxy (``x2 + 1``, ``y2 + 1``).

    Applied once to the model's final, rescaled detections so that detectron2's tools read them as the official
    code exports them: COCO json ``w = x2 - x1 + 1`` (official ``BoxList.convert("xywh")``), so ``COCOEvaluator``
    reproduces the official COCO AP. (Official LVIS export omits the +1; the difference is one pixel.)
    """
    _check_boxes("boxes", boxes)
    return boxes + boxes.new_tensor([0.0, 0.0, 1.0, 1.0])
