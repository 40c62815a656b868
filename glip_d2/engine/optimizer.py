"""GLIP's optimizer, parameter groups, LR schedule and gradient clipping.

The official recipe (``maskrcnn_benchmark/solver/build.py`` of microsoft/GLIP, official detail 24)
decides each parameter's learning rate and weight decay from its *name* alone:

* every parameter: ``BASE_LR`` and ``WEIGHT_DECAY``;
* name contains the language encoder's attribute name: ``LANG_LR`` instead of ``BASE_LR`` (the head's extra BERT
  layers live under ``vl_tower`` and keep ``BASE_LR``);
* name starts with the vision backbone's body (``backbone.bottom_up.``, official ``backbone.body.``):
  ``BASE_LR * BACKBONE_BODY_LR_FACTOR`` (the FPN keeps ``BASE_LR``);
* name contains ``"bias"`` (plain biases, ``bias_lang``, ``bias0``, Swin's ``relative_position_bias_table``):
  learning rate × ``BIAS_LR_FACTOR`` and weight decay ``WEIGHT_DECAY_BIAS``;
* frozen parameters (``requires_grad=False``) are left out.

Normalisation weights keep ``WEIGHT_DECAY`` (official ``WEIGHT_DECAY_NORM_FACTOR = 1``); detectron2's
``SOLVER.WEIGHT_DECAY_NORM`` is deliberately not applied, so a GLIP config trains like the official one.
Parameters with equal (lr, weight decay) share one group (the official code makes one group per parameter;
the update is the same).
"""
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable

import torch
from detectron2.solver import build_lr_scheduler as d2_build_lr_scheduler

__all__ = [
    "LANGUAGE_PARAM_KEY",
    "build_glip_lr_scheduler",
    "build_glip_optimizer",
    "build_gradient_clipper",
    "get_glip_param_groups",
    "resolve_solver_steps",
]

logger = logging.getLogger(__name__)

#: Substring that marks a parameter of the text encoder (attribute ``GLIP.language_encoder``; official
#: ``language_backbone``).
LANGUAGE_PARAM_KEY = "language_encoder"
#: Name prefix of the vision backbone's body (official ``backbone.body.``), scaled by BACKBONE_BODY_LR_FACTOR.
BACKBONE_BODY_PREFIX = "backbone.bottom_up."


def get_glip_param_groups(
    model: torch.nn.Module,
    *,
    base_lr: float,
    lang_lr: float,
    weight_decay: float,
    bias_lr_factor: float = 2.0,
    weight_decay_bias: float | None = 0.0,
    backbone_body_lr_factor: float = 1.0,
    language_key: str = LANGUAGE_PARAM_KEY,
) -> list[dict]:
    """Parameter groups following the official name rules (see module docstring).

    Each group carries ``param_names`` (the parameters' qualified names) so the grouping can be inspected.
    ``weight_decay_bias=None`` means "same as ``weight_decay``" (detectron2's convention for that key).
    """
    if weight_decay_bias is None:
        weight_decay_bias = weight_decay
    groups: dict[tuple, dict] = OrderedDict()
    seen = set()
    for name, param in model.named_parameters():
        if not param.requires_grad or id(param) in seen:
            continue
        seen.add(id(param))
        lr = lang_lr if language_key in name else base_lr
        if name.startswith(BACKBONE_BODY_PREFIX):
            lr = base_lr * backbone_body_lr_factor
        wd = weight_decay
        if "bias" in name:
            lr = lr * bias_lr_factor
            wd = weight_decay_bias
        group = groups.setdefault((lr, wd), {"params": [], "param_names": [], "lr": lr, "weight_decay": wd})
        group["params"].append(param)
        group["param_names"].append(name)
    if not groups:
        raise ValueError("The model has no trainable parameters (all have requires_grad=False).")
    return list(groups.values())


def build_glip_optimizer(cfg, model: torch.nn.Module) -> torch.optim.Optimizer:
    """AdamW (official; torch defaults betas=(0.9, 0.999), eps=1e-8; fused kernel when available) or SGD over
    :func:`get_glip_param_groups`.

    Gradient clipping is not folded into the optimizer: the trainer clips after AMP un-scaling and logs the
    norm (see :func:`build_gradient_clipper`).
    """
    s = cfg.SOLVER
    groups = get_glip_param_groups(
        model,
        base_lr=s.BASE_LR,
        lang_lr=s.LANG_LR,
        weight_decay=s.WEIGHT_DECAY,
        bias_lr_factor=s.BIAS_LR_FACTOR,
        weight_decay_bias=s.WEIGHT_DECAY_BIAS,
        backbone_body_lr_factor=s.BACKBONE_BODY_LR_FACTOR,
    )
    name = s.OPTIMIZER.upper()
    if name == "ADAMW":
        try:  # the fused kernel: same update, several times faster on CPU (one pass over all tensors)
            optimizer = torch.optim.AdamW(groups, lr=s.BASE_LR, fused=True)
        except (RuntimeError, TypeError, ValueError):  # older torch, or a device without the fused kernel
            optimizer = torch.optim.AdamW(groups, lr=s.BASE_LR)
    elif name == "SGD":
        optimizer = torch.optim.SGD(groups, lr=s.BASE_LR, momentum=s.MOMENTUM, nesterov=s.NESTEROV)
    else:
        raise ValueError(f"SOLVER.OPTIMIZER must be 'ADAMW' or 'SGD', got {s.OPTIMIZER!r}")
    for g in optimizer.param_groups:
        logger.debug("param group lr=%g wd=%g: %d params", g["lr"], g["weight_decay"], len(g["params"]))
    return optimizer


def resolve_solver_steps(steps: Iterable[float], max_iter: int) -> list[int]:
    """LR decay milestones in iterations.

    As in the official scheduler, a step below 1 is a fraction of ``max_iter`` (``round(step * max_iter)``, e.g.
    ``(0.67, 0.89)``), a step of 1 or more is an iteration number.
    """
    out = []
    for s in steps:
        if s < 0:
            raise ValueError(f"SOLVER.STEPS must be non-negative, got {tuple(steps)}")
        out.append(round(s * max_iter) if s < 1 else int(s))
    if out != sorted(out):
        raise ValueError(f"SOLVER.STEPS must be increasing, got {tuple(steps)} -> {out}")
    return out


def build_glip_lr_scheduler(cfg, optimizer: torch.optim.Optimizer):
    """detectron2's warmup + multi-step (or cosine) schedule, with fractional ``SOLVER.STEPS`` resolved first.

    detectron2's linear warmup ``factor·(1 − t/W) + t/W`` and step decay ``γ^#(steps ≤ t)`` equal the official
    ``WarmupMultiStepLR`` (tests/test_engine.py compares them iteration by iteration).
    """
    cfg = cfg.clone()
    cfg.defrost()
    cfg.SOLVER.STEPS = tuple(resolve_solver_steps(cfg.SOLVER.STEPS, cfg.SOLVER.MAX_ITER))
    return d2_build_lr_scheduler(cfg, optimizer)


def build_gradient_clipper(cfg) -> Callable[[list[torch.Tensor]], torch.Tensor | None] | None:
    """A function that clips the gradients of a list of parameters in place, or None when clipping is off.

    ``SOLVER.CLIP_GRADIENTS.CLIP_TYPE``: ``"full_model"`` (official GLIP: one L2 norm over all parameters,
    returns that norm before clipping), or detectron2's per-parameter ``"norm"`` / ``"value"``.
    """
    c = cfg.SOLVER.CLIP_GRADIENTS
    if not c.ENABLED or c.CLIP_VALUE <= 0:
        return None
    kind, value, norm_type = c.CLIP_TYPE, float(c.CLIP_VALUE), float(c.NORM_TYPE)

    if kind == "full_model":
        def clip(params):
            return torch.nn.utils.clip_grad_norm_(params, value, norm_type)
    elif kind == "norm":
        def clip(params):
            for p in params:
                torch.nn.utils.clip_grad_norm_([p], value, norm_type)
    elif kind == "value":
        def clip(params):
            torch.nn.utils.clip_grad_value_(params, value)
    else:
        raise ValueError(
            f"SOLVER.CLIP_GRADIENTS.CLIP_TYPE must be 'full_model', 'norm' or 'value', got {kind!r}"
        )
    return clip
