"""Evaluators: detectron2's COCO/LVIS ones for detection, plus phrase grounding (Flickr30k), RefCOCO and COCO-style
image captioning."""
from .build import build_evaluator
from .caption import CaptionEvaluator
from .caption_metrics import score_captions
from .flickr import FlickrEvaluator, flickr_recall
from .lvis_evaluation import LVISEvaluator
from .name_accuracy import NameAccuracyEvaluator, best_name_per_object
from .refexp import RefExpEvaluator, refexp_precision

__all__ = [
    "CaptionEvaluator",
    "FlickrEvaluator",
    "LVISEvaluator",
    "NameAccuracyEvaluator",
    "RefExpEvaluator",
    "best_name_per_object",
    "build_evaluator",
    "flickr_recall",
    "refexp_precision",
    "score_captions",
]
