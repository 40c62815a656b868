"""Transfer tuning modes (``SOLVER.TUNING_MODE``): which parts of a GLIP train when adapting it to a new task.

The modes and their semantics are the official ones (``tools/finetune.py::tuning_highlevel_override`` and
``GeneralizedVLRCNN.train`` of microsoft/GLIP). Each mode sets six switches; the model is split into

* ``body``: the vision trunk (``backbone.bottom_up``; official ``backbone.body``),
* ``fpn``: the rest of the vision backbone,
* ``language``: the text encoder (``language_encoder``),
* ``head``: everything else (VL tower, grounding head, GLIPv2 heads, proposal/ROI heads; official ``rpn``),
* ``prompt_offset``: prompt tuning's learned offset (:mod:`.prompt_offset`), present only in the modes using it.

and the switches are applied in the official order: freeze body, fpn and head; with ``linear_probe`` keep only the
head's last linear layers (:data:`LINEAR_PROBE_NAMES`) trainable; unfreeze the prompt offset; freeze the language
encoder. The order has a consequence the official code also has: ``language_prompt_v3`` (head frozen + linear probe +
language) trains the language encoder only, because the linear-probe filter never re-enables what the head freeze
disabled; likewise ``language_prompt_v4`` trains the prompt offset only. Frozen parts also stay in eval mode while
training (no dropout / drop-path), as official.

=====================  ====  ===  ====  ============  =============  ========  =======================================
mode                   body  fpn  head  linear probe  prompt offset  language  trains
=====================  ====  ===  ====  ============  =============  ========  =======================================
``full``               ✓     ✓    ✓                                  ✓         everything
``linear_probe``                  ✓     ✓                                      box/centerness convs, text projection,
                                                                               ``log_scale``, ``bias_lang``, ``bias0``
``language_prompt_v1``                                               ✓         the text encoder
``prompt``                                            ✓                        the prompt offset (official
                                                                               ``language_prompt_v2``)
``language_prompt_v3``                  (✓)                          ✓         the text encoder (see above)
``language_prompt_v4``                  (✓)           ✓                        the prompt offset (see above)
=====================  ====  ===  ====  ============  =============  ========  =======================================

Every mode sets the language encoder's freezing itself (official: ``LANGUAGE_BACKBONE.FREEZE`` in every branch),
so ``full`` trains a text encoder that ``MODEL.LANGUAGE.FREEZE`` froze; what the vision trunk freezes by its own
keys (``MODEL.SWIN.FREEZE_AT``, ``MODEL.BACKBONE.FREEZE_AT``) stays frozen in every mode, as official
(``FREEZE_CONV_BODY_AT`` is independent of the override). An empty mode (the default) changes nothing.
"""
import logging
from dataclasses import dataclass

from torch import nn

__all__ = [
    "LINEAR_PROBE_NAMES",
    "TUNING_MODES",
    "TuningMode",
    "apply_tuning_mode",
    "canonical_tuning_mode",
    "mode_uses_prompt_offset",
    "model_parts",
    "trainable_parameter_names",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TuningMode:
    """The official switches: True = that part is frozen (``freeze_*``) or the feature is on."""

    freeze_body: bool
    freeze_fpn: bool
    freeze_head: bool
    linear_probe: bool
    prompt_offset: bool
    freeze_language: bool


TUNING_MODES = {
    "full": TuningMode(False, False, False, False, False, False),
    "linear_probe": TuningMode(True, True, False, True, False, True),
    "language_prompt_v1": TuningMode(True, True, True, False, False, False),
    "prompt": TuningMode(True, True, True, False, True, True),
    "language_prompt_v3": TuningMode(True, True, True, True, False, False),
    "language_prompt_v4": TuningMode(True, True, True, True, True, True),
}
#: The official spellings, accepted as well.
_ALIASES = {"language_prompt_v2": "prompt", "linear_prob": "linear_probe"}

#: Fragments of the qualified parameter names the linear probe trains. Official: ``bbox_pred``, ``centerness``,
#: ``dot_product_projection_text`` (here ``text_proj``), ``head.log_scale``, ``head.bias_lang``, ``head.bias0``
#: (``cls_logits`` / ``cosine_scale`` do not exist here); the two-stage model's region-token classifier
#: (``box_predictor.cls_score``) has the same four pieces and gets the same treatment.
LINEAR_PROBE_NAMES = (
    "bbox_pred.", "centerness.", "head.text_proj.", "head.log_scale", "head.bias_lang", "head.bias0",
    "cls_score.text_proj.", "cls_score.log_scale", "cls_score.bias_lang", "cls_score.bias0",
)


def canonical_tuning_mode(mode: str) -> str:
    """The mode's glip_d2 name ("" for none); a clear error for an unknown one."""
    mode = (mode or "").strip()
    mode = _ALIASES.get(mode, mode)
    if mode and mode not in TUNING_MODES:
        known = sorted(TUNING_MODES) + sorted(_ALIASES)
        raise ValueError(f"SOLVER.TUNING_MODE must be empty or one of {known}, got {mode!r}")
    return mode


def mode_uses_prompt_offset(mode: str) -> bool:
    mode = canonical_tuning_mode(mode)
    return bool(mode) and TUNING_MODES[mode].prompt_offset


def model_parts(model: nn.Module) -> dict[str, list[tuple[str, nn.Module]]]:
    """The model's top-level children grouped as ``body``, ``fpn``, ``language``, ``head``, ``prompt_offset``
    (each a list of (qualified name, module))."""
    parts = {"body": [], "fpn": [], "language": [], "head": [], "prompt_offset": []}
    for name, child in model.named_children():
        if name == "backbone":
            for sub_name, sub in child.named_children():
                parts["body" if sub_name == "bottom_up" else "fpn"].append((f"backbone.{sub_name}", sub))
        elif name == "language_encoder":
            parts["language"].append((name, child))
        elif name == "prompt_offset":
            parts["prompt_offset"].append((name, child))
        else:
            parts["head"].append((name, child))
    return parts


def _set_trainable(modules, trainable: bool) -> None:
    for _, module in modules:
        for p in module.parameters():
            p.requires_grad = trainable


def apply_tuning_mode(model: nn.Module, mode: str) -> list[nn.Module]:
    """Set ``requires_grad`` of every parameter as ``mode`` says; return the modules that must stay in eval mode
    while training (the meta-architecture's ``train()`` keeps them there). An empty mode returns [] untouched."""
    mode = canonical_tuning_mode(mode)
    if not mode:
        return []
    spec = TUNING_MODES[mode]
    parts = model_parts(model)
    if spec.prompt_offset and not parts["prompt_offset"]:
        raise ValueError(f"tuning mode {mode!r} needs the model's prompt_offset (build it with that SOLVER.TUNING_MODE)")
    frozen = []  # parameters the model froze by its own keys (e.g. MODEL.SWIN.FREEZE_AT) stay frozen, as official
    for key, freeze in (("body", spec.freeze_body), ("fpn", spec.freeze_fpn), ("head", spec.freeze_head)):
        if freeze:
            _set_trainable(parts[key], False)
            frozen += [m for _, m in parts[key]]
    if spec.linear_probe:
        for prefix, module in parts["head"]:
            for name, p in module.named_parameters():
                if not any(fragment in f"{prefix}.{name}" for fragment in LINEAR_PROBE_NAMES):
                    p.requires_grad = False
    _set_trainable(parts["prompt_offset"], spec.prompt_offset)
    _set_trainable(parts["language"], not spec.freeze_language)
    for _, encoder in parts["language"]:
        if hasattr(encoder, "freeze"):  # the encoder skips autograd and dropout when frozen
            encoder.freeze = spec.freeze_language
        if spec.freeze_language:
            frozen.append(encoder)
    _log_trainable(model, mode)
    return frozen


def trainable_parameter_names(model: nn.Module) -> list[str]:
    return [n for n, p in model.named_parameters() if p.requires_grad]


def _log_trainable(model: nn.Module, mode: str) -> None:
    total = sum(p.numel() for p in model.parameters())
    names = trainable_parameter_names(model)
    params = dict(model.named_parameters())
    count = sum(params[n].numel() for n in names)
    shown = ", ".join(names) if len(names) <= 12 else ", ".join(names[:12]) + f", ... ({len(names) - 12} more)"
    logger.info(
        "Tuning mode %r: %d tensors, %s of %s parameters train (%.3f %%): %s",
        mode, len(names), f"{count:,}", f"{total:,}", 100.0 * count / max(total, 1), shown or "none",
    )
