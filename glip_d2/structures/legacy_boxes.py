"""GLIP's legacy "+1" box convention and the conversions to and from detectron2's continuous boxes.

The official model inherits maskrcnn-benchmark's pixel-index convention: a box ``[x1, y1, x2, y2]`` covers the
pixels ``x1..x2`` inclusive, so its width is ``x2 - x1 + 1``. Anchors, regression targets, ATSS IoUs, NMS and
clipping all use it; detectron2's ``pairwise_iou`` / ``batched_nms`` use continuous boxes and would move every box
by sub-pixel amounts, so GLIP's dense head uses these versions (official detail 7 in docs/official_details.md).
"""
import torch

__all__ = ["check_boxes", "legacy_pairwise_iou", "legacy_clip", "continuous_to_legacy", "legacy_to_continuous"]


def check_boxes(name: str, boxes: torch.Tensor, batched: bool = False) -> None:
    """A ValueError naming ``name`` unless ``boxes`` is [N, 4] (or [..., 4] when ``batched``)."""
    if boxes.shape[-1:] != (4,) or (boxes.dim() != 2 and not batched):
        raise ValueError(f"{name} must have shape {'[..., 4]' if batched else '[N, 4]'}, got {tuple(boxes.shape)}")


def legacy_pairwise_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """IoU matrix [N, M] with "+1" areas and intersections (maskrcnn-benchmark ``boxlist_iou``)."""
    check_boxes("boxes1", boxes1)
    check_boxes("boxes2", boxes2)
    area1 = (boxes1[:, 2] - boxes1[:, 0] + 1) * (boxes1[:, 3] - boxes1[:, 1] + 1)
    area2 = (boxes2[:, 2] - boxes2[:, 0] + 1) * (boxes2[:, 3] - boxes2[:, 1] + 1)
    lt = torch.max(boxes1[:, None, :2], boxes2[None, :, :2])
    rb = torch.min(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = (rb - lt + 1).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area1[:, None] + area2[None, :] - inter)


def legacy_clip(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Clamp x to [0, width - 1] and y to [0, height - 1] (``BoxList.clip_to_image``, pixel-index bounds)."""
    check_boxes("boxes", boxes)
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
    check_boxes("boxes", boxes, batched=True)
    return boxes - boxes.new_tensor([0.0, 0.0, 1.0, 1.0])


def legacy_to_continuous(boxes: torch.Tensor) -> torch.Tensor:
    """GLIP's pixel-index xyxy -> detectron2's continuous xyxy (``x2 + 1``, ``y2 + 1``).

    Applied once to the model's final, rescaled detections so that detectron2's tools read them as the official
    code exports them: COCO json ``w = x2 - x1 + 1`` (official ``BoxList.convert("xywh")``), so ``COCOEvaluator``
    reproduces the official COCO AP. (Official LVIS export omits the +1; the difference is one pixel.)
    """
    check_boxes("boxes", boxes, batched=True)
    return boxes + boxes.new_tensor([0.0, 0.0, 1.0, 1.0])
