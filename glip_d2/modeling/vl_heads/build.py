"""``VL_HEAD_REGISTRY``: task heads on GLIPv2's grounded, image-fused text features (VQA, ...)."""
from detectron2.utils.registry import Registry

__all__ = ["VL_HEAD_REGISTRY", "build_vl_head"]

VL_HEAD_REGISTRY = Registry("VL_HEAD")
VL_HEAD_REGISTRY.__doc__ = """
Heads that read the fused text of the last VL tower block (``lang_out["hidden"]`` [B, L, D] from ``GLIP.predict``)
and the text attention mask [B, L]. Registered classes are called as ``cls(cfg, **kwargs)`` (``@configurable``).
"""


def build_vl_head(cfg, name: str, **kwargs):
    """The head registered as ``name`` (e.g. cfg.MODEL.VQA.HEAD_NAME), built from ``cfg`` and ``kwargs``."""
    return VL_HEAD_REGISTRY.get(name)(cfg, **kwargs)
