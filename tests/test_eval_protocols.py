"""The papers' evaluation protocols: LVIS chunk merging, Fixed AP, multi-scale test-time augmentation and the
Flickr30k per-type recall, on hand-made data with hand-computed values (and a tiny random GLIP for TTA)."""
import json
import math
import os
import uuid
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from torch import nn

import glip_d2
from glip_d2.data.tta_mapper import GLIPDatasetMapperTTA
from glip_d2.engine.defaults import load_glip_cfg
from glip_d2.evaluation import FlickrEvaluator, LVISEvaluator, build_evaluator, flickr_recall
from glip_d2.evaluation.flickr_phrase_types import parse_entities_sentence
from glip_d2.evaluation.lvis_evaluation import _ClassTopK, top_k_per_class
from glip_d2.modeling.meta_arch.glip import GLIP
from glip_d2.modeling.test_time_augmentation import GLIPWithTTA
from glip_d2.structures import PhraseList

ROOT = os.path.join(os.path.dirname(__file__), "..")
TINY = os.path.join(ROOT, "configs", "quick_schedules", "Base-GLIP-tiny.yaml")


# ---- LVIS: 31 chunks of 40 names, merged ------------------------------------------------------------------------
def test_merging_31_chunks_keeps_the_top_300_across_chunks():
    g = torch.Generator().manual_seed(0)
    dets, all_scores = [], []
    for chunk in range(31):  # each prompt already capped at 300 (MODEL.ATSS.DETECTIONS_PER_IMG)
        scores = torch.rand(300, generator=g) * (0.2 + chunk / 40)  # later chunks score higher, none dominates
        xy = torch.rand(300, 2, generator=g) * 100
        rows = torch.arange(300) % 40
        dets.append({"boxes": torch.cat([xy, xy + 10], 1), "scores": scores, "classes": chunk * 40 + rows,
                     "rows": rows, "phrases": PhraseList(f"name{chunk * 40 + r}" for r in rows.tolist())})
        all_scores.append(scores)
    union = torch.cat(all_scores)
    merged = GLIP._merge(SimpleNamespace(max_detections_merged=300), dets, (480, 640))
    assert len(merged) == 300
    assert torch.equal(merged.scores, union.sort(descending=True).values[:300])
    source = {float(s): (d, i) for d in dets for i, s in enumerate(d["scores"].tolist())}  # scores are distinct
    for box, score, cls, phrase in zip(merged.pred_boxes.tensor, merged.scores, merged.pred_classes,
                                       merged.pred_phrases):
        d, i = source[float(score)]
        assert torch.equal(box, d["boxes"][i]) and cls == d["classes"][i] and phrase == f"name{int(cls)}"
    assert len(set((merged.pred_classes // 40).tolist())) > 5  # the top 300 comes from many chunks
    # the LVIS configs merge without a cap: every chunk's detections reach the evaluator
    assert len(GLIP._merge(SimpleNamespace(max_detections_merged=-1), dets, (480, 640))) == 31 * 300


@pytest.mark.parametrize("model", ["GLIP-T_A", "GLIP-T_B", "GLIP-T_C", "GLIP-T", "GLIP-L"])
def test_lvis_configs_follow_the_official_protocol(model):
    cfg = load_glip_cfg(os.path.join(ROOT, "configs", "lvis", f"{model}_minival.yaml"))
    assert cfg.MODEL.WEIGHTS == f"glip_d2://{model}" and cfg.DATASETS.TEST == ("lvis_v1_minival",)
    assert cfg.INPUT.PROMPT.CHUNK_SIZE == 40 and math.ceil(1203 / 40) == 31
    assert cfg.MODEL.ATSS.DETECTIONS_PER_IMG == 300 and cfg.TEST.DETECTIONS_PER_IMAGE == -1
    assert cfg.TEST.LVIS_FIXED_AP and cfg.TEST.FIXED_AP_TOPK == 10000
    val = load_glip_cfg(os.path.join(ROOT, "configs", "lvis", f"{model}_val.yaml"))
    assert val.DATASETS.TEST == ("lvis_v1_val_glip",) and val.MODEL.WEIGHTS == cfg.MODEL.WEIGHTS


# ---- Fixed AP ------------------------------------------------------------------------------------------------------
def test_top_k_per_class_and_streaming_pool():
    classes = np.array([2, 0, 2, 0, 2, 1])
    scores = np.array([0.1, 0.9, 0.5, 0.2, 0.5, 0.3], np.float32)
    assert top_k_per_class(classes, scores, 2).tolist() == [1, 3, 5, 2, 4]  # ties: earlier row first
    g = np.random.default_rng(0)
    rows = [{"image_id": np.full(50, i), "category_id": g.integers(0, 5, 50), "score": g.random(50, np.float32),
             "bbox": g.random((50, 4), np.float32)} for i in range(6)]
    pool = _ClassTopK(7)
    for i, r in enumerate(rows):
        pool.add(r)
        if i % 2:
            pool.compact()  # pruning on the way gives the same set as selecting once at the end
    got = pool.compact()
    flat = {f: np.concatenate([r[f] for r in rows]) for f in rows[0]}
    keep = top_k_per_class(flat["category_id"], flat["score"], 7)
    assert sorted(zip(got["image_id"].tolist(), got["score"].tolist())) == sorted(
        zip(flat["image_id"][keep].tolist(), flat["score"][keep].tolist()))


def _lvis_set(tmp_path):
    """apple (rare), bear (common), cat (frequent); image 1 shows an apple and a bear, image 2 a cat."""
    cats = [{"id": i, "name": n, "synonyms": [n], "frequency": f, "image_count": 1, "instance_count": 1}
            for i, n, f in ((1, "apple", "r"), (2, "bear", "c"), (3, "cat", "f"))]
    images = [{"id": 1, "height": 100, "width": 100, "neg_category_ids": [3], "not_exhaustive_category_ids": []},
              {"id": 2, "height": 100, "width": 100, "neg_category_ids": [1, 2], "not_exhaustive_category_ids": []}]
    anns = [{"id": k + 1, "image_id": img, "category_id": c, "bbox": box, "area": box[2] * box[3],
             "segmentation": [[box[0], box[1], box[0] + box[2], box[1], box[0] + box[2], box[1] + box[3]]]}
            for k, (img, c, box) in enumerate([(1, 1, [10, 10, 20, 20]), (1, 2, [50, 50, 30, 30]),
                                               (2, 3, [20, 30, 40, 40])])]
    path = tmp_path / "lvis.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    name = f"fixed_ap_{uuid.uuid4().hex[:8]}"
    MetadataCatalog.get(name).set(json_file=str(path), evaluator_type="lvis", thing_classes=["apple", "bear", "cat"])
    return name


def _dets(rows):
    """(xywh box, score, contiguous class) -> output Instances in detectron2's XYXY boxes."""
    inst = Instances((100, 100))
    inst.pred_boxes = Boxes(torch.tensor([[x, y, x + w, y + h] for (x, y, w, h), _, _ in rows], dtype=torch.float32))
    inst.scores = torch.tensor([s for _, s, _ in rows])
    inst.pred_classes = torch.tensor([c for _, _, c in rows])
    return {"instances": inst}


# image 1: the apple and the bear found with low scores, two confident false cats (cat is a negative of image 1);
# image 2: the cat found, a confident false apple and a weak false bear (both negatives of image 2).
_MISS = [70, 0, 20, 20]
_OUTPUTS = [_dets([([10, 10, 20, 20], 0.3, 0), ([50, 50, 30, 30], 0.2, 1), (_MISS, 0.9, 2), (_MISS, 0.8, 2)]),
            _dets([([20, 30, 40, 40], 0.5, 2), (_MISS, 0.6, 0), (_MISS, 0.1, 1)])]


def _evaluate(name, **kwargs):
    ev = LVISEvaluator(name, tasks=("bbox",), distributed=False, **kwargs)
    ev.reset()
    ev.process([{"image_id": 1}, {"image_id": 2}], _OUTPUTS)
    return ev.evaluate()


def test_fixed_ap_equals_the_direct_computation_and_differs_from_per_image_ap(tmp_path):
    # one ground-truth box per class, matched exactly: a class's AP is 1 / (rank of its true detection among the
    # class's detections that count), 0 when the true detection is not among them
    name = _lvis_set(tmp_path)
    res = _evaluate(name, max_dets_per_image=2, fixed_ap_topk=10000)
    fixed = res["bbox_fixed_ap"]  # no per-image cap: apple rank 2, bear rank 1, cat rank 3
    for key, value in {"APr": 1 / 2, "APc": 1.0, "APf": 1 / 3, "AP": (1 / 2 + 1 + 1 / 3) / 3}.items():
        assert fixed[key] == pytest.approx(100 * value), key
    # a per-image cap of 2 keeps the false cats of image 1 and drops its true apple and bear
    standard = res["bbox"]
    assert standard["APr"] == pytest.approx(0.0) and standard["APc"] == pytest.approx(0.0)
    assert standard["APf"] == pytest.approx(100 / 3) and standard["AP"] == pytest.approx(100 / 9)
    # Fixed AP's own cap is per class over the dataset: top 2 cats are the two false ones
    capped = _evaluate(name, max_dets_per_image=2, fixed_ap_topk=2)["bbox_fixed_ap"]
    assert capped["APf"] == pytest.approx(0.0) and capped["APr"] == pytest.approx(50.0)
    # without the option nothing changes from detectron2's evaluator
    assert "bbox_fixed_ap" not in _evaluate(name, max_dets_per_image=2)


def test_build_evaluator_turns_fixed_ap_on_from_the_config(tmp_path):
    cfg = glip_d2.add_glip_config(get_cfg())
    name = _lvis_set(tmp_path)
    assert build_evaluator(cfg, name)._fixed_ap_topk == 10000
    cfg.TEST.LVIS_FIXED_AP = False
    assert build_evaluator(cfg, name)._fixed_ap_topk == 0


# ---- multi-scale + flip test-time augmentation ---------------------------------------------------------------------
def _tiny_tta_cfg():
    cfg = glip_d2.add_glip_config(get_cfg())
    cfg.merge_from_file(TINY)
    cfg.MODEL.LANGUAGE.MAX_QUERY_LEN = 16
    cfg.TEST.AUG.MIN_SIZES = (32, 48)
    cfg.TEST.AUG.MAX_SIZE = 100
    cfg.TEST.AUG.SIZE_RANGES = [[0, 10000], [0, 10000]]
    return cfg


@pytest.fixture(scope="module")
def tiny_tta():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: on a shared 2-core machine, thread hand-offs cost 15x the work
    cfg = _tiny_tta_cfg()
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    with torch.no_grad():
        model.head.bias0.fill_(6.0)  # every token probable: plenty of detections from a random model
    yield cfg, model, GLIPWithTTA(cfg, model, GLIPDatasetMapperTTA(cfg))
    torch.set_num_threads(threads)


def _chunked_input(model):
    """A 40x60 image with two prompts (a chunked vocabulary), labels 3, 4 and 9."""
    tok = model.language_encoder.tokenizer
    prompts = []
    for caption, spans, labels in (("cat. dog", [(0, 3), (5, 8)], [3, 4]), ("bird", [(0, 4)], [9])):
        enc = tok(caption)
        pmap = torch.zeros(len(spans), 16)
        for row, (s, e) in enumerate(spans):
            pmap[row, enc.char_to_token(s): enc.char_to_token(e - 1) + 1] = 1
        prompts.append({"caption": caption, "positive_map": pmap, "positive_map_labels": torch.tensor(labels),
                        "phrases": [caption[s:e] for s, e in spans]})
    image = torch.randint(0, 256, (3, 40, 60), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    return {"image": image, "height": 40, "width": 60, "prompts": prompts}


def test_tta_runs_every_scale_and_flip_before_merging(tiny_tta, monkeypatch):
    cfg, model, tta = tiny_tta
    x = _chunked_input(model)
    runs = []
    detect = tta.augmented_detections
    monkeypatch.setattr(tta, "augmented_detections", lambda d: runs.append(detect(d)) or runs[-1])
    first = tta([x])[0]["instances"]
    second = tta([x])[0]["instances"]

    augmented = runs[0]
    assert [(a["tta"]["min_size"], a["tta"]["flip"]) for a, _ in augmented] == [
        (32, False), (32, True), (48, False), (48, True)]
    assert [tuple(a["image"].shape[1:]) for a, _ in augmented] == [(32, 48)] * 2 + [(48, 72)] * 2
    for _, inst in augmented:
        assert inst.image_size == (40, 60) and len(inst) > 100  # every candidate: no NMS, no cap per copy
        assert {3, 4, 9} <= set(inst.pred_classes.tolist())  # both prompts of the chunked vocabulary
    # the model's own NMS / caps are back after the copies ran
    assert model.postprocessor.nms_threshold == cfg.MODEL.ATSS.NMS_TH
    assert model.postprocessor.detections_per_image == cfg.MODEL.ATSS.DETECTIONS_PER_IMG
    assert model.max_detections_merged == cfg.TEST.DETECTIONS_PER_IMAGE

    assert first.image_size == (40, 60) and 0 < len(first) <= cfg.TEST.AUG.DETECTIONS_PER_IMAGE
    for field in ("scores", "pred_classes"):
        assert torch.equal(first.get(field), second.get(field))
    assert torch.equal(first.pred_boxes.tensor, second.pred_boxes.tensor)
    assert list(first.pred_phrases) == list(second.pred_phrases)
    assert torch.all(first.scores[:-1] >= first.scores[1:])
    union = torch.cat([inst.scores for _, inst in augmented])
    assert torch.isin(first.scores, union).all()  # merged detections are copies' detections (NMS only removes)


class _BrightBoxModel(nn.Module):
    """Stands in for GLIP: "detects" the bounding box of the non-zero pixels, in GLIP's raw output (legacy "+1"
    boxes in the resized frame), scored 1 / width so that smaller copies win ties in the merge."""

    def __init__(self):
        super().__init__()
        self.postprocessor = SimpleNamespace(nms_threshold=0.6, detections_per_image=100)
        self.max_detections_merged = 100

    def inference(self, batched_inputs, do_postprocess=True):
        assert not do_postprocess and self.postprocessor.nms_threshold == 0 and self.max_detections_merged < 0
        out = []
        for x in batched_inputs:
            ys, xs = (x["image"][0] > 0).nonzero(as_tuple=True)
            inst = Instances(tuple(x["image"].shape[1:]))
            inst.pred_boxes = Boxes(torch.tensor([[xs.min(), ys.min(), xs.max(), ys.max()]], dtype=torch.float32))
            inst.scores = torch.tensor([1.0 / x["image"].shape[2]])
            inst.pred_classes = torch.tensor([0])
            out.append(inst)
        return out


def _bright_box_tta(min_sizes, ranges):
    cfg = glip_d2.add_glip_config(get_cfg())
    cfg.TEST.AUG.MIN_SIZES, cfg.TEST.AUG.MAX_SIZE, cfg.TEST.AUG.FLIP = min_sizes, 1000, True
    cfg.TEST.AUG.SIZE_RANGES = ranges
    image = torch.zeros(3, 50, 80, dtype=torch.uint8)
    image[:, 10:30, 5:25] = 255  # pixels x 5..24, y 10..29: legacy box [5, 10, 24, 29]
    return GLIPWithTTA(cfg, _BrightBoxModel(), GLIPDatasetMapperTTA(cfg)), {"image": image, "height": 50, "width": 80}


def test_tta_flip_maps_boxes_back_exactly():
    tta, x = _bright_box_tta((50, 100), [])  # 50: the image itself; 100: twice its size
    augmented = tta.augmented_detections(x)
    boxes = {(a["tta"]["min_size"], a["tta"]["flip"]): inst.pred_boxes.tensor for a, inst in augmented}
    assert boxes[(50, False)].tolist() == [[5.0, 10.0, 24.0, 29.0]]
    assert torch.equal(boxes[(50, True)], boxes[(50, False)])  # x -> W - 1 - x in the frame that was flipped
    assert torch.equal(boxes[(100, True)], boxes[(100, False)])
    merged = tta([x])[0]["instances"]
    assert merged.pred_boxes.tensor.tolist() == [[5.0, 10.0, 25.0, 30.0]]  # detectron2's continuous x2 + 1


def test_tta_size_ranges_apply_in_each_copy():
    tta, x = _bright_box_tta((50, 100), [[0, 10000], [0, 30]])  # the box is 20 px at 50, about 40 px at 100
    kept = {(a["tta"]["min_size"], a["tta"]["flip"]): len(inst) for a, inst in tta.augmented_detections(x)}
    assert kept == {(50, False): 1, (50, True): 1, (100, False): 0, (100, True): 0}
    with pytest.raises(ValueError, match="SIZE_RANGES has 1"):
        _bright_box_tta((50, 100), [[0, 10000]])


# ---- Flickr30k: recall per phrase type -----------------------------------------------------------------------------
def test_entities_sentence_parsing():
    sentence, phrases = parse_entities_sentence(
        "[/EN#1/people A man] in [/EN#3/clothing/other a red hat] rides [/EN#2/animals horses] .")
    assert sentence == "A man in a red hat rides horses ."
    assert phrases == {(0, 5): ["people"], (9, 18): ["clothing", "other"], (25, 31): ["animals"]}
    assert sentence[9:18] == "a red hat" and sentence[25:31] == "horses"


def _flickr_record(image_id, boxes, **extra):
    return dict({"image_id": image_id, "caption": "A man in a red hat rides horses .", "annotations": [],
                 "phrase_boxes_eval": boxes}, **extra)


def test_flickr_recall_per_phrase_type():
    records = [_flickr_record(1, [[[0, 0, 10, 10]], [[20, 0, 30, 10]], [[40, 0, 50, 10]]]),
               _flickr_record(2, [[[0, 0, 10, 10]], [[20, 0, 30, 10]], []])]
    predictions = {  # image 1: man found at rank 1, hat at rank 2, horses missed; image 2: man missed, hat found
        1: {0: np.array([[0, 0, 10, 10]]), 1: np.array([[90, 90, 99, 99], [20, 0, 30, 10]]),
            2: np.array([[0, 50, 10, 60]])},
        2: {0: np.array([[60, 60, 70, 70]]), 1: np.array([[20, 0, 30, 10]])},
    }
    types = {1: [["people"], ["clothing", "other"], ["animals"]], 2: [["people"], ["clothing"], ["scene"]]}
    r = flickr_recall(records, predictions, phrase_types=types)
    assert r["R@1"] == pytest.approx(2 / 5) and r["R@5"] == pytest.approx(3 / 5)
    assert r["R@1_people"] == pytest.approx(1 / 2) and r["R@5_people"] == pytest.approx(1 / 2)
    assert r["R@1_clothing"] == pytest.approx(1 / 2) and r["R@5_clothing"] == pytest.approx(1.0)
    assert r["R@1_other"] == pytest.approx(0.0) and r["upper_bound_other"] == pytest.approx(1.0)
    assert r["R@10_animals"] == pytest.approx(0.0)
    assert "R@1_scene" not in r  # its phrase has no box, so it is not evaluated


def test_flickr_evaluator_reads_types_from_the_entities_sentences(tmp_path):
    (tmp_path / "Sentences").mkdir()
    (tmp_path / "Sentences" / "1001.txt").write_text(
        "[/EN#9/people Two kids] play .\n[/EN#1/people A man] in [/EN#3/clothing/other a red hat] rides "
        "[/EN#2/animals horses] .\n")
    spans = [[[0, 5]], [[9, 18]], [[25, 31]]]
    record = _flickr_record(7, [[[0, 0, 10, 10]], [[20, 0, 30, 10]], [[40, 0, 50, 10]]], original_img_id=1001,
                            sentence_id=1, tokens_positive_eval=spans)
    name = f"flickr_types_{uuid.uuid4().hex[:8]}"
    DatasetCatalog.register(name, lambda: [record])
    MetadataCatalog.get(name).set(evaluator_type="flickr", flickr_entities_root=str(tmp_path))
    ev = FlickrEvaluator(name, distributed=False)
    ev.reset()
    inst = Instances((100, 100))
    inst.pred_boxes = Boxes(torch.tensor([[0.0, 0, 10, 10], [20, 0, 30, 10], [0, 50, 10, 60]]))
    inst.scores = torch.tensor([0.9, 0.8, 0.7])
    inst.pred_classes = torch.tensor([0, 1, 2])  # man and hat right, horses wrong
    ev.process([{"image_id": 7}], [{"instances": inst}])
    r = ev.evaluate()["flickr"]
    assert r["R@1"] == pytest.approx(200 / 3)
    assert r["R@1_people"] == pytest.approx(100.0) and r["R@1_clothing"] == pytest.approx(100.0)
    assert r["R@1_other"] == pytest.approx(100.0) and r["R@1_animals"] == pytest.approx(0.0)
    assert r["merged_R@1_animals"] == pytest.approx(0.0) and r["merged_R@1_people"] == pytest.approx(100.0)
