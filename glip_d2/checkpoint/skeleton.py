"""A model's state-dict layout (names, shapes) without allocating or initialising its weights.

The converter CLI needs the exact key set a config builds to list unmatched keys in both directions; building a
real GLIP-L for that would take 1.7 GB and many seconds of random init. The model is built under
``torch.device("meta")``, so weights are never allocated and initialisers do nothing; small tensors are still
computed for real (see ``_SmallTensorsOnCPU``), which keeps buffers such as Swin's relative-position indices,
anchors and BERT's position ids correct. Nothing is patched: both are torch function modes, active only
inside the build.

``build_model_uninitialized`` turns such a skeleton into a usable model whose parameters are allocated but not
initialised: the fast way to build a model that a complete checkpoint is about to overwrite (the model zoo, the
reference test). Only use it when every parameter is then loaded (GLIPCheckpointer checks this for official and
converted checkpoints).
"""
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

try:
    from torch.utils._device import _device_constructors  # the constructors torch.device(...) redirects
except ImportError:  # private: fall back to the common ones

    def _device_constructors():
        return {torch.empty, torch.zeros, torch.ones, torch.full, torch.arange, torch.linspace, torch.logspace,
                torch.eye, torch.tensor, torch.as_tensor, torch.scalar_tensor, torch.rand, torch.randn,
                torch.randint, torch.randperm}

__all__ = ["build_skeleton", "state_dict_template", "materialize", "build_model_uninitialized"]

#: tensors up to this many elements are computed on the CPU during a skeleton build. The largest buffer in the zoo
#: (GLIP-L's 144x144 relative-position index) has 20736; together the parameters this small hold < 1% of GLIP-L.
SMALL_NUMEL = 1 << 16


class _SmallTensorsOnCPU(TorchFunctionMode):
    """Inside ``torch.device("meta")``: a tensor constructor whose result is small runs on the CPU instead.

    Buffers hold constants computed in ``__init__`` that no checkpoint restores (non-persistent), and some
    ``__init__`` code reads values back (``torch.linspace(...).tolist()``), which meta tensors cannot do. Both
    only involve small tensors; the weights, which hold the memory, stay on meta.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)  # a constructor lands on meta through the device context below this mode
        if (
            func in _device_constructors()
            and kwargs.get("device") is None
            and isinstance(out, torch.Tensor)
            and out.is_meta
            and out.numel() <= SMALL_NUMEL
        ):
            out = func(*args, **{**kwargs, "device": "cpu"})
        return out


def build_skeleton(cfg) -> nn.Module:
    """The meta-architecture of ``cfg`` with every parameter on meta and real buffers."""
    from detectron2.modeling import META_ARCH_REGISTRY

    if cfg.MODEL.get("LANGUAGE") is not None and cfg.MODEL.LANGUAGE.get("PRETRAINED", False):
        # same layout (the same config.json) without loading weights the skeleton drops anyway (onto meta,
        # which transformers refuses)
        cfg = cfg.clone()
        cfg.defrost()
        cfg.MODEL.LANGUAGE.PRETRAINED = False
    with torch.random.fork_rng(devices=[]):  # small parameters are initialised for real: leave the RNG as it was
        with torch.device("meta"), _SmallTensorsOnCPU():
            model = META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)(cfg)
    on_meta = {}
    for module in model.modules():
        for name, p in list(module.named_parameters(recurse=False, remove_duplicate=False)):
            if not p.is_meta:  # small ones were built on the CPU: drop their values too
                if id(p) not in on_meta:
                    on_meta[id(p)] = nn.Parameter(p.detach().to("meta"), requires_grad=p.requires_grad)
                setattr(module, name, on_meta[id(p)])
    return model


def state_dict_template(cfg) -> dict[str, torch.Tensor]:
    """``state_dict()`` of the model ``cfg`` builds, parameters as meta tensors (shape and dtype only)."""
    return build_skeleton(cfg).state_dict()


def materialize(model: nn.Module, device="cpu") -> nn.Module:
    """Allocate every meta tensor on ``device`` uninitialised (``requires_grad`` kept); other tensors move there
    with their values. Raises if a buffer that no checkpoint restores (non-persistent) has no value."""
    persistent = set(model.state_dict(keep_vars=True))
    lost = [n for n, b in model.named_buffers(remove_duplicate=False) if b.is_meta and n not in persistent]
    if lost:
        raise RuntimeError(f"buffers {lost} have no value (built on meta) and no checkpoint restores them; "
                           "build this model with detectron2's build_model instead")
    params = {n: p.detach() for n, p in model.named_parameters(remove_duplicate=False) if not p.is_meta}
    buffers = {n: b for n, b in model.named_buffers(remove_duplicate=False) if not b.is_meta}
    model.to_empty(device=device)
    with torch.no_grad():
        for name, value in params.items():
            model.get_parameter(name).copy_(value)
        for name, value in buffers.items():
            model.get_buffer(name).copy_(value)
    return model


def build_model_uninitialized(cfg) -> nn.Module:
    """``build_model(cfg)`` without random initialisation: parameters hold garbage until weights are loaded."""
    return materialize(build_skeleton(cfg), cfg.MODEL.DEVICE)
