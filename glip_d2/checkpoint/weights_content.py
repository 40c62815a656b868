"""What a weights file provides, read from its keys, and the config decision that follows: no pretrained text-model
download when ``MODEL.WEIGHTS`` will overwrite the text encoder anyway.

detectron2 builds the model, then loads ``MODEL.WEIGHTS`` into it. A language encoder built with
``MODEL.LANGUAGE.PRETRAINED`` fetches its pretrained weights first (bert-base-uncased: 440 MB from the Hugging Face
hub), which fails offline, although an official GLIP file (``language_backbone.body.model.*``), a ``glip_d2://`` zoo
file or a glip_d2 checkpoint of a full model (``language_encoder.model.*``) holds every text-encoder weight.
:func:`resolve_text_pretrained` looks at the file's keys (safely, tensors memory-mapped, not read) and, when it
holds the whole text model, returns a config clone that builds the encoder from its architecture only; the
checkpointer then fills it in. The meta-architecture never knows.
"""
import logging
from collections.abc import Iterable, Mapping

from .checkpointer import resolve_weights_path
from .safe_load import load_checkpoint_file

__all__ = ["checkpoint_text_encoder_keys", "checkpoint_provides_text_encoder", "resolve_text_pretrained"]

logger = logging.getLogger(__name__)

#: Where the text model's tensors live: official GLIP names, glip_d2 names.
_TEXT_MODEL_PREFIXES = ("language_backbone.body.model.", "language_encoder.model.")


def _model_weights(checkpoint) -> Mapping:
    """The state dict of a loaded checkpoint: its ``model`` entry, or the checkpoint itself when bare."""
    if not isinstance(checkpoint, Mapping):
        return {}
    weights = checkpoint.get("model", checkpoint)
    return weights if isinstance(weights, Mapping) else {}


def checkpoint_text_encoder_keys(path: str) -> set[str]:
    """Names of the text-model tensors a checkpoint file holds, relative to the text model
    (``embeddings.word_embeddings.weight``, ``encoder.layer.0...``), for official and glip_d2 files alike.

    Reads the file with :func:`~glip_d2.checkpoint.safe_load.load_checkpoint_file` (weights only), memory-mapped:
    only the keys are looked at, so even a multi-GB file costs a fraction of a second.
    """
    keys = set()
    for key in _model_weights(load_checkpoint_file(path, mmap=True)):
        key = str(key).removeprefix("module.")
        for prefix in _TEXT_MODEL_PREFIXES:
            if key.startswith(prefix):
                keys.add(key[len(prefix):])
    return keys


def checkpoint_provides_text_encoder(path: str, expected: Iterable[str] | None = None) -> bool:
    """Whether the checkpoint file at ``path`` holds the whole text encoder, judged by its keys (not its name).

    ``expected``: the text model's parameter names (relative to the text model); every one must be in the file.
    Without it, the word embeddings and encoder layers must be there.
    """
    keys = checkpoint_text_encoder_keys(path)
    if expected is not None:
        expected = set(expected)
        return bool(expected) and expected <= keys
    return "embeddings.word_embeddings.weight" in keys and any(k.startswith("encoder.layer.") for k in keys)


def _expected_text_parameters(cfg) -> set[str] | None:
    """Parameter names of the text model ``cfg`` builds, or None when they cannot be known without building it."""
    if cfg.MODEL.LANGUAGE.get("ENCODER", "HFBertEncoder") != "HFBertEncoder":
        return None
    from ..modeling.language.hf_bert import text_model_parameter_names

    try:
        return set(text_model_parameter_names(cfg.MODEL.LANGUAGE.MODEL_NAME))
    except (OSError, ValueError):  # config of an uncached hub model; building the encoder reports it
        return None


def resolve_text_pretrained(cfg, weights: str | None = None):
    """``cfg``, or a clone with ``MODEL.LANGUAGE.PRETRAINED = False`` when the weights the model will load hold the
    whole text encoder, so pretrained text weights are only fetched when they will not be overwritten.

    ``weights`` defaults to ``cfg.MODEL.WEIGHTS`` (a path, an official file, a ``glip_d2://`` zoo name, another
    URL; resolved to a local file as the checkpointer will). A frozen ``cfg`` gives a frozen clone; ``cfg`` itself is
    never changed. One log line says which happened. Raises the checkpointer's errors early (a zoo file that is not
    available offline, a missing, unsafe or unreadable file), before the model is built.
    """
    lang = cfg.MODEL.get("LANGUAGE")
    if lang is None or not lang.get("PRETRAINED", False):
        return cfg
    weights = cfg.MODEL.WEIGHTS if weights is None else weights
    name = lang.MODEL_NAME
    if weights:
        from detectron2.utils.file_io import PathManager

        path = resolve_weights_path(weights, PathManager)
        if checkpoint_provides_text_encoder(path, _expected_text_parameters(cfg)):
            logger.info("text encoder weights come from %s: not downloading %s", path, name)
            frozen = cfg.is_frozen()
            cfg = cfg.clone()
            cfg.defrost()
            cfg.MODEL.LANGUAGE.PRETRAINED = False
            if frozen:
                cfg.freeze()
            return cfg
        logger.info("loading pretrained %s (%s has no complete text-encoder weights)", name, path)
    else:
        logger.info("loading pretrained %s", name)
    return cfg
