"""``VQAEvaluator``: the official VQA accuracy of a model's answers, overall and per answer type.

The model returns per question ``{"vqa_scores": [num_answers]}``; the answer is the highest-scoring entry of the
dataset's answer vocabulary (``MetadataCatalog.get(name).answer_vocab``, the training set's for validation sets).
Accuracy is :func:`~glip_d2.evaluation.vqa_answers.vqa_accuracy` against the record's human answers, averaged over
the questions and reported x100 as the official evaluation does ("accuracy" and one entry per answer type:
"yes/no", "number", "other"). Predictions of every process are collected with detectron2's ``comm.gather``; the
main process also writes them in the official results format (``[{"question_id", "answer"}]``,
``vqa_predictions.json``), which is what a test-dev server takes, so a split without answers is still useful.
"""
import json
import logging
import os
from collections import OrderedDict, defaultdict

import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils.file_io import PathManager

from .grounding_utils import gather_predictions
from .vqa_answers import ANSWER_TYPES, vqa_accuracy

__all__ = ["VQAEvaluator", "vqa_results"]

logger = logging.getLogger(__name__)


def vqa_results(predictions: dict[int, str], records: dict[int, dict]) -> dict[str, float]:
    """{"accuracy", per answer type, "count"}: accuracy x100 (2 decimals, as official) over the predicted
    questions that have human answers. ``records``: question_id -> {"answers", "answer_type"}."""
    scores, by_type = [], defaultdict(list)
    for question_id, answer in predictions.items():
        record = records.get(question_id)
        if record is None:
            raise ValueError(f"prediction for question_id {question_id}, which is not in the dataset")
        if not record.get("answers"):
            continue
        acc = vqa_accuracy(answer, record["answers"])
        scores.append(acc)
        by_type[record.get("answer_type", "other")].append(acc)
    results = {"accuracy": round(100.0 * sum(scores) / len(scores), 2) if scores else float("nan")}
    for answer_type in list(ANSWER_TYPES) + sorted(set(by_type) - set(ANSWER_TYPES)):
        if by_type.get(answer_type):
            results[answer_type] = round(100.0 * sum(by_type[answer_type]) / len(by_type[answer_type]), 2)
    results["count"] = float(len(scores))
    return results


class VQAEvaluator(DatasetEvaluator):
    """Official VQA accuracy of ``{"vqa_scores"}`` outputs on a registered VQA dataset (evaluator_type "vqa")."""

    def __init__(self, dataset_name: str, output_dir: str | None = None, distributed: bool = True):
        meta = MetadataCatalog.get(dataset_name)
        vocab = meta.get("answer_vocab", None)
        if not vocab:
            raise ValueError(
                f"dataset {dataset_name!r} has no answer_vocab in its metadata: register it with register_vqa"
            )
        self.dataset_name = dataset_name
        self.answer_vocab = list(vocab)
        self.output_dir = output_dir
        self.distributed = distributed
        self._records = None
        self._predictions: list[dict] = []

    def _gt(self) -> dict[int, dict]:
        if self._records is None:  # read once, on the main process, when evaluating
            self._records = {int(r["question_id"]): r for r in DatasetCatalog.get(self.dataset_name)}
        return self._records

    def reset(self):
        self._predictions = []

    def process(self, inputs, outputs):
        for inp, out in zip(inputs, outputs):
            if "question_id" not in inp:
                raise ValueError(f"VQA evaluation needs 'question_id' in each input dict; got {sorted(inp)}")
            if "vqa_scores" not in out:
                raise ValueError(f"the model returned {sorted(out)}; VQA evaluation needs 'vqa_scores' (GLIPv2VQA)")
            scores = torch.as_tensor(out["vqa_scores"]).flatten()
            if scores.numel() != len(self.answer_vocab):
                raise ValueError(
                    f"the model scores {scores.numel()} answers but {self.dataset_name!r} has "
                    f"{len(self.answer_vocab)} in its answer vocabulary (MODEL.VQA.NUM_ANSWERS / the training set's)"
                )
            answer = self.answer_vocab[int(scores.argmax())]
            self._predictions.append({"question_id": int(inp["question_id"]), "answer": answer})

    def evaluate(self):
        predictions = gather_predictions(self._predictions, self.distributed)
        if predictions is None:  # not the main process
            return {}
        if not predictions:
            logger.warning("[VQAEvaluator] no predictions for %s", self.dataset_name)
            return {}
        if self.output_dir:
            PathManager.mkdirs(self.output_dir)
            with PathManager.open(os.path.join(self.output_dir, "vqa_predictions.json"), "w") as f:
                json.dump(predictions, f)
        by_question = {p["question_id"]: p["answer"] for p in predictions}
        results = vqa_results(by_question, self._gt())
        logger.info("VQA accuracy on %s (%d questions): %s", self.dataset_name, int(results["count"]),
                    ", ".join(f"{k} {v:.2f}" for k, v in results.items() if k != "count"))
        return OrderedDict({"vqa": results})
