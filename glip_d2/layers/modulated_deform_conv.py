"""The modulated deformable convolution DyHead uses, with the official CUDA op's semantics on any device.

The official DCN kernel indexes each image's offset/mask buffer as a contiguous [channels, H, W] array without
checking its size; DyHead relies on that when a coarser level's conv reads offsets computed at a finer level
(``kernel_view``). The arithmetic itself is ``torchvision.ops.deform_conv2d`` or one of the equivalent
implementations of ``deform_conv.py`` (``MODEL.DYHEAD.DEFORM_IMPL``).
"""
import torch
from torch import Tensor, nn
from torchvision.ops import deform_conv2d

from .deform_conv import deform_conv2d_embedding_bag, deform_conv2d_gather, resolve_deform_impl, tap_major
from .weights_snapshot import WeightsSnapshot

__all__ = ["ModulatedDeformConv2d", "kernel_view", "modulated_deform_conv"]


def kernel_view(t: Tensor, channels: int, height: int, width: int) -> Tensor:
    """What the official DCN kernel reads from a per-image offset/mask buffer for an H x W output (official detail 1).

    The CUDA op takes each image's buffer pointer and indexes it as a contiguous [channels, H, W] array without
    checking its real size, so a buffer computed at a finer level yields its first channels*H*W values.
    Identity when the shapes already match.
    """
    b = t.shape[0]
    if t.shape[1:] == (channels, height, width):
        return t
    n = channels * height * width
    flat = t.reshape(b, -1)
    if flat.shape[1] < n:
        raise ValueError(
            f"offset/mask buffer of shape {tuple(t.shape)} is smaller than the {channels}x{height}x{width} values "
            "the deformable conv reads per image; the official kernel would read past the image's buffer."
        )
    return flat[:, :n].reshape(b, channels, height, width)


def modulated_deform_conv(
    x: Tensor,
    offset: Tensor,
    mask: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    stride: int = 1,
    padding: int = 1,
    impl: str = "auto",
    tap_weight: Tensor | None = None,
) -> Tensor:
    """DCNv2 (one deformable group) with the official op's semantics: ``torchvision.ops.deform_conv2d`` or the
    equivalent implementations of ``deform_conv.py`` (``impl``, see ``MODEL.DYHEAD.DEFORM_IMPL``); ``tap_weight``:
    ``tap_major(weight)``, if the caller keeps it, for the embedding-bag implementation.

    ``offset`` holds (dy, dx) per kernel tap, tap-major; ``mask`` is already sigmoid-ed. Offsets/masks whose
    spatial size differs from the output are re-read as the official kernel does (``kernel_view``). Under
    autocast everything runs in fp32, as the official ``custom_fwd(cast_inputs=torch.float32)``.
    """
    kh, kw = weight.shape[-2:]
    h_out = (x.shape[2] + 2 * padding - kh) // stride + 1
    w_out = (x.shape[3] + 2 * padding - kw) // stride + 1
    offset = kernel_view(offset, 2 * kh * kw, h_out, w_out)
    mask = kernel_view(mask, kh * kw, h_out, w_out)
    resolved = resolve_deform_impl(impl, x.device)

    def run(x, offset, mask, weight, bias):
        if resolved == "embedding_bag":
            taps = tap_weight if tap_weight is not None and tap_weight.dtype == weight.dtype else None
            return deform_conv2d_embedding_bag(x, offset, weight, bias, mask, stride, padding, tap_weight=taps)
        if resolved == "gather":
            return deform_conv2d_gather(x, offset, weight, bias, mask, stride, padding)
        return deform_conv2d(x, offset, weight, bias, stride=(stride, stride), padding=(padding, padding), mask=mask)

    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        def fp32(t):
            return t.float() if t is not None and t.is_floating_point() else t

        with torch.autocast(device_type=device_type, enabled=False):
            return run(fp32(x), fp32(offset), fp32(mask), fp32(weight), fp32(bias))
    return run(x, offset, mask, weight, bias)


class ModulatedDeformConv2d(nn.Module):
    """A k x k modulated deformable conv with bias whose offsets and masks are given in ``forward``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int = 1,
        impl: str = "auto",
    ):
        super().__init__()
        self.stride = stride
        self.padding = padding
        self.impl = impl
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels))
        # Official ModulatedDeformConv init (DyConv's N(0, 0.01) init only touches nn.Conv2d, not this).
        bound = 1.0 / (in_channels * kernel_size * kernel_size) ** 0.5
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.zeros_(self.bias)
        self._tap_weight = None  # tap_major(weight) for inference, valid while ``_tap_source`` matches the weight
        self._tap_source = WeightsSnapshot()

    def reads_channels_last(self, device: torch.device) -> bool:
        """Whether this conv reads a channels-last input in place (the embedding bags), so that a caller feeding
        one map to several convs converts it once."""
        return resolve_deform_impl(self.impl, device) == "embedding_bag"

    def _inference_tap_weight(self, device: torch.device) -> Tensor | None:
        """``tap_major(weight)``, kept while the weight is the same tensor, storage and version (an in-place update,
        ``load_state_dict`` or a new Parameter all recompute it), when no gradient flows to the weight."""
        if not self.reads_channels_last(device) or (torch.is_grad_enabled() and self.weight.requires_grad):
            return None
        if self._tap_weight is None or not self._tap_source.matches([self.weight]):
            self._tap_source.take([self.weight])
            self._tap_weight = tap_major(self.weight.detach()).contiguous()
        return self._tap_weight

    def forward(self, x: Tensor, offset: Tensor, mask: Tensor) -> Tensor:
        return modulated_deform_conv(x, offset, mask, self.weight, self.bias, self.stride, self.padding, self.impl,
                                     tap_weight=self._inference_tap_weight(x.device))

    def extra_repr(self) -> str:
        o, i, k, _ = self.weight.shape
        return f"{i}, {o}, kernel_size={k}, stride={self.stride}, padding={self.padding}, impl={self.impl}"
