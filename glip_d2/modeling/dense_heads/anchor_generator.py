"""Legacy Detectron anchors as GLIP uses them (official detail 7).

One cell anchor per (size, aspect ratio) per level, built from a ``stride x stride`` base box whose centre is
``(stride - 1) / 2`` and whose corners sit at ``centre -+ (size - 1) / 2`` (so the "+1" width is exactly
``size``); the cell is shifted over the *padded* feature map, row-major. detectron2's
``DefaultAnchorGenerator`` centres anchors on ``stride * i`` (or ``+ stride / 2``) with continuous widths,
which shifts every anchor by half a pixel, hence this generator.
"""
from collections.abc import Sequence

import torch
from detectron2.config import configurable
from torch import nn

__all__ = ["GLIPAnchorGenerator", "legacy_cell_anchors"]


def legacy_cell_anchors(stride: int, sizes: Sequence[float], aspect_ratios: Sequence[float]) -> torch.Tensor:
    """Cell anchors [len(ratios) * len(sizes), 4] of maskrcnn-benchmark's ``generate_anchors``.

    Ratio-major order; widths for a ratio r are ``round(sqrt(stride^2 / r))`` then scaled by ``size / stride``,
    exactly as the legacy code rounds them (in float64, converted to float32 at the end).
    """
    if stride <= 0 or not sizes or not aspect_ratios:
        raise ValueError(f"invalid anchor spec: stride={stride}, sizes={sizes}, aspect_ratios={aspect_ratios}")
    base = float(stride)
    ctr = 0.5 * (base - 1)  # centre of the box [0, 0, stride - 1, stride - 1]
    ratios = torch.tensor(aspect_ratios, dtype=torch.float64)
    scales = torch.tensor(sizes, dtype=torch.float64) / base
    ws = torch.round(torch.sqrt(base * base / ratios))
    hs = torch.round(ws * ratios)
    ws = (ws[:, None] * scales[None, :]).reshape(-1)
    hs = (hs[:, None] * scales[None, :]).reshape(-1)
    cells = torch.stack((ctr - 0.5 * (ws - 1), ctr - 0.5 * (hs - 1), ctr + 0.5 * (ws - 1), ctr + 0.5 * (hs - 1)), 1)
    return cells.float()


class GLIPAnchorGenerator(nn.Module):
    """Anchors [H_l * W_l * A, 4] per level (location-major, anchor-minor), shared by all images of a batch."""

    @configurable
    def __init__(self, *, sizes: Sequence[float], strides: Sequence[int], aspect_ratios: Sequence[float] = (1.0,)):
        super().__init__()
        if len(sizes) != len(strides):
            raise ValueError(f"one anchor size per stride expected, got sizes={sizes}, strides={strides}")
        self.strides = [int(s) for s in strides]
        self.num_anchors = len(aspect_ratios)
        for i, (stride, size) in enumerate(zip(self.strides, sizes)):
            # recomputed from the config, never saved (official `cell_anchors` are dropped on conversion)
            self.register_buffer(f"cell_anchors_{i}", legacy_cell_anchors(stride, [size], aspect_ratios), False)

    @classmethod
    def from_config(cls, cfg):
        return {
            "sizes": cfg.MODEL.ATSS.ANCHOR_SIZES,
            "strides": cfg.MODEL.ATSS.ANCHOR_STRIDES,
            "aspect_ratios": cfg.MODEL.ATSS.ASPECT_RATIOS,
        }

    @property
    def cell_anchors(self) -> list[torch.Tensor]:
        return [getattr(self, f"cell_anchors_{i}") for i in range(len(self.strides))]

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        if len(features) != len(self.strides):
            raise ValueError(f"got {len(features)} feature maps for {len(self.strides)} anchor strides")
        anchors = []
        for feature, stride, cell in zip(features, self.strides, self.cell_anchors):
            height, width = feature.shape[-2:]
            device = feature.device
            shifts_x = torch.arange(0, width * stride, step=stride, dtype=torch.float32, device=device)
            shifts_y = torch.arange(0, height * stride, step=stride, dtype=torch.float32, device=device)
            shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
            shift_x, shift_y = shift_x.reshape(-1), shift_y.reshape(-1)
            shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=1)
            anchors.append((shifts[:, None, :] + cell.to(device)[None, :, :]).reshape(-1, 4))
        return anchors
