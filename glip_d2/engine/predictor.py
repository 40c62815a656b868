"""``GLIPPredictor``: one image (or a batch) + a text prompt -> ``Instances`` with ``pred_phrases``.

Prompt forms (see :meth:`GLIPPredictor.encode_prompt`):
* a list of names ``["person", "dog"]`` -> one row per name, labels 0..K-1 in list order, official demo caption
  (``INPUT.PROMPT.DEMO_SEPARATOR`` " . " after every name, official detail 18); a list too long for one prompt is split into
  as few prompts as hold it and the model merges their detections;
* a "."-separated string ``"person. dog. cat"`` whose pieces are all short (≤ 4 words): the same rows, the caption
  kept exactly as written;
* any other string is free text: ``phrases=[...]`` names the entities to ground (first whole-word match each);
  without them, noun phrases are found offline (:func:`glip_d2.data.phrase_extraction.extract_noun_phrases`, a stand-in
  for the official NLTK chunker). Free text longer than the token limit cannot be chunked: a ``ValueError``
  says so;
* a :class:`~glip_d2.data.prompts.Prompt` (caption, char spans and labels already decided, e.g. by the
  self-training teacher) is used as it is.

An encoded prompt (tokenization + positive maps) is cached by its text, so a repeated prompt is not re-encoded;
the text encoder itself still runs per image, because fusion updates the text features with each image.

Tuned tasks (prompt tuning, linear probing; :mod:`.task_bank`): ``MODEL.WEIGHTS`` may be a task file (its base is
loaded under it), and ``add_task(path)`` loads more task files over the same base; ``predictor(image, task=name)``
runs a task with the vocabulary it was tuned for, built exactly as in training and evaluation (a prompt-tuned
offset belongs to token positions, so the prompt must be the same), or with any other prompt given.

Images are OpenCV-style HxWxC arrays in ``INPUT.FORMAT`` order (BGR by default). Accepted and converted:
grayscale (HxW or HxWx1, replicated to 3 channels), 4-channel (the alpha channel is dropped, not composited),
uint16 (scaled to 0..255 by /257). Refused with a clear error: non-arrays, empty images (0 pixels), other channel
counts, float/bool/signed arrays (their value range is ambiguous).
"""
import logging
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import torch
from detectron2.data import transforms as T
from detectron2.structures import Instances

from ..checkpoint.checkpointer import resolve_weights_path
from ..checkpoint.task_file import peek_task_info
from ..data.prompts import Prompt, demo_prompt, free_text_prompt, split_vocabulary
from ..data.tokens import encode_prompt
from ..data.transforms import build_glip_augmentation
from ..structures import PhraseList
from .task_bank import TaskBank

__all__ = ["GLIPPredictor", "PromptType", "parse_prompt", "to_uint8_image"]

logger = logging.getLogger(__name__)

PromptType = str | Sequence[str] | Prompt

#: A "."-separated string is read as a list of names when every piece has at most this many words.
MAX_WORDS_PER_NAME = 4
_CACHE_SIZE = 64


def to_uint8_image(image: np.ndarray, what: str = "image") -> np.ndarray:
    """An HxWx3 uint8 array from the accepted inputs (see module docstring), else a ``TypeError``/``ValueError``."""
    if isinstance(image, torch.Tensor):
        raise TypeError(f"{what}: expected a numpy array (HxWxC, as cv2.imread returns), got a torch.Tensor")
    if not isinstance(image, np.ndarray):
        raise TypeError(f"{what}: expected a numpy array (HxWxC, as cv2.imread returns), got {type(image).__name__}")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3:
        raise ValueError(f"{what}: expected an HxW or HxWxC array, got shape {image.shape}")
    h, w, c = image.shape
    if h == 0 or w == 0:
        raise ValueError(f"{what} is empty: shape {image.shape} has 0 pixels")
    if c not in (1, 3, 4):
        raise ValueError(f"{what}: expected 1 (gray), 3 (color) or 4 (with alpha) channels, got {c}")
    if image.dtype == np.uint16:
        image = np.round(image.astype(np.float32) / 257.0).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise TypeError(
            f"{what}: expected uint8 (or uint16) pixel values, got {image.dtype}; convert float images with "
            "(img * 255).clip(0, 255).astype(np.uint8) if they are in [0, 1]"
        )
    if c == 1:
        image = np.repeat(image, 3, axis=2)
    elif c == 4:
        image = image[:, :, :3]
    return np.ascontiguousarray(image)


def _dotted_names(text: str) -> list[str] | None:
    """The names of a "."-separated list ("person. dog. cat", "person . dog ."), or None for other text."""
    if "." not in text:
        return None
    pieces = [p.strip() for p in text.split(".")]
    if pieces and pieces[-1] == "":
        pieces = pieces[:-1]
    if not pieces or any(not p or len(p.split()) > MAX_WORDS_PER_NAME for p in pieces):
        return None
    return pieces


def parse_prompt(prompt: PromptType, phrases: Sequence[str] | None = None):
    """The prompt's form and its :class:`~glip_d2.data.prompts.Prompt` (or, for a name list, the names).

    Returns ``("names", names)`` or ``("prompt", Prompt)``. Raises ``ValueError`` for an empty prompt and for a
    name given twice (each name is one label: two rows for one name would report the same box twice), and
    ``TypeError`` for ``phrases`` that is not a list of str (a plain str would be read letter by letter).
    """
    if phrases is not None and (
        isinstance(phrases, str) or not isinstance(phrases, (list, tuple)) or not all(isinstance(p, str) for p in phrases)
    ):
        raise TypeError(f"phrases must be a list of str, e.g. ['red circle'], got {type(phrases).__name__} {phrases!r}")
    if isinstance(prompt, Prompt):
        if phrases is not None:
            raise ValueError("phrases= is for free-text prompts; a Prompt already has its rows")
        return "prompt", prompt
    if isinstance(prompt, (list, tuple)):
        if phrases is not None:
            raise ValueError("phrases= is for free-text prompts; a list prompt already lists its phrases")
        names = list(prompt)
        if not names:
            raise ValueError("the prompt is an empty list: give at least one name to detect")
        for i, n in enumerate(names):
            if not isinstance(n, str):
                raise TypeError(f"prompt name #{i} is {type(n).__name__} {n!r}, expected str")
            if not n.strip():
                raise ValueError(f"prompt name #{i} is empty ({n!r})")
        names = [n.strip() for n in names]
        _check_unique(names)
        return "names", names
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a str or a list of str, got {type(prompt).__name__}")
    if not prompt.strip():
        raise ValueError("the prompt is empty: give names (a list or 'a. b. c') or a sentence to ground")
    if phrases is not None:
        return "prompt", free_text_prompt(prompt, phrases=list(phrases))
    names = _dotted_names(prompt)
    if names is not None:
        _check_unique(names)
        spans, pos = [], 0
        for name in names:
            start = prompt.index(name, pos)
            spans.append([(start, start + len(name))])
            pos = start + len(name)
        return "prompt", free_text_prompt(prompt, spans=spans)
    return "prompt", free_text_prompt(prompt)


def _check_unique(names: Sequence[str]) -> None:
    seen = {}
    for i, name in enumerate(names):
        key = name.lower()
        if key in seen:
            raise ValueError(f"prompt name {name!r} is given twice (#{seen[key]} and #{i}): give each name once")
        seen[key] = i


def warn_unknown_phrases(tokenizer, phrases: Sequence[str]) -> list[str]:
    """Phrases the vocabulary only knows as [UNK] (emoji, scripts it lacks): their rows cannot be told apart, so
    the user hears about it instead of getting arbitrary labels. Returns them."""
    unknown = []
    for phrase in phrases:
        ids = tokenizer(phrase, add_special_tokens=False)["input_ids"]
        if ids and all(i == tokenizer.unk_token_id for i in ids):
            unknown.append(phrase)
    if unknown:
        logger.warning("the text encoder's vocabulary knows none of the words of %s ([UNK] only): their scores "
                       "cannot distinguish them from each other", ", ".join(repr(p) for p in unknown))
    return unknown


class GLIPPredictor:
    """Builds the model of ``cfg``, loads ``cfg.MODEL.WEIGHTS`` (path, official file or ``glip_d2://`` zoo name) and
    runs it on images with text prompts.

    ``predictor(image, prompt, phrases=None)`` -> ``Instances`` (boxes in original image coordinates, ``scores``,
    ``pred_classes`` = row label, ``pred_phrases``); ``predictor.predict_batch(images, prompts)`` runs several
    images, each with its own prompt, in one forward pass. Like detectron2's ``DefaultPredictor`` no score
    threshold is applied beyond the model's own (``MODEL.ATSS.INFERENCE_TH``).
    """

    def __init__(self, cfg, model: torch.nn.Module | None = None):
        self.cfg = cfg.clone()
        task_file, base_path = "", ""
        if model is None:
            from .trainer import GLIPTrainer

            if not cfg.MODEL.WEIGHTS:
                logger.warning("MODEL.WEIGHTS is empty: the predictor runs a randomly initialised model.")
            base_cfg, task_file, base_path = _base_and_task(self.cfg)
            # same loading as --eval-only: official/zoo weights converted, EMA weights when SOLVER.EMA_EVAL
            model = GLIPTrainer.build_model_for_eval(base_cfg)
        self.model = model.eval()
        self.tasks = TaskBank(self.model, base_path)
        if task_file:
            self.set_task(self.add_task(task_file))
        self.tokenizer = self.model.language_encoder.tokenizer
        self.max_len = int(cfg.MODEL.LANGUAGE.MAX_QUERY_LEN)
        self.aug = T.AugmentationList(build_glip_augmentation(cfg, is_train=False))
        self.input_format = cfg.INPUT.FORMAT
        if self.input_format not in ("BGR", "RGB"):
            raise ValueError(f"INPUT.FORMAT must be 'BGR' or 'RGB' for the predictor, got {self.input_format!r}")
        self._cache: dict[tuple, list[dict]] = OrderedDict()
        self.cache_hits = 0

    # ------------------------------------------------------------------------------------------------ tasks
    def add_task(self, path: str, name: str | None = None) -> str:
        """Load a task file over this predictor's base model; returns its name (for ``task=`` / ``set_task``)."""
        return self.tasks.add(path, name)

    def set_task(self, name: str | None) -> None:
        """Run task ``name`` from now on (None: the base model)."""
        self.tasks.activate(name)

    def task_prompt(self, name: str) -> list[dict]:
        """The prompt(s) task ``name`` was tuned with: its vocabulary joined by its separator, chunked as the
        evaluation chunks it."""
        info = self.tasks.info(name)
        if not info.thing_classes:
            raise ValueError(f"task {name!r} records no vocabulary: give a prompt")
        p = self.cfg.INPUT.PROMPT
        chunks = split_vocabulary(
            info.thing_classes, self.tokenizer, max_len=self.max_len, separator=info.separator,
            chunk_size=p.CHUNK_SIZE, only_if_needed=p.CHUNK_ONLY_IF_NEEDED,
        )
        return [encode_prompt(c, self.tokenizer, self.max_len) for c in chunks]

    # ------------------------------------------------------------------------------------------------ prompts
    def encode_prompt(self, prompt: PromptType, phrases: Sequence[str] | None = None) -> list[dict]:
        """The model's prompt fields (caption, positive_map, positive_map_labels, phrases), one dict per chunk.

        Cached by (prompt, phrases): a repeated prompt costs no tokenization.
        """
        if isinstance(prompt, Prompt):
            text = (prompt.caption, tuple(tuple(map(tuple, row)) for row in prompt.spans), tuple(prompt.labels),
                    tuple(prompt.phrases))
        else:
            text = tuple(prompt) if isinstance(prompt, (list, tuple)) else prompt
        key = (text, type(prompt).__name__, None if phrases is None else tuple(phrases))
        try:
            hit = self._cache.get(key)
        except TypeError:  # unhashable pieces: let parse_prompt name the problem
            hit = None
        if hit is not None:
            self._cache.move_to_end(key)
            self.cache_hits += 1
            return hit
        kind, parsed = parse_prompt(prompt, phrases)
        if kind == "names":
            encoded = self._encode_names(parsed)
        else:
            encoded = [encode_prompt(parsed, self.tokenizer, self.max_len)]
        warn_unknown_phrases(self.tokenizer, [p for chunk in encoded for p in chunk.get("phrases", [])])
        self._cache[key] = encoded
        if len(self._cache) > _CACHE_SIZE:
            self._cache.popitem(last=False)
        return encoded

    def _encode_names(self, names: list[str]) -> list[dict]:
        p = self.cfg.INPUT.PROMPT
        single = demo_prompt(names, separator=p.DEMO_SEPARATOR)
        n_tokens = len(self.tokenizer(single.caption, padding=False, truncation=False)["input_ids"])
        if n_tokens <= self.max_len:
            return [encode_prompt(single, self.tokenizer, self.max_len)]
        # Too long for one prompt: consecutive names packed into as few prompts as fit (evaluation separator,
        # as the chunked LVIS protocol); the model merges their detections.
        chunks = split_vocabulary(
            names, self.tokenizer, max_len=self.max_len, separator=p.SEPARATOR, chunk_size=0, only_if_needed=True
        )
        logger.info("%d names need %d tokens: split into %d prompts.", len(names), n_tokens, len(chunks))
        return [encode_prompt(c, self.tokenizer, self.max_len) for c in chunks]

    # ------------------------------------------------------------------------------------------------ images
    def _model_input(self, image: np.ndarray, encoded: list[dict], what: str) -> dict:
        image = to_uint8_image(image, what)
        if self.input_format == "RGB":  # the array arrives as BGR (OpenCV); the model wants RGB
            image = image[:, :, ::-1]
        height, width = image.shape[:2]
        aug_input = T.AugInput(image)
        self.aug(aug_input)
        tensor = torch.as_tensor(np.ascontiguousarray(aug_input.image.transpose(2, 0, 1)).astype("float32"))
        inputs = {"image": tensor, "height": height, "width": width}
        if len(encoded) == 1:
            inputs.update(encoded[0])
        else:
            inputs["prompts"] = encoded
        return inputs

    @staticmethod
    def _with_phrases(instances: Instances, encoded: list[dict]) -> Instances:
        if instances.has("pred_phrases"):
            return instances
        label_to_phrase = {}
        for e in encoded:
            for label, phrase in zip(e["positive_map_labels"].tolist(), e["phrases"]):
                label_to_phrase.setdefault(int(label), phrase)
        instances.pred_phrases = PhraseList(label_to_phrase.get(int(c), "") for c in instances.pred_classes.tolist())
        return instances

    @torch.no_grad()
    def __call__(
        self, image: np.ndarray, prompt: PromptType | None = None, phrases: Sequence[str] | None = None,
        task: str | None = None,
    ) -> Instances:
        """Detections for one image. ``task``: switch to that loaded task first; with no ``prompt`` the active
        task's own vocabulary is the prompt."""
        if task is not None:
            self.set_task(task)
        if prompt is None:
            if self.tasks.active is None:
                raise ValueError("no prompt given and no task active: give a prompt (names or a sentence) or task=")
            encoded = self.task_prompt(self.tasks.active)
            out = self.model([self._model_input(image, encoded, "image")])[0]["instances"].to("cpu")
            return self._with_phrases(out, encoded)
        return self.predict_batch([image], [prompt], None if phrases is None else [phrases])[0]

    @torch.no_grad()
    def predict_batch(
        self,
        images: Sequence[np.ndarray],
        prompts: PromptType | Sequence[PromptType],
        phrases: Sequence[Sequence[str] | None] | None = None,
    ) -> list[Instances]:
        """Detections for several images in one forward pass; ``prompts`` is one prompt per image, or a single
        string used for all. (Images are padded to a common size, which changes scores slightly, P20.)"""
        if isinstance(images, np.ndarray):
            images = [images]
        images = list(images)
        if not images:
            raise ValueError("predict_batch: no images given")
        if isinstance(prompts, str):
            prompts = [prompts] * len(images)
        prompts = list(prompts)
        if len(prompts) != len(images):
            raise ValueError(f"predict_batch: {len(images)} images but {len(prompts)} prompts (one per image)")
        phrases = [None] * len(images) if phrases is None else list(phrases)
        if len(phrases) != len(images):
            raise ValueError(f"predict_batch: {len(images)} images but {len(phrases)} phrase lists")
        encoded = [self.encode_prompt(p, ph) for p, ph in zip(prompts, phrases)]
        inputs = [
            self._model_input(img, enc, f"image #{i}" if len(images) > 1 else "image")
            for i, (img, enc) in enumerate(zip(images, encoded))
        ]
        outputs = self.model(inputs)
        return [self._with_phrases(o["instances"].to("cpu"), enc) for o, enc in zip(outputs, encoded)]

    def answer(self, image: np.ndarray, question: str, topk: int = 5, *, boxes: bool = False, phrases=None):
        """A GLIPv2VQA model's top-``topk`` ``[(answer, score)]`` for ``question`` about ``image``; with
        ``boxes=True`` also the boxes of the question's phrases: ``(answers, Instances)``. See
        :mod:`glip_d2.engine.vqa_predictor`."""
        from .vqa_predictor import answer_question

        return answer_question(self, image, question, topk, boxes=boxes, phrases=phrases)

    def caption(self, image: np.ndarray, *, beam_size: int | None = None, max_length: int | None = None,
                length_penalty: float | None = None, ground: bool = False):
        """A GLIPv2Caption model's ``(caption, score)`` for ``image``; with ``ground=True`` also the boxes of the
        caption's noun phrases: ``(caption, score, Instances)``. See :mod:`glip_d2.engine.caption_predictor`."""
        from .caption_predictor import caption_image

        return caption_image(self, image, beam_size=beam_size, max_length=max_length,
                             length_penalty=length_penalty, ground=ground)


def _base_and_task(cfg):
    """(config whose MODEL.WEIGHTS is the base, task file or "", base weights file or "") for a predictor:
    a task file in MODEL.WEIGHTS is loaded over its base by the task bank."""
    if not cfg.MODEL.WEIGHTS:
        return cfg, "", ""
    path = resolve_weights_path(cfg.MODEL.WEIGHTS)
    info = peek_task_info(path)
    if info is None:
        return cfg, "", path
    base = cfg.MODEL.TASK_BASE_WEIGHTS or info.base_weights
    base_cfg = cfg.clone()
    base_cfg.defrost()
    base_cfg.MODEL.WEIGHTS = base
    base_cfg.SOLVER.TUNING_MODE = ""  # the task bank adds what the task needs (e.g. a prompt offset)
    return base_cfg, path, resolve_weights_path(base) if base else ""
