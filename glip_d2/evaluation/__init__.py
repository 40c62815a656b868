"""Evaluators: detectron2's COCO/LVIS ones for detection, plus phrase grounding (Flickr30k) and RefCOCO."""
from .build import build_evaluator
from .flickr import FlickrEvaluator, flickr_recall
from .lvis_evaluation import LVISEvaluator
from .refexp import RefExpEvaluator, refexp_precision

__all__ = ["FlickrEvaluator", "LVISEvaluator", "RefExpEvaluator", "build_evaluator", "flickr_recall", "refexp_precision"]
