"""Low-level ops GLIP needs beyond torchvision's: deformable convolution with the official kernel's semantics, fp16 clamps."""
from .deform_conv import (
    DEFORM_IMPLS,
    check_deform_impl,
    deform_conv2d_embedding_bag,
    deform_conv2d_gather,
    resolve_deform_impl,
)
from .fp16_clamp import FP16_SAFE_LIMIT, clamp_fp16_safe
from .modulated_deform_conv import ModulatedDeformConv2d, kernel_view, modulated_deform_conv

__all__ = [
    "DEFORM_IMPLS",
    "FP16_SAFE_LIMIT",
    "ModulatedDeformConv2d",
    "check_deform_impl",
    "clamp_fp16_safe",
    "deform_conv2d_embedding_bag",
    "deform_conv2d_gather",
    "kernel_view",
    "modulated_deform_conv",
    "resolve_deform_impl",
]
