"""``GLIPPredictor.caption``: a GLIPv2Caption model's caption for one picture, optionally grounded to boxes.

Grounding the caption is GLIPv2's "grounded captioning": the written caption becomes a GLIP prompt whose noun
phrases are found by the same checkpoint's detection head (GLIP's own inference, bidirectional text as in
grounding), so the caption's words point at regions of the picture.
"""
import logging

import numpy as np
import torch
from detectron2.structures import Boxes, Instances

from ..structures import PhraseList

__all__ = ["caption_image"]

logger = logging.getLogger(__name__)


def caption_image(predictor, image: np.ndarray, *, beam_size: int | None = None, max_length: int | None = None,
                  length_penalty: float | None = None, ground: bool = False):
    """``(caption, score)`` for ``image`` (BGR uint8, as the predictor takes); with ``ground=True`` a triple
    ``(caption, score, Instances)`` whose ``pred_phrases`` are the caption's noun phrases. ``beam_size`` /
    ``max_length`` / ``length_penalty`` override MODEL.CAPTION's for this call."""
    from ..modeling.meta_arch.glip import GLIP

    model = predictor.model
    if not hasattr(model, "lm_head") or not hasattr(model, "generate"):
        raise TypeError(f"caption() needs a GLIPv2Caption model (MODEL.META_ARCHITECTURE), got {type(model).__name__}")
    if beam_size is not None and (not isinstance(beam_size, int) or beam_size < 1):
        raise ValueError(f"beam_size must be a positive integer, got {beam_size!r}")
    inputs = predictor._model_input(image, [{}], "image")
    with torch.no_grad():
        out = model.inference([inputs], beam_size=beam_size, max_length=max_length, length_penalty=length_penalty)[0]
    caption, score = out["caption"], float(out["caption_score"])
    if not ground:
        return caption, score
    try:
        encoded = predictor.encode_prompt(caption)
    except ValueError:  # nothing to ground (no noun phrase, or an empty caption)
        logger.info("no noun phrase to ground in %r", caption)
        empty = Instances(image.shape[:2], pred_boxes=Boxes(torch.zeros(0, 4)), scores=torch.zeros(0),
                          pred_classes=torch.zeros(0, dtype=torch.long))
        empty.pred_phrases = PhraseList([])
        return caption, score, empty
    grounding_input = predictor._model_input(image, encoded, "image")
    with torch.no_grad():
        instances = GLIP.inference(model, [grounding_input])[0]["instances"].to("cpu")
    return caption, score, predictor._with_phrases(instances, encoded)
