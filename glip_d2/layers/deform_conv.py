"""Modulated deformable convolution (DCNv2) written with gathers and one matrix product.

Why: the backward pass of ``torchvision.ops.deform_conv2d`` on the CPU scatters one sampling point at a time
and dominates a CPU training step of a small GLIP (about two thirds of it). The same arithmetic as four
whole-tensor gathers plus a batched matmul, differentiated by autograd, is 3-6x faster backward and gives the same
forward values (bit-identical in our tests). torchvision's forward is as fast or faster, so "auto" uses the
gathers only on the CPU when gradients are needed; on CUDA torchvision's kernels are the fast ones.
(``tools/benchmark.py --mode train --baseline torchvision-dcn`` measures the whole training step.)

Semantics are torchvision's (and the official DCN's): output pixel (i, j), tap (a, b) samples the input at
``(i*stride - pad + a*dilation + dy, j*stride - pad + b*dilation + dx)`` bilinearly, a corner outside the image
counting as zero, multiplies by the tap's mask and sums with the conv weight. Offsets are (dy, dx) per tap,
tap-major; one offset group, one weight group.
"""
import torch
from torch import Tensor

__all__ = ["DEFORM_IMPLS", "check_deform_impl", "deform_conv2d_gather", "resolve_deform_impl"]

#: ``MODEL.DYHEAD.DEFORM_IMPL`` values.
DEFORM_IMPLS = ("auto", "torchvision", "gather")


def check_deform_impl(impl: str) -> str:
    """``impl`` if it is a ``MODEL.DYHEAD.DEFORM_IMPL`` value, else a ValueError naming the choices."""
    if impl not in DEFORM_IMPLS:
        raise ValueError(f"MODEL.DYHEAD.DEFORM_IMPL must be one of {DEFORM_IMPLS}, got {impl!r}.")
    return impl


def resolve_deform_impl(impl: str, device: torch.device, needs_grad: bool) -> str:
    """"auto" -> the gather implementation for a backward pass off CUDA, torchvision's kernel otherwise."""
    if check_deform_impl(impl) == "auto":
        return "gather" if needs_grad and device.type != "cuda" else "torchvision"
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


def deform_conv2d_gather(
    x: Tensor,
    offset: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    mask: Tensor | None = None,
    stride: int = 1,
    padding: int = 1,
    dilation: int = 1,
) -> Tensor:
    """``torchvision.ops.deform_conv2d(x, offset, weight, bias, stride, padding, dilation, mask)`` for one offset
    group and one weight group; ``offset`` [B, 2K, Ho, Wo], ``mask`` [B, K, Ho, Wo] or None (all ones)."""
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

    rows, cols = _tap_grid(kh, kw, h_out, w_out, stride, padding, dilation, offset)
    y = rows + offset[:, 0::2]  # [B, K, Ho, Wo]
    xs = cols + offset[:, 1::2]
    inside = (y > -1) & (y < h) & (xs > -1) & (xs < w)  # official: outside this band the sample is 0
    y0 = torch.floor(y)
    x0 = torch.floor(xs)
    ly, lx = y - y0, xs - x0
    hy, hx = 1 - ly, 1 - lx
    y0i, x0i = y0.long(), x0.long()
    flat = x.reshape(b, c, h * w)
    n = k * h_out * w_out
    columns = None
    for dy, dx, wgt in ((0, 0, hy * hx), (0, 1, hy * lx), (1, 0, ly * hx), (1, 1, ly * lx)):
        yi, xi = y0i + dy, x0i + dx
        valid = inside & (yi >= 0) & (yi < h) & (xi >= 0) & (xi < w)
        index = (yi.clamp(0, h - 1) * w + xi.clamp(0, w - 1)).reshape(b, 1, n).expand(b, c, n)
        coef = (wgt * valid.to(wgt.dtype)).reshape(b, 1, n)
        term = torch.gather(flat, 2, index) * coef
        columns = term if columns is None else columns + term
    if mask is not None:
        columns = columns * mask.reshape(b, 1, n)
    # [B, C, K, Ho*Wo] -> [B, C*K, Ho*Wo]: the order of weight.reshape(O, C*kh*kw)
    columns = columns.reshape(b, c * k, h_out * w_out)
    out = torch.matmul(weight.reshape(o, c * k), columns)
    if bias is not None:
        out = out + bias.reshape(1, o, 1)
    return out.reshape(b, o, h_out, w_out)
