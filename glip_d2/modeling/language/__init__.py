"""Text encoders (LANGUAGE_ENCODER_REGISTRY). Importing registers ``HFBertEncoder``; the tokenizer is in
``glip_d2.tokenization``."""
from .build import LANGUAGE_ENCODER_REGISTRY, build_language_encoder
from .hf_bert import HFBertEncoder

__all__ = ["LANGUAGE_ENCODER_REGISTRY", "HFBertEncoder", "build_language_encoder"]
