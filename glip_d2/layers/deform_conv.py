"""Modulated deformable convolution (DCNv2) written with whole-tensor sampling and one matrix product.

``deform_conv2d_grid_sample`` (CPU inference): torchvision's CPU forward samples the input one point at a time and
takes about 90 % of a deformable conv there; ``F.grid_sample`` does the same bilinear sampling (zero outside the
image, per corner) vectorised over channels and threads, 3x faster for a 256-channel DyHead conv, with the same
values up to float rounding (``tools/benchmark.py --baseline torchvision-dcn`` measures the whole model).

``deform_conv2d_gather`` (CPU training): the backward pass of ``torchvision.ops.deform_conv2d`` on the CPU scatters
one sampling point at a time and dominates a CPU training step of a small GLIP (about two thirds of it). The same
arithmetic as four whole-tensor gathers plus a batched matmul, differentiated by autograd, is 3-6x faster backward
and gives the same forward values (bit-identical in our tests), so "auto" uses the gathers on the CPU when gradients
are needed; on CUDA torchvision's kernels are the fast ones.
(``tools/benchmark.py --mode train --baseline torchvision-dcn`` measures the whole training step.)

Semantics are torchvision's (and the official DCN's): output pixel (i, j), tap (a, b) samples the input at
``(i*stride - pad + a*dilation + dy, j*stride - pad + b*dilation + dx)`` bilinearly, a corner outside the image
counting as zero, multiplies by the tap's mask and sums with the conv weight. Offsets are (dy, dx) per tap,
tap-major; one offset group, one weight group.
"""
import functools

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "DEFORM_IMPLS", "check_deform_impl", "deform_conv2d_gather", "deform_conv2d_grid_sample", "deform_conv2d_sampled",
    "resolve_deform_impl",
]

#: ``MODEL.DYHEAD.DEFORM_IMPL`` values.
DEFORM_IMPLS = ("auto", "torchvision", "gather", "grid_sample")


def check_deform_impl(impl: str) -> str:
    """``impl`` if it is a ``MODEL.DYHEAD.DEFORM_IMPL`` value, else a ValueError naming the choices."""
    if impl not in DEFORM_IMPLS:
        raise ValueError(f"MODEL.DYHEAD.DEFORM_IMPL must be one of {DEFORM_IMPLS}, got {impl!r}.")
    return impl


def resolve_deform_impl(impl: str, device: torch.device, needs_grad: bool) -> str:
    """"auto" -> torchvision's kernels on CUDA; off CUDA the gathers for a backward pass, grid_sample otherwise."""
    if check_deform_impl(impl) == "auto":
        if device.type == "cuda":
            return "torchvision"
        return "gather" if needs_grad else "grid_sample"
    return impl


def _tap_grid(kh: int, kw: int, h_out: int, w_out: int, stride: int, padding: int, dilation: int, like: Tensor):
    """Undeformed sampling rows/cols, [K, Ho, Wo] each (K = kh*kw, tap-major as the weight's flattening)."""
    kwargs = dict(dtype=like.dtype, device=like.device)
    tap_y = (torch.arange(kh, **kwargs) * dilation).repeat_interleave(kw)
    tap_x = (torch.arange(kw, **kwargs) * dilation).repeat(kh)
    out_y = torch.arange(h_out, **kwargs) * stride - padding
    out_x = torch.arange(w_out, **kwargs) * stride - padding
    rows = tap_y[:, None, None] + out_y[None, :, None]
    cols = tap_x[:, None, None] + out_x[None, None, :]
    return rows.expand(-1, -1, w_out), cols.expand(-1, h_out, -1)


def _checked_output_shape(x, offset, weight, mask, stride, padding, dilation) -> tuple[int, int, int, int]:
    """(out channels, taps, Ho, Wo), or a ValueError naming the input that does not fit."""
    b, c, h, w = x.shape
    o, c_w, kh, kw = weight.shape
    if c_w != c:
        raise ValueError(f"weight expects {c_w} input channels, the input has {c} (grouped conv is not supported).")
    k = kh * kw
    h_out = (h + 2 * padding - dilation * (kh - 1) - 1) // stride + 1
    w_out = (w + 2 * padding - dilation * (kw - 1) - 1) // stride + 1
    if offset.shape != (b, 2 * k, h_out, w_out):
        raise ValueError(f"offset must have shape {(b, 2 * k, h_out, w_out)} (one offset group), got "
                         f"{tuple(offset.shape)}.")
    if mask is not None and mask.shape != (b, k, h_out, w_out):
        raise ValueError(f"mask must have shape {(b, k, h_out, w_out)}, got {tuple(mask.shape)}.")
    return o, k, h_out, w_out


def _sample_gather(x: Tensor, y: Tensor, xs: Tensor) -> Tensor:
    """Bilinear samples of ``x`` [B, C, H, W] at rows ``y`` / cols ``xs`` [B, K, Ho, Wo]: [B, C, K*Ho*Wo], as four
    whole-tensor gathers (differentiable by autograd, fast backward on CPU)."""
    b, c, h, w = x.shape
    inside = (y > -1) & (y < h) & (xs > -1) & (xs < w)  # official: outside this band the sample is 0
    y0 = torch.floor(y)
    x0 = torch.floor(xs)
    ly, lx = y - y0, xs - x0
    hy, hx = 1 - ly, 1 - lx
    y0i, x0i = y0.long(), x0.long()
    flat = x.reshape(b, c, h * w)
    n = y[0].numel()
    columns = None
    for dy, dx, wgt in ((0, 0, hy * hx), (0, 1, hy * lx), (1, 0, ly * hx), (1, 1, ly * lx)):
        yi, xi = y0i + dy, x0i + dx
        valid = inside & (yi >= 0) & (yi < h) & (xi >= 0) & (xi < w)
        index = (yi.clamp(0, h - 1) * w + xi.clamp(0, w - 1)).reshape(b, 1, n).expand(b, c, n)
        coef = (wgt * valid.to(wgt.dtype)).reshape(b, 1, n)
        term = torch.gather(flat, 2, index) * coef
        columns = term if columns is None else columns + term
    return columns


def _sample_grid(x: Tensor, y: Tensor, xs: Tensor) -> Tensor:
    """``_sample_gather``'s values with ``F.grid_sample`` (vectorised over channels and threads: faster forward)."""
    b, c, h, w = x.shape
    k, h_out, w_out = y.shape[1:]
    # align_corners=False: pixel p is at (2p + 1) / size - 1, defined for a 1-pixel-wide level too. Corners outside
    # the image read zero (padding_mode "zeros"), as the official kernel; a point outside the band (-1, size) has
    # every corner outside, so it reads 0 as there.
    grid = torch.stack(((2 * xs + 1) / w - 1, (2 * y + 1) / h - 1), dim=-1).reshape(b, k * h_out, w_out, 2)
    columns = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)  # [B, C, K*Ho, Wo]
    return columns.reshape(b, c, k * h_out * w_out)


SAMPLERS = {"gather": _sample_gather, "grid_sample": _sample_grid}


def deform_conv2d_sampled(
    x: Tensor,
    offset: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    mask: Tensor | None = None,
    stride: int = 1,
    padding: int = 1,
    dilation: int = 1,
    sampling: str = "gather",
) -> Tensor:
    """``torchvision.ops.deform_conv2d(x, offset, weight, bias, stride, padding, dilation, mask)`` for one offset
    group and one weight group; ``offset`` [B, 2K, Ho, Wo], ``mask`` [B, K, Ho, Wo] or None (all ones);
    ``sampling`` one of ``SAMPLERS``."""
    b, c = x.shape[:2]
    o, k, h_out, w_out = _checked_output_shape(x, offset, weight, mask, stride, padding, dilation)
    kh, kw = weight.shape[-2:]
    rows, cols = _tap_grid(kh, kw, h_out, w_out, stride, padding, dilation, offset)
    y = rows + offset[:, 0::2]  # [B, K, Ho, Wo], in pixels
    xs = cols + offset[:, 1::2]
    columns = SAMPLERS[sampling](x, y, xs)  # [B, C, K*Ho*Wo]
    if mask is not None:
        columns = columns * mask.reshape(b, 1, k * h_out * w_out)
    # [B, C, K, Ho*Wo] -> [B, C*K, Ho*Wo]: the order of weight.reshape(O, C*kh*kw)
    columns = columns.reshape(b, c * k, h_out * w_out)
    out = torch.matmul(weight.reshape(o, c * k), columns)
    if bias is not None:
        out = out + bias.reshape(1, o, 1)
    return out.reshape(b, o, h_out, w_out)


#: The two CPU implementations under the names their callers use (same arguments as ``deform_conv2d_sampled``).
deform_conv2d_gather = functools.partial(deform_conv2d_sampled, sampling="gather")
deform_conv2d_grid_sample = functools.partial(deform_conv2d_sampled, sampling="grid_sample")
