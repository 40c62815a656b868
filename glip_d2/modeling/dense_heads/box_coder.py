"""GLIP's box coder: anchor-relative deltas in the legacy "+1" convention (maskrcnn-benchmark ``BoxCoder``).

detectron2's ``Box2BoxTransform`` works on continuous boxes (width ``x2 - x1``); the official regression targets use
``x2 - x1 + 1`` and decode with ``- 1``, so GLIP keeps its own coder to reproduce the official boxes exactly.
"""
import math
from collections.abc import Sequence

import torch

from ...structures.legacy_boxes import check_boxes

__all__ = ["GLIPBoxCoder"]

#: Largest log-scale change of width/height allowed when decoding (exp() overflow guard, official value).
DEFAULT_SCALE_CLAMP = math.log(1000.0 / 16)


class GLIPBoxCoder:
    """Anchor-relative box deltas with "+1" widths and centres ``(x1 + x2) / 2`` (the VLDyHead ``BoxCoder``).

    encode: ``dx = wx (gx - ax) / aw``, ``dw = ww log(gw / aw)`` (same for y/h);
    decode: divide by the weights, clamp dw/dh from above at ``scale_clamp``, then
    ``box = [cx - (w - 1) / 2, cy - (h - 1) / 2, cx + (w - 1) / 2, cy + (h - 1) / 2]``.
    """

    def __init__(self, weights: Sequence[float] = (10.0, 10.0, 5.0, 5.0), scale_clamp: float = DEFAULT_SCALE_CLAMP):
        if len(weights) != 4:
            raise ValueError(f"box coder weights must be 4 numbers (wx, wy, ww, wh), got {weights}")
        self.weights: tuple[float, float, float, float] = tuple(float(w) for w in weights)
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
        check_boxes("gt_boxes", gt_boxes)
        check_boxes("anchors", anchors)
        wx, wy, ww, wh = self.weights
        ax, ay, aw, ah = self._centre_size(anchors)
        gx, gy, gw, gh = self._centre_size(gt_boxes)
        return torch.stack(
            (wx * (gx - ax) / aw, wy * (gy - ay) / ah, ww * torch.log(gw / aw), wh * torch.log(gh / ah)), dim=1
        )

    def decode(self, deltas: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """Boxes [N, 4] (legacy xyxy) from ``deltas`` [N, 4] relative to ``anchors`` [N, 4]."""
        check_boxes("deltas", deltas)
        check_boxes("anchors", anchors)
        anchors = anchors.to(deltas.dtype)
        wx, wy, ww, wh = self.weights
        ax, ay, aw, ah = self._centre_size(anchors)
        dx, dy = deltas[:, 0] / wx, deltas[:, 1] / wy
        dw = torch.clamp(deltas[:, 2] / ww, max=self.scale_clamp)
        dh = torch.clamp(deltas[:, 3] / wh, max=self.scale_clamp)
        cx, cy = dx * aw + ax, dy * ah + ay
        w, h = torch.exp(dw) * aw, torch.exp(dh) * ah
        return torch.stack((cx - 0.5 * (w - 1), cy - 0.5 * (h - 1), cx + 0.5 * (w - 1), cy + 0.5 * (h - 1)), dim=1)
