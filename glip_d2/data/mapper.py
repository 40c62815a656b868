"""``GroundingDatasetMapper``: detectron2 dataset dict -> model input with caption and token positive maps.

Adds to detectron2's ``DatasetMapper`` output the batch fields of docs/architecture.md: ``caption``,
``positive_map`` [K, MAX_QUERY_LEN] (one binary row per prompt label), ``positive_map_labels`` [K] (what a row
reports as ``pred_classes``), ``phrases`` and, in training, ``instances.gt_positive_map`` [N, MAX_QUERY_LEN]; or,
at test time for a vocabulary that needs several prompts, ``prompts`` (a list of such field dicts).

Where the prompt comes from (INPUT.PROMPT.TRAIN_SOURCE / TEST_SOURCE, "auto" by default):
* a record's own ``caption`` with its annotations' ``tokens_positive`` (grounding data). Rows are the record's
  categories (contiguous ``category_id``; datasets with ``thing_classes`` and a detection evaluator) or its
  phrases (Flickr30k, RefCOCO, GoldG: labels are phrase indices, at test time the ``tokens_positive_eval``
  phrases);
* the dataset's ``MetadataCatalog.thing_classes`` (detection data): in training the official sampler with
  negatives and shuffling (``sample_detection_prompt``), at test time the whole vocabulary, chunked if needed.
INPUT.PROMPT.TRAIN_SOURCE_BY_DATASET overrides the training source per dataset (records tagged with their
registered ``dataset_name``, see :func:`tag_records`).

With GLIPv2's objectives on (MODEL.GLIPV2.MLM / REGION_WORD), training dicts also get ``greenlight_map`` [L]
(where masked tokens count in the MLM loss) and ``token_category_ids`` [L] (each token's category id, -1 for
none), see ``glip_d2.data.greenlight``. The prompt source decides the data kind: prompts built from
thing_classes are detection data, a record's own caption is grounding data.
"""
import copy
import logging
import random
from collections.abc import Sequence

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import DatasetMapper, MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.utils.file_io import PathManager

from .greenlight import build_greenlight_map, token_category_ids
from .prompts import (
    Prompt,
    grounding_phrases,
    sample_detection_prompt,
    split_vocabulary,
)
from .tokens import create_positive_map, encode_prompt, tokenize_unpadded
from .transforms import build_glip_augmentation

__all__ = ["GroundingDatasetMapper", "tag_records"]

logger = logging.getLogger(__name__)

_DETECTION_EVALUATORS = ("coco", "lvis")
_SOURCES = ("auto", "caption", "vocabulary")


def _record_name(d: dict) -> str:
    return f"image {d.get('file_name', '?')!r} (image_id={d.get('image_id', '?')})"


def tag_records(dicts: list[dict], name: str) -> list[dict]:
    """Set each record's ``dataset_name`` to its registered dataset ``name`` (in place); returns ``dicts``.

    Why: per-dataset settings (INPUT.PROMPT.TRAIN_SOURCE_BY_DATASET) need to know where a record comes from, and
    a json's own ``dataset_name`` tag (e.g. ``"synthetic"``, ``"flickr"``) names no registered dataset.
    """
    for d in dicts:
        d["dataset_name"] = name
    return dicts


class GroundingDatasetMapper(DatasetMapper):
    """Reads the image, applies GLIP's resize/flip, builds the prompt and its token positive maps."""

    @configurable
    def __init__(
        self,
        is_train: bool,
        *,
        augmentations: list,
        image_format: str,
        tokenizer,
        max_query_len: int = 256,
        dataset_names: Sequence[str] = (),
        prompt_options: dict | None = None,
        train_source: str = "auto",
        test_source: str = "auto",
        use_instance_mask: bool = False,
        instance_mask_format: str = "polygon",
        recompute_boxes: bool = False,
        rng=None,
        train_source_by_dataset: dict | None = None,
        glipv2_maps: bool = False,
        no_mask: dict | None = None,
    ):
        """
        Args:
            tokenizer: HF fast tokenizer (``build_tokenizer(cfg)``).
            dataset_names: registered datasets whose records this mapper sees (for ``thing_classes`` and
                ``evaluator_type``); a record is matched by its ``dataset_name`` key when that names one of them.
            prompt_options: keyword arguments of ``sample_detection_prompt`` (training) plus ``chunk_size`` and
                ``chunk_only_if_needed`` (test) and ``separator``.
            rng: ``random.Random`` for the training prompt sampler; default the ``random`` module, which
                detectron2 seeds per data-loader worker.
            train_source_by_dataset: {dataset name: training prompt source} overriding ``train_source``.
            glipv2_maps: add ``greenlight_map`` and ``token_category_ids`` to training dicts (GLIPv2).
            no_mask: {"detection": bool, "grounding": bool}: that data kind gets the "no MLM" greenlight map.
        """
        super().__init__(
            is_train,
            augmentations=augmentations,
            image_format=image_format,
            use_instance_mask=use_instance_mask,
            instance_mask_format=instance_mask_format,
            recompute_boxes=recompute_boxes,
        )
        self.train_source_by_dataset = dict(train_source_by_dataset or {})
        sources = [("train_source", train_source), ("test_source", test_source)]
        sources += [(f"train source of {n!r}", s) for n, s in self.train_source_by_dataset.items()]
        for what, src in sources:
            if src not in _SOURCES:
                raise ValueError(f"{what} must be one of {_SOURCES}, got {src!r}")
        unknown = sorted(set(self.train_source_by_dataset) - set(dataset_names))
        if is_train and unknown:
            raise ValueError(f"INPUT.PROMPT.TRAIN_SOURCE_BY_DATASET names {unknown}, not in DATASETS.TRAIN {list(dataset_names)}")
        self.glipv2_maps = bool(glipv2_maps)
        self.no_mask = {"detection": False, "grounding": False, **(no_mask or {})}
        self.tokenizer = tokenizer
        self.max_query_len = int(max_query_len)
        self.dataset_names = list(dataset_names)
        self.prompt_options = dict(prompt_options or {})
        self.train_source = train_source
        self.test_source = test_source
        self.rng = rng  # None: the `random` module at call time (a module cannot be pickled to spawned workers)
        self._vocab_cache: dict[str, list[dict]] = {}
        self._same_metadata: bool | None = None

    @classmethod
    def from_config(cls, cfg, is_train: bool = True, dataset_name: str | None = None):
        from ..tokenization import build_tokenizer

        augs = build_glip_augmentation(cfg, is_train)
        recompute_boxes = False
        if cfg.INPUT.CROP.ENABLED and is_train:
            augs.insert(0, T.RandomCrop(cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE))
            recompute_boxes = cfg.MODEL.MASK_ON
        p = cfg.INPUT.PROMPT
        if dataset_name is not None:
            names = [dataset_name]
        else:
            names = list(cfg.DATASETS.TRAIN if is_train else cfg.DATASETS.TEST)
        return {
            "is_train": is_train,
            "augmentations": augs,
            "image_format": cfg.INPUT.FORMAT,
            "tokenizer": build_tokenizer(cfg),
            "max_query_len": cfg.MODEL.LANGUAGE.MAX_QUERY_LEN,
            "dataset_names": names,
            "prompt_options": {
                "separator": p.SEPARATOR,
                "random_sample_neg": p.RANDOM_SAMPLE_NEG,
                "full_negative_prob": p.FULL_NEGATIVE_PROB,
                "shuffle": p.SHUFFLE,
                "sample_negatives": p.SAMPLE_NEGATIVES,
                "include_background": p.NEGATIVE_INCLUDES_BACKGROUND,
                "chunk_size": p.CHUNK_SIZE,
                "chunk_only_if_needed": p.CHUNK_ONLY_IF_NEEDED,
            },
            "train_source": p.TRAIN_SOURCE,
            "test_source": p.TEST_SOURCE,
            "use_instance_mask": cfg.MODEL.MASK_ON,
            "instance_mask_format": cfg.INPUT.MASK_FORMAT,
            "recompute_boxes": recompute_boxes,
            "train_source_by_dataset": {str(n): str(s) for n, s in p.TRAIN_SOURCE_BY_DATASET},
            "glipv2_maps": cfg.MODEL.GLIPV2.MLM.ENABLED or cfg.MODEL.GLIPV2.REGION_WORD.ENABLED,
            "no_mask": {
                "detection": cfg.MODEL.GLIPV2.MLM.NO_MASK_FOR_DETECTION,
                "grounding": cfg.MODEL.GLIPV2.MLM.NO_MASK_FOR_GROUNDING,
            },
        }

    # ---------------------------------------------------------------------------------------------------------
    # dataset metadata
    # ---------------------------------------------------------------------------------------------------------
    def _metadata(self, name: str | None):
        if name is None:
            return None, None
        meta = MetadataCatalog.get(name)
        classes = meta.get("thing_classes", None)
        return (list(classes) if classes else None), meta.get("evaluator_type", None)

    def _dataset_of(self, d: dict) -> str | None:
        tag = d.get("dataset_name")
        if tag in self.dataset_names:
            return tag
        if not self.dataset_names:
            return None
        first = self.dataset_names[0]
        if self._same_metadata is None:
            self._same_metadata = all(self._metadata(n) == self._metadata(first) for n in self.dataset_names[1:])
        if self._same_metadata:
            return first
        raise ValueError(
            f"{_record_name(d)} may come from any of {self.dataset_names}, whose thing_classes/evaluator_type "
            "differ; give the mapper dataset_name=... or tag each record with its registered 'dataset_name'"
        )

    def _choose_source(self, d: dict, classes, evaluator_type, name: str | None = None) -> str:
        if self.is_train and self.train_source_by_dataset and d.get("dataset_name") not in self.dataset_names:
            if len(self.dataset_names) > 1:  # which dataset's source applies would be a guess
                raise ValueError(
                    f"{_record_name(d)}: INPUT.PROMPT.TRAIN_SOURCE_BY_DATASET needs each record's registered "
                    f"'dataset_name' (one of {self.dataset_names}); tag_records() sets it, GLIPTrainer calls it"
                )
        src = self.train_source_by_dataset.get(name, self.train_source) if self.is_train else self.test_source
        has_caption = isinstance(d.get("caption"), str)
        if src == "auto":
            if not self.is_train and classes and evaluator_type in _DETECTION_EVALUATORS:
                src = "vocabulary"
            elif has_caption:
                src = "caption"
            elif classes:
                src = "vocabulary"
            else:
                raise ValueError(
                    f"{_record_name(d)} has no 'caption' and its dataset {self.dataset_names or '(none given)'} "
                    "has no thing_classes in MetadataCatalog: there is nothing to build a prompt from"
                )
        if src == "caption" and not has_caption:
            raise ValueError(f"{_record_name(d)} has no 'caption' but the prompt source is 'caption'")
        if src == "vocabulary" and not classes:
            raise ValueError(
                f"{_record_name(d)}: prompt source 'vocabulary' needs thing_classes in MetadataCatalog of "
                f"{self.dataset_names or '(no dataset given to the mapper)'}"
            )
        return src

    # ---------------------------------------------------------------------------------------------------------
    # image
    # ---------------------------------------------------------------------------------------------------------
    def _read_image(self, d: dict) -> np.ndarray:
        file_name = d.get("file_name")
        if not file_name:
            raise ValueError(f"record image_id={d.get('image_id', '?')} has no 'file_name'")
        if not PathManager.exists(file_name):
            raise FileNotFoundError(f"image file {file_name!r} (image_id={d.get('image_id', '?')}) does not exist")
        try:
            image = utils.read_image(file_name, format=self.image_format)
        except Exception as e:  # PIL raises several types for broken files
            raise ValueError(f"cannot read image file {file_name!r} (image_id={d.get('image_id', '?')}): {e}") from e
        utils.check_image_size(d, image)
        return image

    # ---------------------------------------------------------------------------------------------------------
    # prompts
    # ---------------------------------------------------------------------------------------------------------
    def _vocabulary_fields(self, name: str, classes: list[str]) -> list[dict]:
        if name not in self._vocab_cache:
            o = self.prompt_options
            prompts = split_vocabulary(
                classes,
                self.tokenizer,
                max_len=self.max_query_len,
                separator=o.get("separator", ". "),
                chunk_size=o.get("chunk_size", 40),
                only_if_needed=o.get("chunk_only_if_needed", True),
            )
            self._vocab_cache[name] = [encode_prompt(p, self.tokenizer, self.max_query_len) for p in prompts]
            if len(prompts) > 1:
                logger.info(f"[GroundingDatasetMapper] {name}: {len(classes)} classes in {len(prompts)} prompts")
        return self._vocab_cache[name]

    def _caption_prompt(self, d: dict, annos: list[dict], by_category: bool):
        """Rows and, per annotation, its row index and own spans, for a captioned record."""
        caption = d["caption"]
        for j, a in enumerate(annos):
            if not a.get("tokens_positive"):
                raise ValueError(f"{_record_name(d)}: annotation #{j} has no 'tokens_positive' span in {caption!r}")
        if by_category:
            spans_of: dict[int, set] = {}
            for a in annos:
                spans_of.setdefault(int(a["category_id"]), set()).update(tuple(s) for s in a["tokens_positive"])
            labels = sorted(spans_of, key=lambda c: min(spans_of[c]))
            rows = [sorted(spans_of[c]) for c in labels]
            row_of = [labels.index(int(a["category_id"])) for a in annos]
        else:
            rows, row_of = grounding_phrases(dict(d, annotations=annos), use_eval=not self.is_train)
            labels = list(range(len(rows)))
            if self.is_train and any(r < 0 for r in row_of):
                raise ValueError(f"{_record_name(d)}: an annotation's span overlaps no phrase of {caption!r}")
        prompt = Prompt(caption, [[tuple(s) for s in r] for r in rows], labels)
        own_spans = [[tuple(s) for s in a["tokens_positive"]] for a in annos]
        return prompt, row_of, own_spans

    def _encode(self, d: dict, prompt: Prompt, extra_rows=None):
        """Prompt fields (and the token maps of ``extra_rows``) from one tokenization; errors name the image."""
        if len(prompt) == 0:
            raise ValueError(f"{_record_name(d)}: the prompt {prompt.caption!r} has no phrase to ground")
        try:
            enc = tokenize_unpadded(self.tokenizer, prompt.caption)
            fields = {
                "caption": prompt.caption,
                "positive_map": create_positive_map(
                    self.tokenizer, prompt.caption, prompt.spans, self.max_query_len, prompt.phrases, encoding=enc
                ),
                "positive_map_labels": torch.as_tensor(prompt.labels, dtype=torch.long),
                "phrases": list(prompt.phrases),
            }
            extra = None
            if extra_rows:
                extra = create_positive_map(
                    self.tokenizer, prompt.caption, extra_rows, self.max_query_len, encoding=enc
                )
        except ValueError as e:
            raise ValueError(f"{_record_name(d)}: {e}") from e
        return fields, extra

    # ---------------------------------------------------------------------------------------------------------
    # annotations
    # ---------------------------------------------------------------------------------------------------------
    def _instances(self, annos: list[dict], transforms, image_shape, classes: list[int], token_maps):
        for a in annos:
            if not self.use_instance_mask:
                a.pop("segmentation", None)
            a.pop("keypoints", None)
            # detectron2 v0.6 transforms coordinates in place in an array of the input dtype: integer boxes or
            # polygons from a json would be truncated to integers by the resize
            a["bbox"] = [float(v) for v in a["bbox"]]
            if isinstance(a.get("segmentation"), list):
                a["segmentation"] = [[float(v) for v in poly] for poly in a["segmentation"]]
        annos = [
            utils.transform_instance_annotations(dict(a, category_id=c), transforms, image_shape)
            for a, c in zip(annos, classes)
        ]
        instances = utils.annotations_to_instances(annos, image_shape, mask_format=self.instance_mask_format)
        instances.gt_positive_map = (
            token_maps if token_maps is not None else torch.zeros((len(annos), self.max_query_len))
        )
        if self.recompute_boxes:
            instances.gt_boxes = instances.gt_masks.get_bounding_boxes()
        return utils.filter_empty_instances(instances)

    def _glipv2_maps(self, kind: str, fields: dict, instances=None) -> dict:
        """GLIPv2's per-sample token maps. Detection: the names of the classes in the image are green and tokens
        carry their row's category id. Grounding: the whole caption is green and no token has a category."""
        length = self.max_query_len
        if kind == "detection":
            present = set(instances.gt_classes.tolist())
            rows = torch.as_tensor([int(c) in present for c in fields["positive_map_labels"].tolist()], dtype=torch.bool)
            greenlight = build_greenlight_map(
                kind, max_len=length, positive_map=fields["positive_map"], positive_rows=rows,
                no_mask=self.no_mask[kind],
            )
            categories = token_category_ids(fields["positive_map"], fields["positive_map_labels"])
        else:
            num_tokens = len(tokenize_unpadded(self.tokenizer, fields["caption"])["input_ids"])
            greenlight = build_greenlight_map(kind, max_len=length, num_tokens=num_tokens, no_mask=self.no_mask[kind])
            categories = torch.full((length,), -1, dtype=torch.long)
        return {"greenlight_map": greenlight, "token_category_ids": categories}

    def __call__(self, dataset_dict: dict) -> dict:
        d = copy.deepcopy(dataset_dict)
        image = self._read_image(d)
        aug_input = T.AugInput(image)
        transforms = self.augmentations(aug_input)
        image = aug_input.image
        image_shape = image.shape[:2]
        d["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))

        name = self._dataset_of(d)
        classes, evaluator_type = self._metadata(name)
        source = self._choose_source(d, classes, evaluator_type, name)
        annos = [a for a in d.pop("annotations", []) if a.get("iscrowd", 0) == 0]
        by_category = bool(classes) and evaluator_type not in ("flickr", "refexp", "mixed") and all(
            "category_id" in a for a in annos
        )

        if not self.is_train:
            if source == "vocabulary":
                prompts = self._vocabulary_fields(name, classes)
                if len(prompts) == 1:
                    d.update(prompts[0])
                else:  # several prompts: the record's own caption, if any, is not what the model reads
                    d.pop("caption", None)
                    d["prompts"] = prompts
            else:
                prompt, _, _ = self._caption_prompt(d, annos, by_category)
                d.update(self._encode(d, prompt)[0])
            return d

        if source == "vocabulary":
            for j, a in enumerate(annos):
                if "category_id" not in a:
                    raise ValueError(f"{_record_name(d)}: annotation #{j} has no 'category_id'")
            instances = self._instances(annos, transforms, image_shape, [int(a["category_id"]) for a in annos], None)
            opts = {k: v for k, v in self.prompt_options.items() if not k.startswith("chunk")}
            prompt = sample_detection_prompt(
                instances.gt_classes.tolist(),
                classes,
                self.tokenizer,
                random if self.rng is None else self.rng,
                max_len=self.max_query_len,
                **opts,
            )
            fields, _ = self._encode(d, prompt)
            row_of_label = {label: k for k, label in enumerate(prompt.labels)}
            keep = torch.as_tensor([int(c) in row_of_label for c in instances.gt_classes.tolist()], dtype=torch.bool)
            instances = instances[keep]
            rows = torch.as_tensor([row_of_label[int(c)] for c in instances.gt_classes.tolist()], dtype=torch.long)
            instances.gt_positive_map = fields["positive_map"][rows]
            if self.glipv2_maps:
                fields.update(self._glipv2_maps("detection", fields, instances=instances))
        else:
            prompt, row_of, own_spans = self._caption_prompt(d, annos, by_category)
            fields, token_maps = self._encode(d, prompt, own_spans)
            labels = [prompt.labels[r] for r in row_of]
            instances = self._instances(annos, transforms, image_shape, labels, token_maps)
            if self.glipv2_maps:
                fields.update(self._glipv2_maps("grounding", fields))
        d.update(fields)
        d["instances"] = instances
        return d
