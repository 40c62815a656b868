"""A model's state-dict layout (names, shapes) without allocating or initialising its weights.

The converter CLI needs the exact key set a config builds to list unmatched keys in both directions; building a
real GLIP-L for that would take 1.7 GB and many seconds of random init. Parameters are moved to the ``meta``
device as soon as they are registered, so initialisers become no-ops and nothing large stays allocated.

``build_model_uninitialized`` turns such a skeleton into a usable model whose parameters are allocated but not
initialised: the fast way to build a model that a complete checkpoint is about to overwrite (the model zoo, the
reference test). Only use it when every parameter is then loaded (GLIPCheckpointer checks this for official and
converted checkpoints).
"""
import contextlib
from typing import Dict

import torch
from torch import nn

__all__ = ["params_on_meta", "build_skeleton", "state_dict_template", "materialize", "build_model_uninitialized"]


@contextlib.contextmanager
def params_on_meta():
    """Inside the block every ``nn.Parameter`` registered by a module lives on the meta device."""
    original = nn.Module.register_parameter

    def register_parameter(self, name, param):
        original(self, name, param)
        if param is not None and param.device.type != "meta":
            self._parameters[name] = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)

    nn.Module.register_parameter = register_parameter
    try:
        yield
    finally:
        nn.Module.register_parameter = original


def build_skeleton(cfg) -> nn.Module:
    """The meta-architecture of ``cfg`` with meta parameters (buffers stay real; they are small)."""
    from detectron2.modeling import META_ARCH_REGISTRY

    with params_on_meta():
        return META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)(cfg)


def state_dict_template(cfg) -> Dict[str, torch.Tensor]:
    """``state_dict()`` of the model ``cfg`` builds, parameters as meta tensors (shape and dtype only)."""
    return build_skeleton(cfg).state_dict()


def materialize(model: nn.Module, device="cpu") -> nn.Module:
    """Replace every meta parameter by an uninitialised tensor on ``device`` (``requires_grad`` kept)."""
    for module in model.modules():
        for name, p in list(module._parameters.items()):
            if p is not None and p.device.type == "meta":
                module._parameters[name] = nn.Parameter(
                    torch.empty_like(p, device=device), requires_grad=p.requires_grad
                )
    return model.to(device)


def build_model_uninitialized(cfg) -> nn.Module:
    """``build_model(cfg)`` without random initialisation: parameters hold garbage until weights are loaded."""
    return materialize(build_skeleton(cfg), cfg.MODEL.DEVICE)
