"""Official GLIP checkpoint -> glip_d2 state dict.

Every official key is mapped by structure: its prefix names the part (Swin, FPN, BERT, head), and inside the
VL-DyHead tower the index ``k`` of ``rpn.head.dyhead_tower.{k}`` names the block and the module's role
(fused models interleave fusion, BERT layer, DyConv: ``b = k // 3``, role ``k % 3``; GLIP-T(A) has one DyConv
per index). Keys that glip_d2 recomputes or does not use are dropped, each for a stated reason. A key that no
rule explains is never silently dropped: conversion fails and lists it. Tensors are not copied.
"""
import re
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

from .architecture import (
    GLIP_D2_NAMES,
    OFFICIAL_NAMES,
    Architecture,
    detect_architecture,
)
from .errors import CheckpointError, CheckpointMismatchError, WrongVariantError

__all__ = [
    "ConversionResult",
    "KeyComparison",
    "is_official_state_dict",
    "official_state_dict",
    "convert_official_state_dict",
    "convert_official_checkpoint",
    "map_official_key",
    "compare_with_model",
    "architecture_of_model_state",
    "RECOMPUTED_BUFFER_SUFFIXES",
]

_OFFICIAL_ROOTS = ("backbone.body.", "backbone.fpn.", "language_backbone.", "rpn.")

#: Official keys dropped on conversion, with the reason.
_DROPPED = [
    (re.compile(r"^rpn\.anchor_generator\."), "anchor buffers, recomputed from MODEL.ATSS"),
    (re.compile(r"\.relative_position_index$"), "Swin index buffer, recomputed from the window size"),
    (re.compile(r"^language_backbone\.body\.model\.embeddings\.position_ids$"), "HF position ids, recomputed"),
    (re.compile(r"^language_backbone\.body\.model\.pooler\."), "BERT pooler, unused by GLIP"),
    (re.compile(r"^rpn\.head\.cls_logits\."), "legacy 80-way classifier, dead weight in GLIP (official detail 12)"),
]

#: glip_d2 buffers that a converted checkpoint need not provide: the model rebuilds them from its config.
RECOMPUTED_BUFFER_SUFFIXES = (
    "relative_position_index",
    "position_ids",
    "token_type_ids",
    "pixel_mean",
    "pixel_std",
    "cell_anchors",
)

_FPN = {"fpn_inner2": "fpn_lateral3", "fpn_inner3": "fpn_lateral4", "fpn_inner4": "fpn_lateral5",
        "fpn_layer2": "fpn_output3", "fpn_layer3": "fpn_output4", "fpn_layer4": "fpn_output5"}
_HEAD_SAME = ("bbox_pred.", "centerness.", "scales.")
_HEAD_PARAMS = ("log_scale", "bias_lang", "bias0")
_DYCONV_BRANCH = {"0": "coarser_conv", "1": "same_conv", "2": "finer_conv"}
_DYCONV_PART = {"conv": "conv", "bn": "norm"}
_DYCONV_OTHER = {"offset.": "offset.", "AttnConv.1.": "scale_attn.", "relu.fc.0.": "dyrelu.fc1.",
                 "relu.fc.2.": "dyrelu.fc2."}
_TOWER_RE = re.compile(r"^rpn\.head\.dyhead_tower\.(\d+)\.(.+)$")
_DYCONV_RE = re.compile(r"^DyConv\.([012])\.(conv|bn)\.(.+)$")


@dataclass
class ConversionResult:
    """Output of a conversion: the new state dict plus a full account of every official key."""

    state_dict: "OrderedDict[str, torch.Tensor]"
    architecture: Architecture
    mapped: list[tuple[str, str]] = field(default_factory=list)  # (official, glip_d2)
    dropped: list[tuple[str, str]] = field(default_factory=list)  # (official, reason)
    unmatched: list[str] = field(default_factory=list)  # official keys no rule explains

    def report(self) -> str:
        """Human-readable listing of what maps where (the CLI's --check output)."""
        lines = [f"architecture: {self.architecture.describe()}"]
        lines += [f"  {src}  ->  {dst}" for src, dst in self.mapped]
        lines += [f"  {src}  dropped ({why})" for src, why in self.dropped]
        lines += [f"  {src}  UNMATCHED" for src in self.unmatched]
        lines.append(f"{len(self.mapped)} mapped, {len(self.dropped)} dropped, {len(self.unmatched)} unmatched")
        return "\n".join(lines)


def is_official_state_dict(state_dict: Mapping) -> bool:
    """True when keys use official GLIP names (``module.`` prefix optional)."""
    keys = [k.removeprefix("module.") for k in state_dict]
    return any(k.startswith(_OFFICIAL_ROOTS) for k in keys) and not any(
        k.startswith(("backbone.bottom_up.", "vl_tower.", "language_encoder.")) for k in keys
    )


def official_state_dict(checkpoint, use_ema: bool = False) -> "OrderedDict[str, torch.Tensor]":
    """The weights of an official file: its ``model`` (or ``model_ema``) entry, ``module.`` stripped.

    A bare state dict is accepted as well, as the official loader does.
    """
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(f"Expected a checkpoint dict, got {type(checkpoint).__name__}.")
    entry = "model_ema" if use_ema else "model"
    if entry in checkpoint:
        sd = checkpoint[entry]
    elif use_ema:
        raise CheckpointError(f"The checkpoint has no 'model_ema' entry (entries: {sorted(checkpoint)}).")
    elif all(torch.is_tensor(v) for v in checkpoint.values()):
        sd = checkpoint
    else:
        raise CheckpointError(
            f"The checkpoint has no 'model' entry and is not a bare state dict (entries: {sorted(checkpoint)})."
        )
    if not isinstance(sd, Mapping):
        raise CheckpointError(f"The checkpoint's '{entry}' entry is a {type(sd).__name__}, not a state dict.")
    sd = OrderedDict(sd)
    consume_prefix_in_state_dict_if_present(sd, "module.")
    return sd


def _map_tower_key(index: int, rest: str, arch: Architecture) -> str | None:
    block, role = (index // 3, index % 3) if arch.fused else (index, 2)
    prefix = f"vl_tower.blocks.{block}."
    if role == 0:
        return prefix + "fusion." + rest[len("b_attn."):] if rest.startswith("b_attn.") else None
    if role == 1:
        return prefix + "lang_layer." + rest if rest.startswith(("attention.", "intermediate.", "output.")) else None
    m = _DYCONV_RE.match(rest)
    if m:
        return f"{prefix}dyconv.{_DYCONV_BRANCH[m.group(1)]}.{_DYCONV_PART[m.group(2)]}.{m.group(3)}"
    for src, dst in _DYCONV_OTHER.items():
        if rest.startswith(src):
            return prefix + "dyconv." + dst + rest[len(src):]
    return None


def map_official_key(key: str, arch: Architecture) -> tuple[str | None, str | None]:
    """``(glip_d2_key, None)`` for a mapped key, ``(None, reason)`` for a dropped one, ``(None, None)`` if unknown."""
    for pattern, reason in _DROPPED:
        if pattern.search(key):
            return None, reason
    if key.startswith("backbone.body."):
        return "backbone.bottom_up." + key[len("backbone.body."):], None
    if key.startswith("backbone.fpn."):
        rest = key[len("backbone.fpn."):]
        module, _, param = rest.partition(".")
        if module in _FPN:
            return f"backbone.{_FPN[module]}.{param}", None
        if rest.startswith(("top_blocks.p6.", "top_blocks.p7.")):
            return "backbone.top_block." + rest[len("top_blocks."):], None
        return None, None
    if key.startswith("language_backbone.body.model."):
        return "language_encoder.model." + key[len("language_backbone.body.model."):], None
    m = _TOWER_RE.match(key)
    if m:
        return _map_tower_key(int(m.group(1)), m.group(2), arch), None
    if key.startswith("rpn.head."):
        rest = key[len("rpn.head."):]
        if rest.startswith(_HEAD_SAME) or rest in _HEAD_PARAMS:
            return "head." + rest, None
        if rest.startswith("dot_product_projection_text."):
            return "head.text_proj." + rest[len("dot_product_projection_text."):], None
    return None, None


def convert_official_state_dict(
    official: Mapping[str, torch.Tensor], *, ignore: Sequence[str] = (), strict: bool = True
) -> ConversionResult:
    """Map an official (``module.``-free) state dict to glip_d2 names.

    ``ignore``: regexes of official keys to drop on purpose (e.g. training-only ``mlm_head``). With ``strict``
    (default) any key that no rule maps raises ``CheckpointMismatchError`` listing all of them.
    """
    arch = detect_architecture(official, OFFICIAL_NAMES)
    ignore_res = [re.compile(p) for p in ignore]
    result = ConversionResult(OrderedDict(), arch)
    for key, tensor in official.items():
        if any(p.search(key) for p in ignore_res):
            result.dropped.append((key, "ignored on request"))
            continue
        new_key, reason = map_official_key(key, arch)
        if new_key is not None:
            result.state_dict[new_key] = tensor
            result.mapped.append((key, new_key))
        elif reason is not None:
            result.dropped.append((key, reason))
        else:
            result.unmatched.append(key)
    if strict and result.unmatched:
        raise CheckpointMismatchError(
            f"{len(result.unmatched)} official key(s) match no conversion rule (architecture "
            f"{arch.describe()}):\n  " + "\n  ".join(result.unmatched)
            + "\nPass ignore=[regex] (CLI: --ignore REGEX) to drop keys you know are unused."
        )
    return result


def convert_official_checkpoint(
    checkpoint, *, use_ema: bool = False, ignore: Sequence[str] = (), strict: bool = True
) -> ConversionResult:
    """``official_state_dict`` + ``convert_official_state_dict`` for a loaded official file."""
    return convert_official_state_dict(official_state_dict(checkpoint, use_ema), ignore=ignore, strict=strict)


@dataclass
class KeyComparison:
    """Differences between a state dict to load and a model's state dict, in both directions."""

    missing: list[str]  # model keys the checkpoint does not provide (recomputed buffers excluded)
    unexpected: list[str]  # checkpoint keys the model does not have
    shape_mismatch: list[tuple[str, tuple[int, ...], tuple[int, ...]]]  # (key, checkpoint, model)
    checkpoint_arch: Architecture
    model_arch: Architecture

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.shape_mismatch)

    def raise_if_any(self, source: str) -> None:
        if self.ok:
            return
        cls = WrongVariantError if self.checkpoint_arch != self.model_arch else CheckpointMismatchError
        parts = [f"{source} does not fit the model."]
        if self.checkpoint_arch != self.model_arch:
            parts.append(f"  checkpoint: {self.checkpoint_arch.describe()}")
            parts.append(f"  model:      {self.model_arch.describe()}")
            parts.append("  Build the model from the config of the checkpoint's variant (see glip_d2.model_zoo).")
        if self.missing:
            parts.append(f"{len(self.missing)} model key(s) missing from the checkpoint:")
            parts += [f"    {k}" for k in self.missing]
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} checkpoint key(s) not in the model:")
            parts += [f"    {k}" for k in self.unexpected]
        if self.shape_mismatch:
            parts.append(f"{len(self.shape_mismatch)} shape mismatch(es) (checkpoint vs model):")
            parts += [f"    {k}: {tuple(a)} vs {tuple(b)}" for k, a, b in self.shape_mismatch]
        raise cls("\n".join(parts))


def _is_recomputed(key: str) -> bool:
    return key.rsplit(".", 1)[-1] in RECOMPUTED_BUFFER_SUFFIXES or ".cell_anchors." in key


def compare_with_model(
    state_dict: Mapping[str, torch.Tensor], model_state: Mapping[str, torch.Tensor]
) -> KeyComparison:
    """Compare keys and shapes; model buffers the model recomputes may be absent from ``state_dict``."""
    missing = [k for k in model_state if k not in state_dict and not _is_recomputed(k)]
    unexpected = [k for k in state_dict if k not in model_state]
    shapes = [
        (k, tuple(state_dict[k].shape), tuple(model_state[k].shape))
        for k in state_dict
        if k in model_state and tuple(state_dict[k].shape) != tuple(model_state[k].shape)
    ]
    return KeyComparison(
        missing, unexpected, shapes,
        detect_architecture(state_dict, GLIP_D2_NAMES), detect_architecture(model_state, GLIP_D2_NAMES),
    )


def architecture_of_model_state(model_state: Mapping[str, torch.Tensor]) -> Architecture:
    """Architecture of a glip_d2 model (its ``state_dict()``)."""
    return detect_architecture(model_state, GLIP_D2_NAMES)
