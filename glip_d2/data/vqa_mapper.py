"""``VQADatasetMapper``: a VQA record -> model input with the question as the prompt and the soft answer targets.

The question is GLIP's caption: it is tokenised by the model like any prompt and fused with the image in every
tower block; the VQA head reads the fused question tokens. Images get the grounding mapper's resize (and, in
training, flip) augmentations (``build_glip_augmentation``), so a checkpoint sees the scales it was trained at.

Fields added: ``caption`` (= the question), ``question_id``, ``answer_ids`` [A] / ``answer_scores`` [A] (sparse soft
targets over the answer vocabulary, training requires them). There is no positive map: a question names no labels.
When the record has grounded boxes (``annotations`` with ``tokens_positive`` spans in the question, see
``glip_d2.data.datasets.vqa``), the mapper also adds GLIP's prompt fields for those spans (``positive_map``,
``positive_map_labels``, ``phrases``) and, in training, ``instances`` with ``gt_boxes`` and ``gt_positive_map``:
that is what lets GLIPv2VQA keep the grounding loss and return boxes grounded to the question.

Errors name the question: an empty question, one over MODEL.LANGUAGE.MAX_QUERY_LEN tokens ([CLS]/[SEP]
included), a training record without answers.
"""
import copy

import torch
from detectron2.config import configurable
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T

from .tokens import create_positive_map, tokenize_unpadded
from .transforms import build_glip_augmentation, read_augmented_image

__all__ = ["VQADatasetMapper", "check_question"]


def check_question(question, tokenizer, max_query_len: int, question_id="?") -> str:
    """The question as given (box spans index into it), or a ``ValueError`` naming ``question_id``: not text,
    empty, or more tokens than the prompt limit."""
    if not isinstance(question, str):
        raise ValueError(f"question_id {question_id}: the question must be a string, got {type(question).__name__}")
    if not question.strip():
        raise ValueError(f"question_id {question_id}: the question is empty")
    num_tokens = len(tokenize_unpadded(tokenizer, question)["input_ids"])
    if num_tokens > max_query_len:
        raise ValueError(
            f"question_id {question_id}: the question has {num_tokens} tokens ([CLS]/[SEP] included), more than "
            f"MODEL.LANGUAGE.MAX_QUERY_LEN={max_query_len}: {question[:80]!r}"
        )
    return question


class VQADatasetMapper:
    """Reads and resizes the image, tokenises-checks the question, carries the soft answer targets."""

    @configurable
    def __init__(self, is_train: bool, *, augmentations: list, image_format: str, tokenizer, max_query_len: int,
                 with_boxes: bool = False):
        """``with_boxes``: in training, turn grounded boxes into ``instances`` (GLIPv2VQA's kept grounding loss)."""
        self.is_train = is_train
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format
        self.tokenizer = tokenizer
        self.max_query_len = int(max_query_len)
        self.with_boxes = bool(with_boxes)

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        from ..tokenization import build_tokenizer

        return {
            "is_train": is_train,
            "augmentations": build_glip_augmentation(cfg, is_train),
            "image_format": cfg.INPUT.FORMAT,
            "tokenizer": build_tokenizer(cfg),
            "max_query_len": cfg.MODEL.LANGUAGE.MAX_QUERY_LEN,
            "with_boxes": cfg.MODEL.VQA.KEEP_DETECTION_LOSS,
        }

    def _grounding(self, question: str, annos: list[dict], question_id) -> tuple[dict, torch.Tensor]:
        """GLIP prompt fields with one row per distinct span set of the boxes, and each box's row index."""
        rows, row_of = [], []
        for a in annos:
            spans = tuple(tuple(int(v) for v in s) for s in a.get("tokens_positive", ()))
            if not spans or any(not 0 <= s < e <= len(question) for s, e in spans):
                raise ValueError(f"question_id {question_id}: box spans {a.get('tokens_positive')} are not inside "
                                 f"the question {question!r}")
            if spans not in rows:
                rows.append(spans)
            row_of.append(rows.index(spans))
        phrases = [" ".join(question[s:e] for s, e in r) for r in rows]
        positive_map = create_positive_map(self.tokenizer, question, [list(r) for r in rows], self.max_query_len,
                                           phrases)
        fields = {"positive_map": positive_map, "positive_map_labels": torch.arange(len(rows)), "phrases": phrases}
        return fields, torch.as_tensor(row_of, dtype=torch.long)

    def __call__(self, dataset_dict: dict) -> dict:
        d = copy.deepcopy(dataset_dict)
        qid = d.get("question_id", "?")
        d["caption"] = check_question(d.get("question"), self.tokenizer, self.max_query_len, qid)
        if self.is_train and "answer_ids" not in d:
            raise ValueError(f"question_id {qid}: a training record needs answers (answer_ids / answer_scores)")
        if "answer_ids" in d:
            ids, scores = d.pop("answer_ids"), d.pop("answer_scores", None)
            if scores is None or len(scores) != len(ids):
                raise ValueError(f"question_id {qid}: answer_ids and answer_scores differ in length")
            d["answer_ids"] = torch.as_tensor(ids, dtype=torch.long)
            d["answer_scores"] = torch.as_tensor(scores, dtype=torch.float32)

        d["image"], transforms = read_augmented_image(d, self.image_format, self.augmentations)
        image_hw = tuple(d["image"].shape[1:])

        annos = [a for a in d.pop("annotations", []) if a.get("iscrowd", 0) == 0]
        if annos:
            fields, row_of = self._grounding(d["caption"], annos, qid)
            d.update(fields)
            if self.is_train and self.with_boxes:
                annos = [utils.transform_instance_annotations(dict(a, bbox=[float(v) for v in a["bbox"]]),
                                                              transforms, image_hw) for a in annos]
                instances = utils.annotations_to_instances(annos, image_hw)
                instances.gt_positive_map = fields["positive_map"][row_of]
                d["instances"] = utils.filter_empty_instances(instances)
        return d
