"""Language-encoder registry: MODEL.LANGUAGE.ENCODER names a class built with ``cfg``."""
from detectron2.utils.registry import Registry

__all__ = ["LANGUAGE_ENCODER_REGISTRY", "build_language_encoder"]

LANGUAGE_ENCODER_REGISTRY = Registry("LANGUAGE_ENCODER")
LANGUAGE_ENCODER_REGISTRY.__doc__ = """
Text encoders, selected by MODEL.LANGUAGE.ENCODER and called with ``cfg``. An encoder provides
``tokenize(captions) -> {"input_ids", "attention_mask"}`` and ``forward(input_ids, attention_mask) ->
{"hidden", "embedded", "masks"}`` (docs/architecture.md, interfaces).
"""


def build_language_encoder(cfg):
    """Instantiate MODEL.LANGUAGE.ENCODER from LANGUAGE_ENCODER_REGISTRY."""
    name = cfg.MODEL.LANGUAGE.ENCODER
    try:
        cls = LANGUAGE_ENCODER_REGISTRY.get(name)
    except KeyError as e:
        raise KeyError(
            f"MODEL.LANGUAGE.ENCODER '{name}' is not registered; known: {sorted(k for k, _ in LANGUAGE_ENCODER_REGISTRY)}"
        ) from e
    return cls(cfg)
