"""One process's share of a pseudo-labelling run: read the pairs, ground the pending shards, write them.

Every process (``tools/pseudo_label.py`` starts them through detectron2's ``launch``) reads the same pair list,
keeps the shards it owns (shard ``k`` -> rank ``k % world_size``) that are not written yet and grounds them with its
own copy of the teacher; processes share nothing but the output folder. A killed run restarted with the same
command redoes only the missing shards, and ends with the same files as a run that was never interrupted.
"""
import logging
import time
from dataclasses import dataclass

from detectron2.utils import comm

from .grounding_teacher import GroundingTeacher
from .image_text_pairs import iter_image_text_pairs
from .shards import ShardWriter

__all__ = ["PseudoLabelSettings", "count_pairs", "pseudo_label"]

logger = logging.getLogger(__name__)


@dataclass
class PseudoLabelSettings:
    """What decides the written boxes (stored in every shard's ``info``, so one folder never mixes two teachers)."""

    score_threshold: float = 0.5
    topk_per_phrase: int = 3
    shard_size: int = 1000
    batch_size: int = 4
    on_bad_row: str = "error"


def count_pairs(input_path: str, image_root: str | None = None, on_bad_row: str = "error") -> int:
    """How many pairs the input holds (a text-only pass, for the ETA)."""
    return sum(1 for _ in iter_image_text_pairs(input_path, image_root, on_bad_row=on_bad_row))


def _info(cfg, settings: PseudoLabelSettings) -> dict:
    return {
        "teacher_config": cfg.dump(),
        "teacher_weights": str(cfg.MODEL.WEIGHTS),
        "score_threshold": settings.score_threshold,
        "topk_per_phrase": settings.topk_per_phrase,
        "batch_size": settings.batch_size,  # images padded together: scores move slightly with the batch
        "phrases": "glip_d2 offline noun phrases",
    }


def pseudo_label(cfg, predictor, input_path: str, output_dir: str, settings: PseudoLabelSettings,
                 image_root: str | None = None, total_pairs: int | None = None) -> dict:
    """Write this process's pending shards; returns its counts (pairs, boxes, shards, skipped, ...)."""
    rank, world = comm.get_rank(), comm.get_world_size()
    writer = ShardWriter(output_dir, settings.shard_size, rank=rank, world_size=world, info=_info(cfg, settings))
    teacher = GroundingTeacher(
        predictor, score_threshold=settings.score_threshold, topk_per_phrase=settings.topk_per_phrase,
        batch_size=settings.batch_size, on_bad_row=settings.on_bad_row,
    )
    read_counts: dict = {}
    pairs = iter_image_text_pairs(input_path, image_root, on_bad_row=settings.on_bad_row, counts=read_counts)
    my_total = None
    if total_pairs is not None:  # the pairs of this rank's shards, done or not
        shards = -(-total_pairs // settings.shard_size)
        my_total = sum(min(settings.shard_size, total_pairs - k * settings.shard_size)
                       for k in range(shards) if writer.owns(k))
    start, done, written = time.perf_counter(), 0, 0
    for shard_id, shard_pairs in writer.pending(pairs):
        writer.write(shard_id, teacher.label(shard_pairs))
        done += len(shard_pairs)
        written += 1
        rate = done / max(time.perf_counter() - start, 1e-9)
        eta = ""
        if my_total is not None:
            eta = f", about {max(my_total - done, 0) / rate / 60:.1f} min left at most (done shards are not redone)"
        logger.info("rank %d: shard %d written (%d pairs this run, %.2f images/s%s)", rank, shard_id, done, rate, eta)
    counts = dict(teacher.counts, shards_written=written, skipped_rows=read_counts.get("skipped", 0),
                  seconds=time.perf_counter() - start)
    logger.info("rank %d finished: %s", rank, counts)
    return counts
