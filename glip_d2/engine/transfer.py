"""Transfer runs in the trainer: the tuning-mode checks, the epoch schedule and the task-file record.

``SOLVER.TUNING_MODE`` itself is applied by the model (:mod:`glip_d2.modeling.tuning`); here is what the trainer
needs around it: keys checked before anything is built, ``SOLVER.MAX_EPOCH`` turned into iterations once the
training set's size is known, and the :class:`~glip_d2.checkpoint.task_file.TaskInfo` that makes the run's
checkpoints task files (every mode except ``full``).
"""
import logging

from detectron2.data import MetadataCatalog

from ..checkpoint.checkpointer import resolve_weights_path
from ..checkpoint.task_file import TaskInfo, base_sha256
from ..data.few_shot import epoch_iterations
from ..modeling.tuning import canonical_tuning_mode

__all__ = ["task_info_from_cfg", "transfer_problems", "with_epoch_schedule"]

logger = logging.getLogger(__name__)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def transfer_problems(cfg) -> list[str]:
    """Every problem of the transfer keys, one "KEY value: why" line each."""
    problems = []
    try:
        mode = canonical_tuning_mode(cfg.SOLVER.TUNING_MODE)
    except ValueError as e:
        problems.append(str(e))
        mode = ""
    if mode not in ("", "full") and cfg.SOLVER.EMA_DECAY > 0:
        problems.append(
            f"SOLVER.EMA_DECAY {cfg.SOLVER.EMA_DECAY} with SOLVER.TUNING_MODE {mode!r}: task checkpoints hold only the "
            "tuned tensors and the EMA would copy the whole model; set SOLVER.EMA_DECAY 0 (as the official recipe)"
        )
    for key, value, low in (("SOLVER.MAX_EPOCH", cfg.SOLVER.MAX_EPOCH, 0), ("DATASETS.FEW_SHOT", cfg.DATASETS.FEW_SHOT, 0),
                            ("DATASETS.GENERAL_COPY", cfg.DATASETS.GENERAL_COPY, 1)):
        if not _is_int(value) or value < low:
            problems.append(f"{key} {value!r}: must be an integer >= {low}")
    if not _is_int(cfg.DATASETS.SHUFFLE_SEED):
        problems.append(f"DATASETS.SHUFFLE_SEED {cfg.DATASETS.SHUFFLE_SEED!r}: must be an integer")
    return problems


def with_epoch_schedule(cfg, num_records: int):
    """A copy of ``cfg`` whose ``SOLVER.MAX_ITER`` covers ``SOLVER.MAX_EPOCH`` epochs of ``num_records`` images
    (official ``MAX_EPOCH * len(dataset) // IMS_PER_BATCH``; fractional STEPS then scale with it)."""
    iters = epoch_iterations(num_records, int(cfg.SOLVER.MAX_EPOCH), int(cfg.SOLVER.IMS_PER_BATCH))
    logger.info("SOLVER.MAX_EPOCH %d over %d training images, batch %d: SOLVER.MAX_ITER = %d",
                cfg.SOLVER.MAX_EPOCH, num_records, cfg.SOLVER.IMS_PER_BATCH, iters)
    frozen, cfg = cfg.is_frozen(), cfg.clone()
    cfg.defrost()
    cfg.SOLVER.MAX_ITER = iters
    if frozen:
        cfg.freeze()
    return cfg


def task_info_from_cfg(cfg) -> TaskInfo | None:
    """What a task file of this run records (None for ``full`` fine-tuning and for no tuning mode: whole models)."""
    mode = canonical_tuning_mode(cfg.SOLVER.TUNING_MODE)
    if mode in ("", "full"):
        return None
    base = cfg.MODEL.TASK_BASE_WEIGHTS or cfg.MODEL.WEIGHTS
    path = resolve_weights_path(base) if base else ""
    names = list(cfg.DATASETS.TRAIN)
    classes = MetadataCatalog.get(names[0]).get("thing_classes", None) if len(names) == 1 else None
    if len(names) > 1:
        logger.warning("Tuning mode %r over %d training sets: the task file records no single vocabulary.",
                       mode, len(names))
    # When MODEL.WEIGHTS is itself a task file, the checkpointer replaces the base with that file's base on load.
    return TaskInfo(
        tuning_mode=mode,
        base_weights=base,
        base_sha256=base_sha256(path),
        thing_classes=None if classes is None else [str(c) for c in classes],
        separator=str(cfg.INPUT.PROMPT.SEPARATOR),
        name=names[0] if len(names) == 1 else "",
    )
