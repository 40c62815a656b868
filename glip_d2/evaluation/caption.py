"""``CaptionEvaluator``: the COCO caption metrics of a model's captions on a registered caption dataset.

The model returns per image ``{"caption": str}``; the references are the dataset's own records
(``DatasetCatalog.get(name)``, each ``{"image_id", "captions": [str, ...]}``), not the model inputs, so a mapper that
drops annotations at test time changes nothing. Scores come from :func:`~glip_d2.evaluation.caption_metrics.
score_captions` (pycocoevalcap: BLEU-1..4, METEOR with Java, ROUGE-L, CIDEr-D, SPICE on request), x100. Captions of
every process are collected with detectron2's ``comm.gather``; the main process also writes them in the COCO results
format (``[{"image_id", "caption"}]``, ``caption_predictions.json``), which is what the COCO caption server takes.
"""
import json
import logging
import os
import tempfile
from collections import OrderedDict

from detectron2.data import DatasetCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils.logger import create_small_table

from .caption_metrics import require_pycocoevalcap, score_captions
from .grounding_utils import gather_predictions

__all__ = ["CaptionEvaluator"]

logger = logging.getLogger(__name__)


class CaptionEvaluator(DatasetEvaluator):
    """COCO caption metrics of ``{"caption"}`` outputs on a registered caption dataset (evaluator_type "caption").

    Only the images that were processed are scored (a subset of the split is fine, e.g. a quick run on the first N
    images; CIDEr-D's document frequencies then come from that subset's references, as in any pycocoevalcap run).
    ``use_java``: None = METEOR and the official Java tokenizer when Java is installed (see ``score_captions``);
    ``spice``: also SPICE (Java; slow, downloads Stanford CoreNLP on first use).
    """

    def __init__(
        self,
        dataset_name: str,
        output_dir: str | None = None,
        distributed: bool = True,
        use_java: bool | None = None,
        spice: bool = False,
    ):
        require_pycocoevalcap()  # fail before inference, not after it
        self.dataset_name = dataset_name
        self.output_dir = output_dir
        self.distributed = distributed
        self.use_java = use_java
        self.spice = spice
        self._references = None
        self._predictions: list[dict] = []

    def _gt(self) -> dict:
        """image_id -> reference captions, read once (on the main process, when evaluating). Several records of one
        image (one per caption, as some loaders do) have their captions joined."""
        if self._references is None:
            refs: dict = {}
            for record in DatasetCatalog.get(self.dataset_name):
                if "image_id" not in record or "captions" not in record:
                    raise ValueError(
                        f"caption dataset {self.dataset_name!r} has a record without 'image_id'/'captions' "
                        f"(keys {sorted(record)}): caption evaluation reads the references from the records"
                    )
                refs.setdefault(record["image_id"], []).extend(record["captions"])
            self._references = refs
        return self._references

    def reset(self):
        self._predictions = []

    def process(self, inputs, outputs):
        for inp, out in zip(inputs, outputs):
            if "image_id" not in inp:
                raise ValueError(f"caption evaluation needs 'image_id' in each input dict; got {sorted(inp)}")
            image_id = inp["image_id"]
            if "caption" not in out:
                raise ValueError(
                    f"the model returned {sorted(out)} for image_id {image_id!r}; caption evaluation needs 'caption'"
                )
            caption = out["caption"]
            if not isinstance(caption, str):
                raise ValueError(f"the caption for image_id {image_id!r} is a {type(caption).__name__}, not a str")
            self._predictions.append({"image_id": image_id, "caption": caption})

    def _write(self, predictions: list[dict]):
        """caption_predictions.json, written atomically: a temp file in the same folder, then os.replace, so an
        interrupted run never leaves a truncated file where a previous good one was."""
        os.makedirs(self.output_dir, exist_ok=True)
        path = os.path.join(self.output_dir, "caption_predictions.json")
        fd, tmp = tempfile.mkstemp(dir=self.output_dir, prefix=".caption_predictions.", suffix=".json.tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(predictions, f)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise
        logger.info("[CaptionEvaluator] wrote %d captions to %s", len(predictions), path)

    def evaluate(self):
        predictions = gather_predictions(self._predictions, self.distributed)
        if predictions is None:  # not the main process
            return {}
        if not predictions:
            logger.warning("[CaptionEvaluator] no captions to evaluate on %s", self.dataset_name)
            return {}

        by_image = {}
        for p in predictions:  # an image seen twice (padded last batch of a distributed sampler): the first counts
            by_image.setdefault(p["image_id"], p["caption"])
        if self.output_dir:
            self._write([{"image_id": k, "caption": v} for k, v in by_image.items()])

        references = self._gt()
        unknown = [k for k in by_image if k not in references]
        if unknown:
            raise ValueError(
                f"captions for {len(unknown)} image_id(s) that are not in {self.dataset_name!r}: {unknown[:10]}"
            )
        logger.info("[CaptionEvaluator] evaluating captions of %d of the %d images of %s", len(by_image),
                    len(references), self.dataset_name)
        scores = score_captions(by_image, {k: references[k] for k in by_image}, use_java=self.use_java,
                                spice=self.spice)
        logger.info("Caption metrics on %s:\n%s", self.dataset_name, create_small_table(scores))
        return OrderedDict({"caption": scores})
