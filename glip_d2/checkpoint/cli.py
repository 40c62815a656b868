"""Implementation of ``tools/convert_glip_checkpoint.py``: official ``.pth`` -> glip_d2 checkpoint file.

The output is a detectron2-style checkpoint ``{"model": state_dict, "glip_d2_conversion": provenance}`` with
provenance = source file name, its sha256, the detected variant and the entry used. Before writing, the converted
keys are compared with the model the variant's config builds (a weight-free skeleton): any official key that no
rule maps and any model key the file does not provide is listed, and nothing is written.
"""
import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from .checkpointer import CONVERSION_INFO_KEY, atomic_torch_save
from .convert import (
    ConversionResult,
    KeyComparison,
    compare_with_model,
    convert_official_checkpoint,
    is_official_state_dict,
)
from .errors import CheckpointError, CheckpointMismatchError
from .safe_load import load_checkpoint_file, sha256_of_file
from .skeleton import state_dict_template

__all__ = ["ConversionOutcome", "convert_file", "config_for_architecture", "main"]


@dataclass
class ConversionOutcome:
    result: ConversionResult
    comparison: KeyComparison | None
    provenance: dict
    written: str | None


def config_for_architecture(arch_name: str, config_file: str | None = None, opts: Sequence[str] = ()):
    """Config that builds ``arch_name`` (first model-zoo entry with it) or ``config_file``; no downloads."""
    from detectron2.config import get_cfg

    from .. import model_zoo
    from ..config import add_glip_config

    if config_file is None:
        names = [e.name for e in model_zoo.MODEL_ZOO.values() if e.architecture == arch_name]
        if not names:
            raise CheckpointError(
                f"No model-zoo config builds architecture {arch_name!r}; pass --config-file for this checkpoint."
            )
        config_file = model_zoo.get_config_file(names[0])
    cfg = get_cfg()
    add_glip_config(cfg)
    cfg.merge_from_file(config_file)
    cfg.MODEL.LANGUAGE.PRETRAINED = False  # only the layout is needed
    cfg.MODEL.LANGUAGE.TOKENIZER = "embedded-minilm"  # same vocabulary as bert-base-uncased, always offline
    cfg.merge_from_list(list(opts))
    return cfg


def convert_file(
    src: str,
    dst: str | None = None,
    *,
    use_ema: bool = False,
    ignore: Sequence[str] = (),
    config_file: str | None = None,
    opts: Sequence[str] = (),
    check_model: bool = True,
    force: bool = False,
) -> ConversionOutcome:
    """Convert ``src`` (official file) and write ``dst`` unless it is None; raises when keys do not match.

    Never writes over ``src``, and over another existing file only with ``force``: an official download is not
    something to lose to a swapped argument.
    """
    if dst is not None:
        _check_destination(src, dst, force)
    checkpoint = load_checkpoint_file(src)
    _check_is_official(src, checkpoint)
    result = convert_official_checkpoint(checkpoint, use_ema=use_ema, ignore=ignore, strict=False)
    comparison = None
    if check_model:
        cfg = config_for_architecture(result.architecture.name, config_file, opts)
        comparison = compare_with_model(result.state_dict, state_dict_template(cfg))
    provenance = {
        "source_file": os.path.basename(src),
        "source_sha256": sha256_of_file(src),
        "variant": result.architecture.name,
        "architecture": result.architecture.describe(),
        "entry": "model_ema" if use_ema else "model",
        "dropped": [k for k, _ in result.dropped],
    }
    outcome = ConversionOutcome(result, comparison, provenance, None)
    if dst is None:
        return outcome
    if result.unmatched or (comparison is not None and not comparison.ok):
        raise CheckpointMismatchError(_mismatch_text(src, result, comparison))
    atomic_torch_save({"model": result.state_dict, CONVERSION_INFO_KEY: provenance}, dst)
    outcome.written = dst
    return outcome


def _check_destination(src: str, dst: str, force: bool) -> None:
    if os.path.exists(dst) and os.path.exists(src) and os.path.samefile(src, dst):
        raise CheckpointError(f"Refusing to write the converted file over its source {src}: give another output path.")
    if os.path.isdir(dst):
        raise CheckpointError(f"The output path {dst} is a folder: give a file name.")
    if os.path.exists(dst) and not force:
        raise CheckpointError(f"{dst} already exists: give another output path, or --force to replace it.")


def _check_is_official(src: str, checkpoint) -> None:
    """An already-converted file says so instead of failing key by key."""
    if not isinstance(checkpoint, dict):
        return  # the converter's own error names what is wrong
    weights = checkpoint.get("model", checkpoint)
    converted = isinstance(weights, dict) and weights and not is_official_state_dict(weights)
    if CONVERSION_INFO_KEY in checkpoint or converted:
        raise CheckpointError(
            f"{src} is already in glip_d2 format (not an official GLIP checkpoint): use it directly as MODEL.WEIGHTS."
        )


def _mismatch_text(src: str, result: ConversionResult, comparison: KeyComparison | None) -> str:
    lines = [f"Refusing to convert {src}: its keys do not correspond to glip_d2's {result.architecture.describe()}."]
    if result.unmatched:
        lines.append(f"{len(result.unmatched)} official key(s) match no conversion rule:")
        lines += [f"    {k}" for k in result.unmatched]
    if comparison is not None:
        if comparison.missing:
            lines.append(f"{len(comparison.missing)} glip_d2 key(s) not provided by the file:")
            lines += [f"    {k}" for k in comparison.missing]
        if comparison.unexpected:
            lines.append(f"{len(comparison.unexpected)} converted key(s) the model does not have:")
            lines += [f"    {k}" for k in comparison.unexpected]
        if comparison.shape_mismatch:
            lines.append(f"{len(comparison.shape_mismatch)} shape mismatch(es) (file vs model):")
            lines += [f"    {k}: {a} vs {b}" for k, a, b in comparison.shape_mismatch]
    lines.append("Use --check to see what maps where; --ignore REGEX drops official keys you know are unused.")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Convert an official GLIP checkpoint (.pth) into a glip_d2 checkpoint.",
        epilog="Example: convert_glip_checkpoint.py glip_tiny_model_o365_goldg.pth glip_t_c_d2.pth",
    )
    p.add_argument("src", help="official GLIP .pth (entries model / model_ema / optimizer ..., keys 'module.*')")
    p.add_argument("dst", nargs="?", help="output .pth (detectron2 format); not needed with --check")
    p.add_argument("--check", action="store_true", help="print what maps where and the key comparison; write nothing")
    p.add_argument("--force", action="store_true", help="replace an existing output file (never the source)")
    p.add_argument("--ema", action="store_true", help="convert the 'model_ema' entry instead of 'model'")
    p.add_argument("--ignore", action="append", default=[], metavar="REGEX", help="drop official keys matching REGEX")
    p.add_argument("--config-file", default=None, help="config that builds the model (default: the zoo config)")
    p.add_argument("--opts", nargs="+", default=[], metavar="KEY VALUE", help="config overrides (give last)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not args.check and not args.dst:
        _parser().error("give an output path, or --check")
    try:
        outcome = convert_file(
            args.src, None if args.check else args.dst, use_ema=args.ema, ignore=args.ignore,
            config_file=args.config_file, opts=args.opts, force=args.force,
        )
    except (CheckpointError, FileNotFoundError, IsADirectoryError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.check:
        print(outcome.result.report())
        c = outcome.comparison
        if outcome.result.unmatched or (c is not None and not c.ok):
            print(_mismatch_text(args.src, outcome.result, c))
            return 1
        print("all keys match the model: conversion would succeed")
        return 0
    print(
        f"wrote {outcome.written}: {outcome.provenance['variant']} from {outcome.provenance['source_file']} "
        f"(sha256 {outcome.provenance['source_sha256'][:12]}...), {len(outcome.result.mapped)} tensors, "
        f"{len(outcome.result.dropped)} official keys dropped"
    )
    return 0
