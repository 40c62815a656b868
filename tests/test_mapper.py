"""GroundingDatasetMapper on tiny hand-made COCO-style data and on the synthetic set; GLIP's resize/flip."""
import json
import random
import uuid

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances
from detectron2.data.transforms import ResizeShortestEdge
from detectron2.structures import BoxMode
from PIL import Image

from glip_d2 import add_glip_config
from glip_d2.data.mapper import GroundingDatasetMapper
from glip_d2.data.prompts import clean_name
from glip_d2.data.transforms import GLIPResizeShortestEdge

CATEGORIES = [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}, {"id": 5, "name": "hair_drier"}]


def _cfg(**opts):
    cfg = add_glip_config(get_cfg())
    cfg.MODEL.LANGUAGE.MODEL_NAME = "embedded-minilm"
    cfg.INPUT.MIN_SIZE_TRAIN = (64,)
    cfg.INPUT.MAX_SIZE_TRAIN = 1000
    cfg.INPUT.MIN_SIZE_TEST = 64
    cfg.INPUT.MAX_SIZE_TEST = 1000
    cfg.INPUT.FLIP_PROB_TRAIN = 0.0
    for key, value in opts.items():
        node = cfg
        *path, leaf = key.split(".")
        for p in path:
            node = getattr(node, p)
        setattr(node, leaf, value)
    return cfg


def _image(path, h, w, seed):
    rgb = np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path)


@pytest.fixture(scope="module")
def coco_dataset(tmp_path_factory):
    """Two images (100x150 and 90x70), three categories with non-contiguous ids, one polygon mask."""
    root = tmp_path_factory.mktemp("tiny_coco")
    _image(root / "a.png", 100, 150, 0)
    _image(root / "b.png", 90, 70, 1)
    anns = [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 20, 30, 40], "area": 1200, "iscrowd": 0,
         "segmentation": [[10, 20, 40, 20, 40, 60, 10, 60]]},
        {"id": 2, "image_id": 1, "category_id": 5, "bbox": [50, 10, 20, 20], "area": 400, "iscrowd": 0,
         "segmentation": [[50, 10, 70, 10, 70, 30]]},
        {"id": 3, "image_id": 2, "category_id": 2, "bbox": [5, 5, 20, 30], "area": 600, "iscrowd": 0,
         "segmentation": [[5, 5, 25, 5, 25, 35, 5, 35]]},
    ]
    data = {
        "images": [{"id": 1, "file_name": "a.png", "height": 100, "width": 150},
                   {"id": 2, "file_name": "b.png", "height": 90, "width": 70}],
        "annotations": anns,
        "categories": CATEGORIES,
    }
    (root / "anno.json").write_text(json.dumps(data))
    name = f"tiny_coco_{uuid.uuid4().hex[:8]}"
    register_coco_instances(name, {}, str(root / "anno.json"), str(root))
    dicts = DatasetCatalog.get(name)  # loading sets thing_classes
    yield name, dicts, root
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


@pytest.fixture(scope="module")
def tokenizer():
    from glip_d2.tokenization import build_tokenizer

    return build_tokenizer(_cfg())


def _decoded_rows(tokenizer, caption, positive_map):
    ids = tokenizer(caption)["input_ids"]
    return [tokenizer.decode([ids[i] for i in torch.nonzero(row).flatten().tolist()]) for row in positive_map]


# ---------------------------------------------------------------------------------------------------------------
# resize rule
# ---------------------------------------------------------------------------------------------------------------
def test_resize_truncates_long_side_unlike_detectron2():
    assert GLIPResizeShortestEdge.get_output_shape(480, 643, 800, 1333) == (800, 1071)  # 1071.67 truncated
    assert ResizeShortestEdge.get_output_shape(480, 643, 800, 1333) == (800, 1072)  # detectron2 rounds
    # max-size cap: size = int(round(1333 * 100 / 1000)) = 133, long side int(133 * 1000 / 100) = 1330
    assert GLIPResizeShortestEdge.get_output_shape(100, 1000, 800, 1333) == (133, 1330)
    assert GLIPResizeShortestEdge.get_output_shape(1000, 100, 800, 1333) == (1330, 133)
    assert GLIPResizeShortestEdge.get_output_shape(800, 900, 800, 1333) == (800, 900)  # already the size
    assert GLIPResizeShortestEdge.get_output_shape(480, 643, 800, 1333, truncate=False) == (800, 1072)


# ---------------------------------------------------------------------------------------------------------------
# detection data: prompts from thing_classes
# ---------------------------------------------------------------------------------------------------------------
def test_train_detection_record(coco_dataset, tokenizer):
    name, dicts, _ = coco_dataset
    mapper = GroundingDatasetMapper(_cfg(**{"MODEL.MASK_ON": True}), is_train=True, dataset_name=name)
    mapper.rng = random.Random(0)
    out = mapper(dicts[0])
    assert out["image"].shape == (3, 64, 96)  # 100x150 -> short side 64, long int(64 * 150 / 100)
    classes = MetadataCatalog.get(name).thing_classes
    assert classes == ["cat", "dog", "hair_drier"]
    labels = out["positive_map_labels"].tolist()
    assert {0, 2} <= set(labels)  # both positives are in the prompt, "dog" may be a negative
    assert out["phrases"] == [clean_name(classes[k]).strip() for k in labels]
    assert _decoded_rows(tokenizer, out["caption"], out["positive_map"]) == out["phrases"]
    inst = out["instances"]
    assert inst.gt_classes.tolist() == [0, 2]
    expected = torch.tensor([[10, 20, 40, 60], [50, 10, 70, 30]], dtype=torch.float32) * 0.64
    assert torch.allclose(inst.gt_boxes.tensor, expected)
    for i, c in enumerate(inst.gt_classes.tolist()):
        assert torch.equal(inst.gt_positive_map[i], out["positive_map"][labels.index(c)])
    assert inst.gt_positive_map.shape == (2, 256)
    assert np.allclose(inst.gt_masks.polygons[0][0], np.array([10, 20, 40, 20, 40, 60, 10, 60]) * 0.64)
    assert "annotations" not in out
    # deterministic under the seeded rng
    mapper.rng = random.Random(0)
    assert mapper(dicts[0])["caption"] == out["caption"]


def test_flip_uses_legacy_offset_and_keeps_spans(coco_dataset):
    name, dicts, _ = coco_dataset
    plain = GroundingDatasetMapper(_cfg(), is_train=True, dataset_name=name)
    flipped = GroundingDatasetMapper(_cfg(**{"INPUT.FLIP_PROB_TRAIN": 1.0}), is_train=True, dataset_name=name)
    plain.rng, flipped.rng = random.Random(3), random.Random(3)
    a, b = plain(dicts[0]), flipped(dicts[0])
    assert a["caption"] == b["caption"] and torch.equal(a["positive_map"], b["positive_map"])
    assert torch.equal(b["image"], a["image"].flip(-1))
    x1, y1, x2, y2 = a["instances"].gt_boxes.tensor[0].tolist()
    w = a["image"].shape[-1]
    assert torch.allclose(b["instances"].gt_boxes.tensor[0], torch.tensor([w - 1 - x2, y1, w - 1 - x1, y2]))
    d2 = GroundingDatasetMapper(
        _cfg(**{"INPUT.FLIP_PROB_TRAIN": 1.0, "INPUT.FLIP_LEGACY_OFFSET": False}), is_train=True, dataset_name=name
    )
    d2.rng = random.Random(3)
    assert torch.allclose(d2(dicts[0])["instances"].gt_boxes.tensor[0], torch.tensor([w - x2, y1, w - x1, y2]))


def test_test_detection_record_gets_the_full_vocabulary(coco_dataset):
    name, dicts, _ = coco_dataset
    out = GroundingDatasetMapper(_cfg(), is_train=False, dataset_name=name)(dicts[1])
    assert out["image"].shape == (3, 82, 64)  # 90x70 -> (int(64 * 90 / 70), 64)
    assert out["caption"] == "cat. dog. hair drier"
    assert out["positive_map_labels"].tolist() == [0, 1, 2]
    assert out["phrases"] == ["cat", "dog", "hair drier"]
    assert "instances" not in out and "annotations" not in out and "prompts" not in out


def _register_vocabulary(names):
    name = f"vocab_{uuid.uuid4().hex[:8]}"
    DatasetCatalog.register(name, list)
    MetadataCatalog.get(name).set(thing_classes=names, evaluator_type="lvis")
    return name


def test_large_vocabulary_is_chunked(coco_dataset):
    _, dicts, _ = coco_dataset
    name = _register_vocabulary([f"category {i}" for i in range(100)])
    cfg = _cfg(**{"INPUT.PROMPT.CHUNK_ONLY_IF_NEEDED": False})
    out = GroundingDatasetMapper(cfg, is_train=False, dataset_name=name)(dicts[0])
    assert "caption" not in out and len(out["prompts"]) == 3
    assert [p["positive_map_labels"].tolist() for p in out["prompts"]] == [
        list(range(40)), list(range(40, 80)), list(range(80, 100))
    ]
    assert out["prompts"][2]["phrases"][0] == "category 80"
    name = _register_vocabulary([f"long category name {i}" for i in range(300)])
    out = GroundingDatasetMapper(_cfg(), is_train=False, dataset_name=name)(dicts[0])  # automatic
    assert len(out["prompts"]) == 8 and sum(len(p["phrases"]) for p in out["prompts"]) == 300
    assert all(p["positive_map"].shape[1] == 256 for p in out["prompts"])


# ---------------------------------------------------------------------------------------------------------------
# grounding data: the record's caption
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def flickr_like(coco_dataset):
    _, _, root = coco_dataset
    caption = "a cat sits next to two dogs"
    record = {
        "file_name": str(root / "a.png"), "height": 100, "width": 150, "image_id": 7, "caption": caption,
        "annotations": [
            {"bbox": [10, 20, 30, 40], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0, "tokens_positive": [[0, 5]]},
            {"bbox": [50, 10, 20, 20], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0, "tokens_positive": [[23, 27]]},
            {"bbox": [80, 10, 20, 20], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0, "tokens_positive": [[23, 27]]},
        ],
        "tokens_positive_eval": [[[23, 27]], [[0, 5]]],
    }
    name = f"flickr_like_{uuid.uuid4().hex[:8]}"
    DatasetCatalog.register(name, lambda: [record])
    MetadataCatalog.get(name).set(thing_classes=["object"], evaluator_type="flickr")
    return name, record


def test_train_grounding_record(flickr_like, tokenizer):
    name, record = flickr_like
    out = GroundingDatasetMapper(_cfg(), is_train=True, dataset_name=name)(record)
    assert out["caption"] == record["caption"]
    assert out["phrases"] == ["a cat", "dogs"] and out["positive_map_labels"].tolist() == [0, 1]
    assert _decoded_rows(tokenizer, out["caption"], out["positive_map"]) == ["a cat", "dogs"]
    inst = out["instances"]
    assert inst.gt_classes.tolist() == [0, 1, 1]
    assert torch.equal(inst.gt_positive_map, out["positive_map"][[0, 1, 1]])


def test_test_grounding_record_uses_eval_phrases(flickr_like):
    name, record = flickr_like
    out = GroundingDatasetMapper(_cfg(), is_train=False, dataset_name=name)(record)
    assert out["phrases"] == ["dogs", "a cat"] and out["positive_map_labels"].tolist() == [0, 1]
    assert "instances" not in out


def test_bad_records_raise_naming_the_image(coco_dataset, flickr_like, tmp_path):
    name, dicts, _ = coco_dataset
    mapper = GroundingDatasetMapper(_cfg(), is_train=True, dataset_name=name)
    missing = dict(dicts[0], file_name=str(tmp_path / "nope.png"))
    with pytest.raises(FileNotFoundError, match="nope.png"):
        mapper(missing)
    (tmp_path / "broken.jpg").write_bytes(b"this is not an image")
    with pytest.raises(ValueError, match="cannot read image file .*broken.jpg"):
        mapper(dict(dicts[0], file_name=str(tmp_path / "broken.jpg")))
    gname, record = flickr_like
    bad = dict(record, annotations=[dict(record["annotations"][0], tokens_positive=[[20, 40]])])
    with pytest.raises(ValueError, match=r"a.png.*\[20, 40\) is outside"):
        GroundingDatasetMapper(_cfg(), is_train=True, dataset_name=gname)(bad)
    caption_only = GroundingDatasetMapper(_cfg(**{"INPUT.PROMPT.TRAIN_SOURCE": "caption"}), True, dataset_name=name)
    with pytest.raises(ValueError, match="a.png.*no 'caption'"):
        caption_only(dicts[0])
    anonymous = GroundingDatasetMapper(_cfg(), is_train=True, dataset_name="not_registered_anywhere")
    with pytest.raises(ValueError, match="no 'caption' and its dataset .* has no thing_classes"):
        anonymous(dicts[0])


# ---------------------------------------------------------------------------------------------------------------
# the synthetic set
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    from glip_d2.data.datasets.synthetic import register_synthetic

    root = tmp_path_factory.mktemp("synthetic")
    register_synthetic(str(root), num_train=4, num_val=2, seed=0)
    return root


@pytest.mark.parametrize("style", ["", "_text"])
def test_synthetic_training_records(synthetic, tokenizer, style):
    name = "synthetic_train" + style
    mapper = GroundingDatasetMapper(_cfg(**{"MODEL.MASK_ON": True}), is_train=True, dataset_name=name)
    classes = MetadataCatalog.get(name).thing_classes
    for record in DatasetCatalog.get(name):
        out = mapper(record)
        inst = out["instances"]
        assert len(inst) == len(record["annotations"]) and inst.has("gt_masks")
        # each box's token map covers exactly the text of its own phrase, which names its category
        for a, c, row in zip(record["annotations"], inst.gt_classes.tolist(), inst.gt_positive_map):
            (s, e), = a["tokens_positive"]
            assert _decoded_rows(tokenizer, out["caption"], row[None])[0] == record["caption"][s:e].lower()
            assert classes[c] in record["caption"][s:e]
        assert set(out["positive_map_labels"].tolist()) == set(inst.gt_classes.tolist())


def test_synthetic_validation_uses_all_categories(synthetic):
    mapper = GroundingDatasetMapper(_cfg(), is_train=False, dataset_name="synthetic_val_text")
    classes = MetadataCatalog.get("synthetic_val_text").thing_classes
    out = mapper(DatasetCatalog.get("synthetic_val_text")[0])
    assert out["phrases"] == [clean_name(c).strip() for c in classes]
    assert out["positive_map_labels"].tolist() == list(range(len(classes)))
    caption_mapper = GroundingDatasetMapper(
        _cfg(**{"INPUT.PROMPT.TEST_SOURCE": "caption"}), is_train=False, dataset_name="synthetic_val_text"
    )
    record = DatasetCatalog.get("synthetic_val_text")[0]
    out = caption_mapper(record)
    assert out["caption"] == record["caption"]
    assert set(out["positive_map_labels"].tolist()) == {a["category_id"] for a in record["annotations"]}
