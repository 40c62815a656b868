"""Registry of image<->text fusion modules, chosen by ``MODEL.FUSION.TYPE``.

Entries are registered under the official ``FUSE_CONFIG.TYPE`` names (e.g. ``"MHA-B"``) so that configs read
the same as GLIP's; a fusion class is built with ``cls(cfg)`` (``@configurable``) and implements
``forward(visual: List[Tensor[B,C,H,W]], lang: dict) -> (List[Tensor], dict)``.
"""
from collections.abc import Callable
from typing import TypeVar

from detectron2.utils.registry import Registry

__all__ = ["FUSION_REGISTRY", "build_fusion", "register_fusion"]

FUSION_REGISTRY = Registry("FUSION")
FUSION_REGISTRY.__doc__ = """
Image<->text fusion modules of the VL tower. Called with ``cfg``; see ``docs/architecture.md`` for the interface.
"""

_T = TypeVar("_T")


def register_fusion(name: str) -> Callable[[_T], _T]:
    """Class decorator registering a fusion under ``name`` (official names contain '-', so not the class name)."""

    def deco(obj: _T) -> _T:
        # fvcore's Registry keys by __name__ only; _do_register is its one entry point for an explicit name.
        FUSION_REGISTRY._do_register(name, obj)
        return obj

    return deco


def build_fusion(cfg):
    """Build the fusion named by ``cfg.MODEL.FUSION.TYPE``; an empty type means "no fusion" and is an error here."""
    name = cfg.MODEL.FUSION.TYPE
    if not name:
        raise ValueError("MODEL.FUSION.TYPE is empty (no deep fusion); the caller must not build a fusion module.")
    if name not in FUSION_REGISTRY:
        known = sorted(k for k, _ in FUSION_REGISTRY)
        raise KeyError(f"MODEL.FUSION.TYPE={name!r} is not registered in FUSION_REGISTRY (known: {known}).")
    return FUSION_REGISTRY.get(name)(cfg)
