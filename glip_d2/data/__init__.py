"""Grounding data: prompts, token positive maps, GLIP's augmentations, the dataset mapper, dataset registration."""
from . import datasets  # noqa: F401  (registers the builtin datasets)
from .mapper import GroundingDatasetMapper
from .phrase_extraction import extract_noun_phrases
from .prompts import (
    Prompt,
    build_caption,
    clean_name,
    demo_prompt,
    free_text_prompt,
    grounding_phrases,
    sample_detection_prompt,
    split_vocabulary,
    vocabulary_prompt,
)
from .tokens import create_positive_map, encode_prompt
from .transforms import GLIPRandomFlip, GLIPResizeShortestEdge, build_glip_augmentation

__all__ = [
    "GLIPRandomFlip",
    "GLIPResizeShortestEdge",
    "GroundingDatasetMapper",
    "Prompt",
    "build_caption",
    "build_glip_augmentation",
    "clean_name",
    "create_positive_map",
    "demo_prompt",
    "encode_prompt",
    "extract_noun_phrases",
    "free_text_prompt",
    "grounding_phrases",
    "sample_detection_prompt",
    "split_vocabulary",
    "vocabulary_prompt",
]
