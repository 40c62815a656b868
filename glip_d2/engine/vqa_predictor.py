"""Answering a question about one image with a GLIPv2VQA model (``GLIPPredictor.answer`` and the demo).

The question goes through the same checks and resize as in evaluation (``VQADatasetMapper``'s rules); the answers are
the top-k entries of the answer vocabulary registered with the training set (MODEL.VQA.ANSWER_VOCAB_DATASET, default
the first of DATASETS.TRAIN; registered here from the config if needed, synthetic data generated on first use).

Grounded boxes (``boxes=True``): the question is also encoded as a GLIP free-text prompt whose phrases are its noun
phrases (``phrases=`` overrides them), and the model's detector head, which GLIPv2VQA keeps, returns the boxes of
those phrases (``Instances`` with ``pred_phrases``; empty when the question has no noun phrase). That is the
model's grounding of the question's words, not an explanation of the answer: nothing ties the VQA head's decision
to a box.
"""
import logging

import numpy as np
import torch
from detectron2.data import MetadataCatalog
from detectron2.structures import Boxes, Instances

from ..data.vqa_mapper import check_question
from ..structures import PhraseList

__all__ = ["answer_question", "answer_vocab_from_cfg"]

logger = logging.getLogger(__name__)


def answer_vocab_from_cfg(cfg) -> list[str]:
    """The answer strings the model's VQA head scores, from the registered vocabulary dataset (registered from
    ``cfg`` if needed). Call it before ``GLIPPredictor(cfg)`` when MODEL.VQA.NUM_ANSWERS is 0: the head's size
    comes from this vocabulary."""
    name = cfg.MODEL.VQA.ANSWER_VOCAB_DATASET or (cfg.DATASETS.TRAIN[0] if cfg.DATASETS.TRAIN else "")
    if not name:
        raise ValueError("set MODEL.VQA.ANSWER_VOCAB_DATASET (or DATASETS.TRAIN) to the VQA set the model was trained on")
    vocab = MetadataCatalog.get(name).get("answer_vocab", None)
    if not vocab:
        from ..data.datasets import register_datasets_from_cfg

        register_datasets_from_cfg(cfg)
        vocab = MetadataCatalog.get(name).get("answer_vocab", None)
    if not vocab:
        raise ValueError(f"{name!r} has no registered answer vocabulary: register it with register_vqa first")
    return list(vocab)


def answer_question(predictor, image: np.ndarray, question: str, topk: int = 5, *, boxes: bool = False,
                    phrases=None):
    """Top-``topk`` ``[(answer, score)]`` (score = the head's sigmoid, the predicted VQA accuracy), best first;
    with ``boxes=True`` a pair ``(answers, Instances)`` (module docstring)."""
    model = predictor.model
    if not hasattr(model, "vqa_head"):
        raise TypeError(f"answer() needs a GLIPv2VQA model (MODEL.META_ARCHITECTURE), got {type(model).__name__}")
    if not isinstance(topk, int) or topk < 1:
        raise ValueError(f"topk must be a positive integer, got {topk!r}")
    check_question(question, predictor.tokenizer, predictor.max_len, question_id="(asked)")
    vocab = getattr(predictor, "_vqa_answer_vocab", None)
    if vocab is None:
        vocab = predictor._vqa_answer_vocab = answer_vocab_from_cfg(predictor.cfg)
    if len(vocab) != model.vqa_head.num_answers:
        raise ValueError(f"the model scores {model.vqa_head.num_answers} answers but the registered vocabulary has "
                         f"{len(vocab)}: MODEL.VQA.ANSWER_VOCAB_DATASET must name the set it was trained on")
    encoded = _grounding_prompt(predictor, question, phrases) if boxes else None
    inputs = predictor._model_input(image, encoded or [{"caption": question}], "image")
    inputs["caption"] = question
    previous = model.return_instances
    model.return_instances = encoded is not None
    try:
        with torch.no_grad():
            output = model([inputs])[0]
    finally:
        model.return_instances = previous
    scores = output["vqa_scores"].to("cpu")
    top = torch.topk(scores, min(topk, scores.numel()))
    answers = [(vocab[int(i)], float(s)) for s, i in zip(top.values, top.indices)]
    if not boxes:
        return answers
    if encoded is None:  # nothing to ground in the question
        empty = Instances(image.shape[:2], pred_boxes=Boxes(torch.zeros(0, 4)), scores=torch.zeros(0),
                          pred_classes=torch.zeros(0, dtype=torch.long))
        empty.pred_phrases = PhraseList([])
        return answers, empty
    return answers, predictor._with_phrases(output["instances"].to("cpu"), encoded)


def _grounding_prompt(predictor, question: str, phrases):
    """The question as a GLIP prompt whose rows are its noun phrases (or ``phrases``); None when it has none."""
    try:
        encoded = predictor.encode_prompt(question, phrases)
    except ValueError:
        if phrases is not None:
            raise
        logger.info("no noun phrase to ground in %r: answering without boxes", question)
        return None
    if len(encoded) != 1:
        raise ValueError("a question is one prompt; it cannot be split")
    return encoded
