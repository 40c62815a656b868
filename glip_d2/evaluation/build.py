"""Pick the evaluator of a dataset from its MetadataCatalog ``evaluator_type``."""
from detectron2.data import MetadataCatalog
from detectron2.evaluation import COCOEvaluator, DatasetEvaluator, DatasetEvaluators

from .caption import CaptionEvaluator
from .flickr import FlickrEvaluator
from .lvis_evaluation import LVISEvaluator  # detectron2's, + np.float during evaluate() and Fixed AP
from .name_accuracy import NameAccuracyEvaluator
from .refexp import RefExpEvaluator
from .vqa import VQAEvaluator

__all__ = ["build_evaluator"]


def build_evaluator(cfg, dataset_name: str, output_dir=None) -> DatasetEvaluator:
    """"coco"/"lvis": detectron2's own evaluators (pure-Python COCOeval, plus per-object name accuracy when
    TEST.NAME_ACCURACY; LVIS adds Fixed AP when
    TEST.LVIS_FIXED_AP); "flickr": Recall@k; "refexp": precision@k; "vqa": the official VQA accuracy; "caption": the
    COCO caption metrics (pycocoevalcap; METEOR/SPICE need Java). Boxes come back as ordinary ``pred_classes``, so
    detection AP needs nothing new."""
    evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", None)
    tasks = ("bbox", "segm") if cfg.MODEL.MASK_ON else ("bbox",)
    if evaluator_type == "coco":
        coco = COCOEvaluator(dataset_name, tasks=tasks, output_dir=output_dir, use_fast_impl=False)
        return DatasetEvaluators([coco, NameAccuracyEvaluator(dataset_name)]) if cfg.TEST.NAME_ACCURACY else coco
    if evaluator_type == "lvis":
        topk = cfg.TEST.FIXED_AP_TOPK if cfg.TEST.LVIS_FIXED_AP else 0
        return LVISEvaluator(dataset_name, tasks=tasks, output_dir=output_dir, fixed_ap_topk=topk)
    if evaluator_type == "flickr":
        return FlickrEvaluator(dataset_name, output_dir=output_dir)
    if evaluator_type == "refexp":
        return RefExpEvaluator(dataset_name, output_dir=output_dir)
    if evaluator_type == "vqa":  # official VQA accuracy of GLIPv2VQA's answers (register_vqa sets it)
        return VQAEvaluator(dataset_name, output_dir=output_dir)
    if evaluator_type == "caption":  # BLEU/METEOR/ROUGE-L/CIDEr-D of {"caption"} outputs against the records' captions
        return CaptionEvaluator(dataset_name, output_dir=output_dir)
    raise ValueError(
        f"dataset {dataset_name!r} has evaluator_type {evaluator_type!r}; glip_d2 evaluates 'coco', 'lvis', "
        "'flickr', 'refexp', 'vqa' and 'caption' (set it in MetadataCatalog.get(name).evaluator_type)"
    )
