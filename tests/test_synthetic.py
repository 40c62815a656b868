"""Synthetic grounding data: determinism, spans, masks/boxes, overlap, speed, registration."""
import filecmp
import json
import os
import time

import numpy as np
import pytest
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode
from pycocotools import mask as mask_util

import glip_d2  # noqa: F401  (detectron2 shims)
from glip_d2 import add_glip_config
from glip_d2.data.datasets import synthetic as S


def _load(root, split="train", style="list"):
    with open(S._paths(str(root), split, style)[0]) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    S.generate_synthetic_dataset(str(root), num_train=40, num_val=8, seed=3)
    return root


def _by_image(data):
    anns = {}
    for a in data["annotations"]:
        anns.setdefault(a["image_id"], []).append(a)
    return [(img, anns.get(img["id"], [])) for img in data["images"]]


def test_same_seed_gives_identical_files_and_other_seed_differs(tmp_path, data_dir):
    S.generate_synthetic_dataset(str(tmp_path / "a"), num_train=40, num_val=8, seed=3)
    for rel in ("annotations/train.json", "annotations/train_text.json", "annotations/val.json"):
        assert filecmp.cmp(data_dir / rel, tmp_path / "a" / rel, shallow=False), rel
    images = sorted(os.listdir(data_dir / "images" / "train"))
    assert len(images) == 40
    match, mismatch, errors = filecmp.cmpfiles(data_dir / "images" / "train", tmp_path / "a" / "images" / "train",
                                               images, shallow=False)
    assert len(match) == 40 and not mismatch and not errors
    # Image i depends only on (seed, split, i): a smaller set is a prefix of the larger one.
    S.generate_synthetic_dataset(str(tmp_path / "b"), num_train=5, num_val=0, seed=3)
    assert filecmp.cmp(data_dir / "images/train/000005.jpg", tmp_path / "b/images/train/000005.jpg", shallow=False)
    S.generate_synthetic_dataset(str(tmp_path / "c"), num_train=5, num_val=0, seed=4)
    assert _load(tmp_path / "c")["annotations"] != _load(tmp_path / "b")["annotations"]


def test_list_captions_are_joined_category_names(data_dir):
    data = _load(data_dir)
    names = {c["id"]: c["name"] for c in data["categories"]}
    assert len(names) == 36 and names[1] == "red circle"
    for img, anns in _by_image(data):
        caption = img["caption"]
        for a in anns:
            (start, end), = a["tokens_positive"]
            assert caption[start:end] == names[a["category_id"]]
            assert img["tokens_positive_eval"][a["phrase_ids"]] == [[start, end]]
        # The caption is exactly the distinct names present, ". "-joined, each once.
        phrases = [caption[s:e] for (s, e), in img["tokens_positive_eval"]]
        assert ". ".join(phrases) == caption
        assert sorted(phrases) == sorted({names[a["category_id"]] for a in anns})


def test_text_captions_give_each_object_its_own_phrase(data_dir):
    data = _load(data_dir, style="text")
    names = {c["id"]: c["name"] for c in data["categories"]}
    relations = 0
    for img, anns in _by_image(data):
        caption = img["caption"]
        spans = [tuple(a["tokens_positive"][0]) for a in anns]
        assert len(set(spans)) == len(anns) == len(img["tokens_positive_eval"])
        for a, (start, end) in zip(anns, spans):
            assert caption[start:end] in {names[a["category_id"]], "small " + names[a["category_id"]],
                                          "large " + names[a["category_id"]]}
            assert caption[start - 2:start] in ("a ", "n ")  # article outside the span
        relations += sum(caption.count(r) for r in (" left of ", " right of ", " above ", " below "))
    assert relations > 0
    # Same images and boxes as the list-style json, only captions/spans differ.
    list_data = _load(data_dir)
    assert [a["bbox"] for a in list_data["annotations"]] == [a["bbox"] for a in data["annotations"]]
    assert [i["caption"] for i in list_data["images"]] != [i["caption"] for i in data["images"]]


def test_boxes_inside_images_and_masks_inside_boxes(data_dir):
    data = _load(data_dir)
    for img, anns in _by_image(data):
        h, w = img["height"], img["width"]
        assert 160 <= h <= 320 and 160 <= w <= 320
        assert 1 <= len(anns) <= 5
        for a in anns:
            x, y, bw, bh = a["bbox"]
            assert x >= 0 and y >= 0 and x + bw <= w and y + bh <= h and bw > 0 and bh > 0
            poly = np.array(a["segmentation"][0]).reshape(-1, 2)
            # The box is the polygon's extent.
            np.testing.assert_allclose([poly[:, 0].min(), poly[:, 1].min()], [x, y])
            np.testing.assert_allclose([poly[:, 0].max(), poly[:, 1].max()], [x + bw, y + bh], atol=0.011)
            mask = mask_util.decode(mask_util.merge(mask_util.frPyObjects(a["segmentation"], h, w)))
            ys, xs = np.nonzero(mask)
            assert len(xs) > 0
            assert xs.min() >= np.floor(x) and xs.max() <= np.ceil(x + bw)
            assert ys.min() >= np.floor(y) and ys.max() <= np.ceil(y + bh)
            assert abs(mask.sum() - a["area"]) <= 0.1 * a["area"] + 2 * (bw + bh)


def test_drawn_colours_match_the_labels(data_dir):
    """Visible part of each object (eroded, minus later objects) has the colour its name says."""
    import cv2

    data = _load(data_dir)
    names = {c["id"]: c["name"] for c in data["categories"]}
    checked = 0
    for img, anns in _by_image(data)[:15]:
        image = cv2.imread(str(data_dir / "images" / "train" / img["file_name"]))[:, :, ::-1]
        masks = [mask_util.decode(mask_util.merge(mask_util.frPyObjects(a["segmentation"], img["height"],
                                                                        img["width"]))) for a in anns]
        for i, a in enumerate(anns):
            visible = masks[i].copy()
            for later in masks[i + 1:]:
                visible[later > 0] = 0
            visible = cv2.erode(visible, np.ones((5, 5), np.uint8))
            if visible.sum() < 20:
                continue
            median = np.median(image[visible > 0], axis=0)
            expected = np.array(S.COLORS[names[a["category_id"]].split(" ")[0]])
            assert np.abs(median - expected).max() <= 30, (img["file_name"], names[a["category_id"]], median)
            checked += 1
    assert checked >= 20


def test_some_objects_overlap(data_dir):
    data = _load(data_dir)
    overlapping = 0
    for _, anns in _by_image(data):
        boxes = [BoxMode.convert(a["bbox"], BoxMode.XYWH_ABS, BoxMode.XYXY_ABS) for a in anns]
        for i in range(len(boxes)):
            for j in range(i + 1, len(boxes)):
                iw = min(boxes[i][2], boxes[j][2]) - max(boxes[i][0], boxes[j][0])
                ih = min(boxes[i][3], boxes[j][3]) - max(boxes[i][1], boxes[j][1])
                overlapping += iw > 0 and ih > 0
    assert overlapping >= 3


def test_300_images_generate_quickly(tmp_path):
    start = time.perf_counter()
    S.generate_synthetic_dataset(str(tmp_path), num_train=250, num_val=50, seed=0)
    assert time.perf_counter() - start < 30
    assert len(os.listdir(tmp_path / "images" / "train")) == 250


def test_register_loads_detectron2_dicts_and_is_idempotent(tmp_path):
    root = str(tmp_path / "syn")
    names = S.register_synthetic(root, num_train=6, num_val=3, seed=1, num_test=2)
    assert names == ["synthetic_train", "synthetic_val", "synthetic_train_text", "synthetic_val_text",
                     "synthetic_test", "synthetic_test_text"]
    meta = MetadataCatalog.get("synthetic_train")
    assert meta.evaluator_type == "coco" and meta.thing_classes == list(S.CATEGORY_NAMES)
    assert os.path.exists(meta.json_file) and os.path.isdir(meta.image_root)

    dicts = DatasetCatalog.get("synthetic_train")
    assert len(dicts) == 6 and len(DatasetCatalog.get("synthetic_val")) == 3
    # the held-out split is its own pictures, not a copy of val's
    test_dicts = DatasetCatalog.get("synthetic_test")
    assert len(test_dicts) == 2
    val_boxes = [[a["bbox"] for a in d["annotations"]] for d in DatasetCatalog.get("synthetic_val")]
    assert all([a["bbox"] for a in d["annotations"]] not in val_boxes for d in test_dicts)
    for d in dicts:
        assert os.path.exists(d["file_name"]) and d["caption"]
        for a in d["annotations"]:
            assert a["bbox_mode"] == BoxMode.XYWH_ABS and 0 <= a["category_id"] < 36
            (s, e), = a["tokens_positive"]
            assert d["caption"][s:e] == meta.thing_classes[a["category_id"]]  # contiguous 0-based ids
            assert len(a["segmentation"][0]) >= 6
    for d in DatasetCatalog.get("synthetic_train_text"):
        # One box per phrase, equal to that annotation's box in xyxy.
        for a in d["annotations"]:
            x, y, w, h = a["bbox"]
            assert d["phrase_boxes_eval"][a["phrase_ids"]] == [[x, y, x + w, y + h]]

    mtime = os.path.getmtime(os.path.join(root, "manifest.json"))
    assert S.register_synthetic(root, num_train=6, num_val=3, seed=1, num_test=2) == names
    assert not S.ensure_synthetic_dataset(root, 6, 3, 1, num_test=2)
    assert os.path.getmtime(os.path.join(root, "manifest.json")) == mtime

    # Changed parameters: regenerated and re-registered.
    S.register_synthetic(root, num_train=4, num_val=2, seed=1, style="list")
    assert len(DatasetCatalog.get("synthetic_train")) == 4
    assert len(os.listdir(os.path.join(root, "images", "train"))) == 4


def test_register_from_cfg_only_when_used(tmp_path):
    cfg = add_glip_config(get_cfg())
    cfg.DATASETS.SYNTHETIC.ROOT = str(tmp_path / "cfg_syn")
    cfg.DATASETS.SYNTHETIC.NUM_TRAIN, cfg.DATASETS.SYNTHETIC.NUM_VAL, cfg.DATASETS.SYNTHETIC.SEED = 3, 2, 5
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = ("coco_2017_train",), ("coco_2017_val",)
    assert S.register_synthetic_from_cfg(cfg) == []
    assert not os.path.exists(cfg.DATASETS.SYNTHETIC.ROOT)
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = ("synthetic_train",), ("synthetic_val_text",)
    assert "synthetic_train" in S.register_synthetic_from_cfg(cfg)
    assert len(DatasetCatalog.get("synthetic_train")) == 3 and len(DatasetCatalog.get("synthetic_val_text")) == 2


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="style"):
        S.register_synthetic("unused", style="poem")
    with pytest.raises(ValueError, match="num_train"):
        S.generate_synthetic_dataset("unused", num_train=-1)
