"""The official model's guard against fp16 overflow: attention scores and logits are clamped to +-50000."""
from torch import Tensor

__all__ = ["FP16_SAFE_LIMIT", "clamp_fp16_safe"]

#: Largest magnitude the official model lets attention scores and region-token logits reach (fp16 max is 65504).
FP16_SAFE_LIMIT = 50000.0


def clamp_fp16_safe(x: Tensor) -> Tensor:
    """``x`` clamped to [-FP16_SAFE_LIMIT, FP16_SAFE_LIMIT]."""
    return x.clamp(min=-FP16_SAFE_LIMIT, max=FP16_SAFE_LIMIT)
