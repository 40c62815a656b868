"""Training settings checked before anything is built, so a bad schedule or output folder fails in a second with the
keys and values named, not minutes later inside fvcore's scheduler or at the first checkpoint.

Fractional ``SOLVER.STEPS`` are resolved as the scheduler resolves them (:func:`~.optimizer.resolve_solver_steps`),
so "(0.95,) with MAX_ITER 5" is seen as the step 5 it becomes.
"""
import logging
import os
import uuid

from detectron2.utils import comm
from detectron2.utils.file_io import PathManager

from .transfer import transfer_problems

__all__ = ["check_output_dir", "solver_problems", "validate_training_config"]

logger = logging.getLogger(__name__)


def _resolve(steps, max_iter: int) -> list[int]:
    # resolve_solver_steps without its own checks: every problem is reported here, with the keys
    return [round(s * max_iter) if s < 1 else int(s) for s in steps]


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def solver_problems(cfg) -> list[str]:
    """Every problem of the SOLVER/TEST schedule keys, one "KEY value: why" line each (empty when fine)."""
    s, problems = cfg.SOLVER, []
    max_iter = s.MAX_ITER
    if not _is_int(max_iter) or max_iter < 1:
        problems.append(f"SOLVER.MAX_ITER {max_iter!r}: must be an integer >= 1")
        max_iter = None
    steps = tuple(s.STEPS)
    if s.LR_SCHEDULER_NAME == "WarmupMultiStepLR" and steps:
        if any(not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0 for v in steps):
            problems.append(f"SOLVER.STEPS {steps}: must be non-negative numbers (< 1: fractions of MAX_ITER)")
        elif max_iter is not None:
            resolved = _resolve(steps, max_iter)
            shown = f"SOLVER.STEPS {steps}" + (f" (resolved: {resolved})" if resolved != list(steps) else "")
            if any(not 1 <= v < max_iter for v in resolved):
                problems.append(
                    f"{shown} with SOLVER.MAX_ITER {max_iter}: every step must be in 1..{max_iter - 1} (fractions "
                    f"resolve to round(fraction * MAX_ITER)); for a short run set SOLVER.STEPS to () or smaller values"
                )
            if any(b <= a for a, b in zip(resolved, resolved[1:])):
                problems.append(f"{shown}: steps must be strictly increasing")
    warmup = s.WARMUP_ITERS
    if not _is_int(warmup) or warmup < 0:
        problems.append(f"SOLVER.WARMUP_ITERS {warmup!r}: must be an integer >= 0")
    elif max_iter is not None and warmup > max_iter:
        logger.warning(f"SOLVER.WARMUP_ITERS {warmup} > SOLVER.MAX_ITER {max_iter}: the LR never reaches BASE_LR")
    if not isinstance(s.WARMUP_FACTOR, (int, float)) or not 0 <= s.WARMUP_FACTOR <= 1:
        problems.append(f"SOLVER.WARMUP_FACTOR {s.WARMUP_FACTOR!r}: must be in [0, 1]")
    if not _is_int(s.CHECKPOINT_PERIOD) or s.CHECKPOINT_PERIOD < 1:
        problems.append(f"SOLVER.CHECKPOINT_PERIOD {s.CHECKPOINT_PERIOD!r}: must be an integer >= 1")
    if not _is_int(cfg.TEST.EVAL_PERIOD) or cfg.TEST.EVAL_PERIOD < 0:
        problems.append(f"TEST.EVAL_PERIOD {cfg.TEST.EVAL_PERIOD!r}: must be an integer >= 0 (0: evaluate at the end)")
    return problems + transfer_problems(cfg)


def check_output_dir(output_dir: str) -> None:
    """Create ``output_dir`` and write/remove a probe file in it; raise a clear error naming OUTPUT_DIR if that fails.

    Only the main process writes (it alone writes checkpoints and logs there).
    """
    if not output_dir:
        raise ValueError("OUTPUT_DIR is empty: checkpoints, logs and metrics need a folder")
    if not comm.is_main_process():
        return
    probe = os.path.join(output_dir, f".write_probe_{uuid.uuid4().hex}")
    try:
        PathManager.mkdirs(output_dir)
        with PathManager.open(probe, "w") as f:
            f.write("probe")
        PathManager.rm(probe)
    except OSError as e:
        raise OSError(
            f"OUTPUT_DIR {output_dir!r} is not writable ({type(e).__name__}: {e}); checkpoints, logs and "
            "metrics go there: choose a folder you can write (OUTPUT_DIR /path/to/run)"
        ) from e


def validate_training_config(cfg) -> None:
    """Raise one ``ValueError`` listing every bad schedule key, then check OUTPUT_DIR (called before building)."""
    problems = solver_problems(cfg)
    if problems:
        raise ValueError("Invalid training config:\n  " + "\n  ".join(problems))
    check_output_dir(cfg.OUTPUT_DIR)
