"""Flickr30k Recall@k, RefCOCO precision@k and build_evaluator, on hand-made fixtures with hand-computed values."""
import json
import uuid

import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances
from detectron2.evaluation import COCOEvaluator, LVISEvaluator
from detectron2.structures import Boxes, BoxMode, Instances

from glip_d2.evaluation import FlickrEvaluator, RefExpEvaluator, build_evaluator
from glip_d2.evaluation.grounding_utils import overlap


def _register(records, **meta):
    name = f"eval_{uuid.uuid4().hex[:8]}"
    DatasetCatalog.register(name, lambda: records)
    MetadataCatalog.get(name).set(**meta)
    return name


def _output(boxes, scores, classes):
    inst = Instances((200, 200))
    inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    inst.scores = torch.tensor(scores, dtype=torch.float32)
    inst.pred_classes = torch.tensor(classes, dtype=torch.long)
    return {"instances": inst}


def _ann(xywh, spans):
    return {"bbox": xywh, "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0, "tokens_positive": spans}


FLICKR_RECORDS = [
    {   # ground truth from the annotations: phrase 0 "a man", phrase 1 "two dogs" (two boxes)
        "image_id": 1, "caption": "a man and two dogs",
        "annotations": [_ann([0, 0, 10, 10], [[0, 5]]), _ann([20, 0, 10, 10], [[10, 18]]),
                        _ann([40, 0, 10, 10], [[10, 18]])],
    },
    {   # ground truth as stored by the MDETR loader; phrase 1 has no box and is not evaluated
        "image_id": 2, "caption": "x", "annotations": [],
        "phrase_boxes_eval": [[[0, 0, 10, 10]], [], [[0, 0, 10, 10], [30, 30, 40, 40]]],
    },
]


@pytest.fixture(scope="module")
def flickr_predictions():
    inputs = [{"image_id": 2}, {"image_id": 1}]
    outputs = [
        # image 2: nothing for phrase 0; phrase 2: second GT box first, then the merged box; phrase 1 ignored
        _output([[0, 0, 40, 40], [30, 30, 40, 40], [0, 0, 5, 5]], [0.4, 0.5, 0.9], [2, 2, 1]),
        # image 1: phrase 0 right at rank 1; phrase 1 right (one dog) only at rank 3, listed out of score order
        _output([[40, 0, 50, 10], [0, 0, 10, 10], [100, 100, 110, 110], [60, 60, 70, 70]],
                [0.6, 0.9, 0.8, 0.7], [1, 0, 1, 1]),
    ]
    return inputs, outputs


def test_flickr_any_box_and_merged_recall(flickr_predictions):
    name = _register(FLICKR_RECORDS, evaluator_type="flickr")
    ev = FlickrEvaluator(name)
    ev.reset()
    ev.process(*flickr_predictions)
    r = ev.evaluate()["flickr"]
    # 4 evaluated phrases. any-box: hits @1 = {img1 p0, img2 p2}; @5/@10 add img1 p1 (rank 3); img2 p0 never.
    assert r["R@1"] == pytest.approx(50.0) and r["R@5"] == pytest.approx(75.0) and r["R@10"] == pytest.approx(75.0)
    assert r["upper_bound"] == pytest.approx(75.0)
    # merged: img1 p1 union [20,0,50,10] vs [40,0,50,10] IoU 1/3 (miss); img2 p2 union [0,0,40,40] hit at rank 2
    assert r["merged_R@1"] == pytest.approx(25.0) and r["merged_R@5"] == pytest.approx(50.0)
    assert r["merged_R@10"] == pytest.approx(50.0)


def test_flickr_missing_or_unknown_predictions_raise(flickr_predictions):
    name = _register(FLICKR_RECORDS, evaluator_type="flickr")
    ev = FlickrEvaluator(name)
    ev.process(flickr_predictions[0][:1], flickr_predictions[1][:1])
    with pytest.raises(RuntimeError, match=r"no prediction for 1 record.*image_id \[1\]"):
        ev.evaluate()
    ev.reset()
    ev.process([{"image_id": 99}], [_output([], [], [])])
    with pytest.raises(RuntimeError, match=r"image_id\(s\) \[99\] not in dataset"):
        ev.evaluate()


def test_iou_and_giou_values():
    gt = [[0, 0, 10, 10]]
    assert overlap([[1.8, 1.8, 11.8, 11.8]], gt)[0, 0] == pytest.approx(67.24 / 132.76)
    assert overlap([[1.8, 1.8, 11.8, 11.8]], gt, "giou")[0, 0] == pytest.approx(67.24 / 132.76 - 6.48 / 139.24)
    assert overlap([[0, 0, 0, 0]], gt)[0, 0] == 0.0


REFEXP_RECORDS = [
    {"image_id": 1, "dataset_name": "refcoco", "boxes_eval": [[0, 0, 10, 10]], "annotations": []},
    {"image_id": 2, "dataset_name": "refcoco", "annotations": [_ann([0, 0, 10, 10], [[0, 3]])]},
    {"image_id": 3, "dataset_name": "refcoco+", "boxes_eval": [[0, 0, 10, 10]], "annotations": []},
    {"image_id": 4, "dataset_name": "refcoco+", "boxes_eval": [[0, 0, 10, 10]], "annotations": []},
]


def _refexp_outputs():
    inputs = [{"image_id": i} for i in (1, 2, 3, 4)]
    outputs = [
        _output([[0, 0, 10, 10]], [0.9], [0]),  # exact
        _output([[1.8, 1.8, 11.8, 11.8], [50, 50, 60, 60]], [0.8, 0.9], [0, 0]),  # IoU .507 at rank 2
        _output([[1.8, 1.8, 11.8, 11.8]], [0.9], [0]),  # IoU .507 / GIoU .460 at rank 1
        _output([], [], []),  # nothing
    ]
    return inputs, outputs


@pytest.mark.parametrize(
    "kind,expected",
    [
        ("iou", {"P@1": 50.0, "P@5": 75.0, "P@10": 75.0, "accuracy": 50.0, "refcoco/P@1": 50.0,
                 "refcoco/P@5": 100.0, "refcoco+/P@1": 50.0, "refcoco+/P@5": 50.0}),
        ("giou", {"P@1": 25.0, "P@5": 25.0, "accuracy": 25.0, "refcoco+/P@1": 0.0}),
    ],
)
def test_refexp_precision(kind, expected):
    name = _register(REFEXP_RECORDS, evaluator_type="refexp")
    ev = RefExpEvaluator(name, overlap_kind=kind)
    ev.process(*_refexp_outputs())
    r = ev.evaluate()["refexp"]
    for key, value in expected.items():
        assert r[key] == pytest.approx(value), key


def test_refexp_needs_exactly_one_box():
    records = [{"image_id": 1, "boxes_eval": [[0, 0, 1, 1], [2, 2, 3, 3]], "annotations": []}]
    ev = RefExpEvaluator(_register(records, evaluator_type="refexp"))
    ev.process([{"image_id": 1}], [_output([], [], [])])
    with pytest.raises(ValueError, match="image_id=1 has 2 ground-truth boxes"):
        ev.evaluate()


@pytest.fixture(scope="module")
def cfg():
    from detectron2.config import get_cfg

    from glip_d2 import add_glip_config

    return add_glip_config(get_cfg())


def _tiny_json(path, lvis=False):
    images = [{"id": 1, "file_name": "a.png", "height": 100, "width": 100}]
    cats = [{"id": 1, "name": "cat"}, {"id": 3, "name": "dog"}]
    anns = [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [10.0, 10.0, 30.0, 40.0], "area": 1200.0,
             "iscrowd": 0}]
    if lvis:
        for c in cats:
            c.update(synonyms=[c["name"]], frequency="f", image_count=1, instance_count=1)
        images[0].update(neg_category_ids=[], not_exhaustive_category_ids=[])
        anns[0].pop("iscrowd")
        anns[0]["segmentation"] = [[10.0, 10.0, 40.0, 10.0, 40.0, 50.0, 10.0, 50.0]]
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return str(path)


def test_build_evaluator_picks_by_evaluator_type(cfg, tmp_path):
    coco = f"coco_{uuid.uuid4().hex[:8]}"
    register_coco_instances(coco, {}, _tiny_json(tmp_path / "coco.json"), str(tmp_path))
    ev = build_evaluator(cfg, coco, str(tmp_path / "out"))
    assert isinstance(ev, COCOEvaluator) and ev._use_fast_impl is False and ev._tasks == ("bbox",)
    lvis = _register([], evaluator_type="lvis", json_file=_tiny_json(tmp_path / "lvis.json", lvis=True))
    assert isinstance(build_evaluator(cfg, lvis), LVISEvaluator)
    assert isinstance(build_evaluator(cfg, _register([], evaluator_type="flickr")), FlickrEvaluator)
    assert isinstance(build_evaluator(cfg, _register([], evaluator_type="refexp")), RefExpEvaluator)
    odd = _register([], evaluator_type="sem_seg")
    with pytest.raises(ValueError, match=f"{odd}.*'sem_seg'"):
        build_evaluator(cfg, odd)

    # detection predictions come back as ordinary contiguous pred_classes: a perfect one scores AP 100
    DatasetCatalog.get(coco)
    ev.reset()
    ev.process([{"image_id": 1}], [_output([[10, 10, 40, 50]], [0.9], [1])])
    assert ev.evaluate()["bbox"]["AP"] == pytest.approx(100.0)
