"""Mixing training sets at chosen shares (``DATASETS.TRAIN_SAMPLING_RATIOS``) with detectron2's own sampler.

Why: a student trained on gold data plus pseudo labels needs a say in how often each source is seen; by default
every record is equally likely, so a large pseudo-label set drowns a small gold one. Here the datasets are
concatenated and every record of dataset ``d`` gets the same repeat factor ``r_d``, proportional to
``ratio_d / size_d``; detectron2's ``RepeatFactorTrainingSampler`` then draws dataset ``d`` with the expected share
``size_d * r_d / sum_e(size_e * r_e) = ratio_d``.

The factors are scaled so that the smallest one is exactly 1. The sampler rounds fractional factors stochastically
(a record with factor 2.4 appears 2 or 3 times per pass, 2.4 on average), which keeps every share exact in
expectation; with the smallest factor at 1, no record is ever dropped from a pass, and each record of the least
weighted dataset appears exactly once per pass. A pass is therefore ``size_k / ratio_k`` samples, ``k`` the dataset
with the smallest ``ratio / size``: extreme ratios make it longer than the number of records (the log line gives
it). ``SOLVER.MAX_EPOCH`` still counts epochs in records (the concatenated lists), not in passes.
"""
import logging
import math
from collections.abc import Sequence

import torch
from detectron2.data.samplers import RepeatFactorTrainingSampler

__all__ = ["build_ratio_sampler", "mix_datasets", "repeat_factors_for_ratios", "sampling_ratios_from_cfg"]

logger = logging.getLogger(__name__)

_KEY = "DATASETS.TRAIN_SAMPLING_RATIOS"


def sampling_ratios_from_cfg(cfg) -> list[float]:
    """``DATASETS.TRAIN_SAMPLING_RATIOS`` normalised to sum 1, one per ``DATASETS.TRAIN`` name; ``[]`` when unset.

    Raises ``ValueError`` naming the key and the datasets for a wrong length or a value that is not a finite
    positive number (checked before any data is loaded).
    """
    ratios, names = list(cfg.DATASETS.TRAIN_SAMPLING_RATIOS), list(cfg.DATASETS.TRAIN)
    if not ratios:
        return []
    if len(ratios) != len(names):
        raise ValueError(f"{_KEY} has {len(ratios)} values {ratios} for {len(names)} DATASETS.TRAIN names {names}; "
                         "give one ratio per dataset, in the same order (or none)")
    for name, ratio in zip(names, ratios):
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not math.isfinite(ratio) or ratio <= 0:
            raise ValueError(f"{_KEY} must be positive numbers, one per DATASETS.TRAIN name {names}; got {ratio!r} "
                             f"for '{name}' in {ratios}")
    total = float(sum(ratios))
    return [float(r) / total for r in ratios]


def repeat_factors_for_ratios(sizes: Sequence[int], ratios: Sequence[float]) -> list[float]:
    """One repeat factor per dataset such that dataset ``d`` has the expected share ``ratios[d] / sum(ratios)`` of
    the samples; the smallest factor is 1. Raises ``ValueError`` for an empty dataset or a non-positive ratio."""
    if len(sizes) != len(ratios) or not sizes:
        raise ValueError(f"need one ratio per dataset, got sizes {list(sizes)} and ratios {list(ratios)}")
    if any(n <= 0 for n in sizes) or any(not r > 0 for r in ratios):
        raise ValueError(f"every dataset needs records and a positive ratio; got sizes {list(sizes)}, "
                         f"ratios {list(ratios)}")
    per_record = [r / n for n, r in zip(sizes, ratios)]  # share each record of the dataset must get
    smallest = min(per_record)
    return [p / smallest for p in per_record]


def mix_datasets(
    named_records: Sequence[tuple[str, Sequence[dict]]], ratios: Sequence[float]
) -> tuple[list[dict], torch.Tensor]:
    """The records of every dataset concatenated in order, and a float32 repeat factor per record for
    ``RepeatFactorTrainingSampler`` (see the module docstring). Raises ``ValueError`` naming an empty dataset."""
    names = [name for name, _ in named_records]
    if len(ratios) != len(names):
        raise ValueError(f"{_KEY}: {len(ratios)} ratios for datasets {names}")
    empty = [name for name, records in named_records if not records]
    if empty:
        raise ValueError(f"{_KEY}: dataset(s) {empty} have no training records left (after validation / few-shot), "
                         f"so they cannot be sampled at their ratio; datasets: {names}")
    sizes = [len(records) for _, records in named_records]
    factors = repeat_factors_for_ratios(sizes, ratios)
    dataset = [r for _, records in named_records for r in records]
    per_record = torch.cat([torch.full((n,), f, dtype=torch.float32) for n, f in zip(sizes, factors)])
    return dataset, per_record


def build_ratio_sampler(
    named_records: Sequence[tuple[str, Sequence[dict]]], ratios: Sequence[float], *, seed: int | None = None
) -> tuple[list[dict], RepeatFactorTrainingSampler]:
    """The concatenated records and the sampler that draws each dataset at its ratio; logs one line with every
    dataset's size, ratio and repeat factor. ``seed=None``: a seed shared by all processes, as detectron2."""
    dataset, factors = mix_datasets(named_records, ratios)
    sizes = [len(records) for _, records in named_records]
    firsts = [sum(sizes[:d]) for d in range(len(sizes))]
    per_dataset = [float(factors[i]) for i in firsts]  # every record of a dataset has its dataset's factor
    total = sum(ratios)
    logger.info(
        "Training datasets mixed by %s: %s; one sampler pass ~ %d samples from %d records",
        _KEY,
        ", ".join(f"{name} ({n} records, ratio {r / total:.3f}, repeat factor {f:.3f})"
                  for (name, _), n, r, f in zip(named_records, sizes, ratios, per_dataset)),
        round(float(factors.sum())),
        len(dataset),
    )
    return dataset, RepeatFactorTrainingSampler(factors, seed=seed)
