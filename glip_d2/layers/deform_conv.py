"""Modulated deformable convolution (DCNv2) written with whole-tensor bilinear sampling and one matrix product.

Two CPU implementations of torchvision's op (``MODEL.DYHEAD.DEFORM_IMPL``), both differentiable by autograd:

``deform_conv2d_embedding_bag`` (CPU default, training and inference): each output pixel's tap is a weighted sum
of four input pixels (its bilinear corners, the weights multiplied by the tap's mask), which is exactly what
``F.embedding_bag(mode="sum", per_sample_weights=...)`` computes over the channels-last image rows, in one
optimised kernel that never materialises the four corner tensors; one matmul with the weight then finishes the
conv. torchvision's CPU kernels sample one point at a time: this is about 2.5x faster forward on a 256-channel
DyHead level and 5x faster forward + backward (``tools/benchmark.py --baseline torchvision-dcn``).

``deform_conv2d_gather``: the same bags summed from one row gather per corner, operators ONNX has, so the exporter
uses it (``export.graph.gather_deform_conv``). Both share every other step.

Semantics are torchvision's (and the official DCN's): output pixel (i, j), tap (a, b) samples the input at
``(i*stride - pad + a*dilation + dy, j*stride - pad + b*dilation + dx)`` bilinearly, a corner outside the image
counting as zero, multiplies by the tap's mask and sums with the conv weight. Offsets are (dy, dx) per tap,
tap-major; one offset group, one weight group.
"""
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "DEFORM_IMPLS", "check_deform_impl", "deform_conv2d_embedding_bag", "deform_conv2d_gather",
    "resolve_deform_impl", "tap_major",
]

#: ``MODEL.DYHEAD.DEFORM_IMPL`` values.
DEFORM_IMPLS = ("auto", "torchvision", "embedding_bag", "gather")


def check_deform_impl(impl: str) -> str:
    """``impl`` if it is a ``MODEL.DYHEAD.DEFORM_IMPL`` value, else a ValueError naming the choices."""
    if impl not in DEFORM_IMPLS:
        raise ValueError(f"MODEL.DYHEAD.DEFORM_IMPL must be one of {DEFORM_IMPLS}, got {impl!r}.")
    return impl


def resolve_deform_impl(impl: str, device: torch.device) -> str:
    """"auto" -> torchvision's kernels on CUDA, the embedding-bag sampling anywhere else."""
    if check_deform_impl(impl) == "auto":
        return "torchvision" if device.type == "cuda" else "embedding_bag"
    return impl


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


def _sampling_points(offset: Tensor, kernel: tuple[int, int], stride: int, padding: int, dilation: int):
    """Rows and cols (in pixels) each tap samples, [B, Ho, Wo, K] each (K = kh*kw, tap-major as the weight), from
    ``offset`` [B, 2K, Ho, Wo] ((dy, dx) per tap)."""
    kh, kw = kernel
    b, _, h_out, w_out = offset.shape
    pixel_major = offset.reshape(b, kh * kw, 2, h_out, w_out).permute(0, 3, 4, 1, 2).contiguous()
    kwargs = dict(dtype=offset.dtype, device=offset.device)
    tap_y = (torch.arange(kh, **kwargs) * dilation).repeat_interleave(kw)
    tap_x = (torch.arange(kw, **kwargs) * dilation).repeat(kh)
    out_y = torch.arange(h_out, **kwargs) * stride - padding
    out_x = torch.arange(w_out, **kwargs) * stride - padding
    rows = out_y[:, None, None] + tap_y[None, None, :]
    cols = out_x[None, :, None] + tap_x[None, None, :]
    return rows + pixel_major[..., 0], cols + pixel_major[..., 1]


def _axis_corners(p: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """Along one axis of length ``size``: the two neighbours of each coordinate ``p`` (index clamped into the image,
    [..., 2]) and their linear weights, exactly 0 for a neighbour outside the image or a point outside the band
    (-1, size) (official kernel)."""
    p0 = torch.floor(p)
    frac = p - p0
    neighbours = p0.long().unsqueeze(-1) + torch.arange(2, device=p.device)  # [..., 2]
    valid = (neighbours >= 0) & (neighbours < size) & ((p > -1) & (p < size)).unsqueeze(-1)
    weight = torch.stack((1 - frac, frac), dim=-1) * valid.to(p.dtype)
    return neighbours.clamp_(0, size - 1), weight


def _bilinear_corners(y: Tensor, xs: Tensor, h: int, w: int) -> tuple[Tensor, Tensor]:
    """The four corners of each sample point of an h x w image, in the order (0, 0), (0, 1), (1, 0), (1, 1):
    flat pixel indices and weights, [*y.shape, 4]. A corner outside the image, or any corner of a point outside
    the band (-1, size), weighs exactly 0 (official kernel)."""
    rows, row_weight = _axis_corners(y, h)
    cols, col_weight = _axis_corners(xs, w)
    index = (rows * w).unsqueeze(-1) + cols.unsqueeze(-2)  # [..., 2, 2]
    weight = row_weight.unsqueeze(-1) * col_weight.unsqueeze(-2)
    return index.flatten(-2), weight.flatten(-2)


def tap_major(weight: Tensor) -> Tensor:
    """A conv weight [O, C, kh, kw] as [O, kh*kw*C], (tap, channel) order: the matrix the embedding-bag conv
    multiplies (a caller that applies one weight many times may keep it and pass it as ``tap_weight``)."""
    return weight.permute(0, 2, 3, 1).reshape(weight.shape[0], -1)


def _sample_embedding_bag(table: Tensor, index: Tensor, coef: Tensor) -> Tensor:
    """Row i of the result: sum over j of ``coef[i, j] * table[index[i, j]]``, in one kernel."""
    return F.embedding_bag(index, table, per_sample_weights=coef, mode="sum")


def _sample_gather(table: Tensor, index: Tensor, coef: Tensor) -> Tensor:
    """``_sample_embedding_bag``'s values with one row gather per corner (ONNX Gather)."""
    columns = table.index_select(0, index[:, 0]) * coef[:, :1]
    for corner in range(1, index.shape[1]):
        columns = columns + table.index_select(0, index[:, corner]) * coef[:, corner:corner + 1]
    return columns


def _deform_conv2d(x, offset, weight, bias, mask, stride, padding, dilation, tap_weight, sample) -> Tensor:
    """Both implementations: bags of bilinear corners (weights x mask) over the channels-last image rows, ordered
    (image, output pixel, tap) so each output pixel's K*C samples are one row, then one matmul."""
    b, c, h, w = x.shape
    o, k, h_out, w_out = _checked_output_shape(x, offset, weight, mask, stride, padding, dilation)
    y, xs = _sampling_points(offset, weight.shape[-2:], stride, padding, dilation)
    index, coef = _bilinear_corners(y, xs, h, w)  # [B, Ho, Wo, K, 4]
    if b > 1:  # rows of ``table``, which stacks the images
        index = index + (torch.arange(b, device=x.device) * (h * w)).view(b, 1, 1, 1, 1)
    if mask is not None:
        coef = coef * mask.permute(0, 2, 3, 1).unsqueeze(-1)
    table = x.permute(0, 2, 3, 1).reshape(b * h * w, c).contiguous()  # channels-last image rows (a strided table
    # would take the embedding bag's slow path)
    columns = sample(table, index.reshape(-1, 4), coef.reshape(-1, 4))  # [B*Ho*Wo*K, C]
    w_taps = tap_major(weight) if tap_weight is None else tap_weight  # (tap, channel) order, as the columns
    out = torch.matmul(w_taps, columns.view(b, h_out * w_out, k * c).transpose(1, 2))  # [B, O, Ho*Wo]
    if bias is not None:
        out = out + bias.view(1, o, 1)
    return out.view(b, o, h_out, w_out)


def deform_conv2d_embedding_bag(
    x: Tensor, offset: Tensor, weight: Tensor, bias: Tensor | None = None, mask: Tensor | None = None,
    stride: int = 1, padding: int = 1, dilation: int = 1, tap_weight: Tensor | None = None,
) -> Tensor:
    """``torchvision.ops.deform_conv2d(x, offset, weight, bias, stride, padding, dilation, mask)`` for one offset
    group and one weight group; ``offset`` [B, 2K, Ho, Wo], ``mask`` [B, K, Ho, Wo] or None (all ones);
    ``tap_weight`` ``tap_major(weight)`` if the caller has it. ``x`` in channels-last memory is read in place."""
    return _deform_conv2d(x, offset, weight, bias, mask, stride, padding, dilation, tap_weight, _sample_embedding_bag)


def deform_conv2d_gather(
    x: Tensor, offset: Tensor, weight: Tensor, bias: Tensor | None = None, mask: Tensor | None = None,
    stride: int = 1, padding: int = 1, dilation: int = 1,
) -> Tensor:
    """``deform_conv2d_embedding_bag`` with row gathers and ``matmul`` only (ONNX operators)."""
    return _deform_conv2d(x, offset, weight, bias, mask, stride, padding, dilation, None, _sample_gather)
