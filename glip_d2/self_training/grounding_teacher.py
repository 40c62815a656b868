"""The teacher of self-training: a trained GLIP grounds the noun phrases of each caption in its image.

GLIP's self-training (paper §3.3: a teacher trained on gold data grounds the noun phrases of web captions; the
student trains on the result) turns image–text pairs into grounding data. Per pair:

1. the caption's noun phrases are found (:func:`~glip_d2.data.prompts.free_text_prompt` without phrases: every
   occurrence of each phrase is its own row, with its exact char spans);
2. the teacher predicts boxes for those rows through :class:`~glip_d2.engine.predictor.GLIPPredictor` (several
   images per forward pass; the encoded prompt of a repeated caption comes from the predictor's cache);
3. per phrase, the boxes scoring at least ``score_threshold`` are kept, at most ``topk_per_phrase`` of them, best
   first; each keeps its phrase's spans (``tokens_positive``), the phrase text and the teacher's score.

A caption with no noun phrase, or too long for the teacher's prompt, is still a processed pair, with no box
(counted in ``counts``). An image that cannot be read is a bad pair: an error naming it, or skipped and counted.
"""
import logging
from collections.abc import Sequence

import numpy as np
from detectron2.data.detection_utils import read_image

from ..data.prompts import Prompt, free_text_prompt
from .image_text_pairs import BadPairError, ImageTextPair

__all__ = ["GroundingTeacher"]

logger = logging.getLogger(__name__)


class GroundingTeacher:
    """Pseudo boxes for image–caption pairs, as the records :meth:`ShardWriter.write` takes."""

    def __init__(self, predictor, *, score_threshold: float = 0.5, topk_per_phrase: int = 3,
                 batch_size: int = 4, on_bad_row: str = "error"):
        if not 0.0 <= score_threshold <= 1.0:
            raise ValueError(f"score_threshold must be in [0, 1], got {score_threshold}")
        if topk_per_phrase < 1 or batch_size < 1:
            raise ValueError(f"topk_per_phrase and batch_size must be >= 1, got {topk_per_phrase}, {batch_size}")
        if on_bad_row not in ("error", "skip"):
            raise ValueError(f"on_bad_row must be 'error' or 'skip', got {on_bad_row!r}")
        self.predictor = predictor
        self.score_threshold = float(score_threshold)
        self.topk_per_phrase = int(topk_per_phrase)
        self.batch_size = int(batch_size)
        self.on_bad_row = on_bad_row
        self.counts = {"pairs": 0, "boxes": 0, "no_phrase": 0, "bad_image": 0}

    def _prompt(self, pair: ImageTextPair) -> Prompt | None:
        """The caption's noun-phrase rows, or None when it has none or the teacher cannot encode it."""
        try:
            prompt = free_text_prompt(pair.caption)
            self.predictor.encode_prompt(prompt)
            return prompt
        except ValueError as e:
            logger.debug("%s: no usable phrase (%s)", pair.where, e)
            return None

    def _image(self, pair: ImageTextPair) -> np.ndarray | None:
        try:
            return read_image(pair.image, format="BGR")
        except Exception as e:  # PIL/OS errors vary by format: all mean "this image cannot be used"
            if self.on_bad_row == "error":
                raise BadPairError(f"{pair.where}: cannot read the image {pair.image!r} ({e})") from e
            logger.warning("%s: skipped, cannot read the image %r (%s)", pair.where, pair.image, e)
            self.counts["bad_image"] += 1
            return None

    def _boxes(self, instances, prompt: Prompt) -> list[dict]:
        boxes = instances.pred_boxes.tensor.tolist()
        scores = instances.scores.tolist()
        labels = instances.pred_classes.tolist()
        row_of_label = {label: row for row, label in enumerate(prompt.labels)}
        kept = []
        for label, row in row_of_label.items():
            ranked = sorted((i for i, c in enumerate(labels) if c == label and scores[i] >= self.score_threshold),
                            key=lambda i: -scores[i])
            for i in ranked[: self.topk_per_phrase]:
                x1, y1, x2, y2 = boxes[i]
                kept.append({
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "tokens_positive": [list(s) for s in prompt.spans[row]],
                    "phrase": prompt.phrases[row],
                    "score": scores[i],
                })
        return kept

    def label(self, pairs: Sequence[ImageTextPair]) -> list[dict]:
        """One record per usable pair (``pair``, ``width``, ``height``, ``boxes``), in the order given. Images are
        read ``batch_size`` at a time, so memory does not grow with the number of pairs."""
        records = []
        for lo in range(0, len(pairs), self.batch_size):
            todo = []
            for pair in pairs[lo: lo + self.batch_size]:
                image = self._image(pair)
                if image is None:
                    continue
                self.counts["pairs"] += 1
                record = {"pair": pair, "width": int(image.shape[1]), "height": int(image.shape[0]), "boxes": []}
                records.append(record)
                prompt = self._prompt(pair)
                if prompt is None:
                    self.counts["no_phrase"] += 1
                else:
                    todo.append((record, image, prompt))
            if not todo:
                continue
            outputs = self.predictor.predict_batch([img for _, img, _ in todo], [p for _, _, p in todo])
            for (record, _, prompt), instances in zip(todo, outputs):
                record["boxes"] = self._boxes(instances, prompt)
                self.counts["boxes"] += len(record["boxes"])
        return records
