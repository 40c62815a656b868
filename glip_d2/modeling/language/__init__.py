"""Text encoders (LANGUAGE_ENCODER_REGISTRY) and the tokenizer. Importing registers ``HFBertEncoder``."""
from .build import (
    EMBEDDED_MINILM,
    LANGUAGE_ENCODER_REGISTRY,
    build_language_encoder,
    build_tokenizer,
    resolve_language_model_name,
    tokenize_captions,
)
from .hf_bert import HFBertEncoder, rename_official_language_key

__all__ = [
    "EMBEDDED_MINILM",
    "LANGUAGE_ENCODER_REGISTRY",
    "HFBertEncoder",
    "build_language_encoder",
    "build_tokenizer",
    "rename_official_language_key",
    "resolve_language_model_name",
    "tokenize_captions",
]
