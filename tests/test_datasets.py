"""Dataset registration: MDETR-style grounding jsons, LVIS, COCO-format detection jsons, builtin names."""
import json
import os

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

import glip_d2  # noqa: F401  (detectron2 shims)
from glip_d2.data.datasets import (
    COCO_GROUNDING_BUILTIN,
    LVIS_BUILTIN,
    MDETR_BUILTIN,
    load_grounding_json,
    register_coco_grounding,
    register_lvis_grounding,
    register_mdetr_grounding,
    register_odinw,
)


def _write(path, data):
    with open(path, "w") as f:
        json.dump(data, f)
    return str(path)


def _unregister(*names):
    for name in names:
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)


CAPTION = "A man in a red hat walks two dogs"
#          0123456789012345678901234567890123
FLICKR = {
    "images": [
        {"id": 7, "file_name": "1000.jpg", "height": 100, "width": 120, "caption": CAPTION,
         "dataset_name": "flickr", "tokens_negative": [[0, 33]], "sentence_id": 2, "original_img_id": 1000,
         "tokens_positive_eval": [[[0, 5]], [[11, 18]], [[25, 33]]]},
    ],
    "annotations": [
        {"id": 1, "image_id": 7, "category_id": 1, "bbox": [10, 20, 30, 40], "area": 1200, "iscrowd": 0,
         "tokens_positive": [[0, 5]], "phrase_ids": 11},
        {"id": 2, "image_id": 7, "category_id": 1, "bbox": [15, 5, 10, 8], "area": 80, "iscrowd": 0,
         "tokens_positive": [[11, 18]], "phrase_ids": 12},
        # One box grounding "two dogs" and one grounding both dogs' phrase and the man (equivalent boxes).
        {"id": 3, "image_id": 7, "category_id": 1, "bbox": [50, 50, 20, 10], "area": 200, "iscrowd": 0,
         "tokens_positive": [[25, 33]], "phrase_ids": 13},
        {"id": 4, "image_id": 7, "category_id": 1, "bbox": [80, 60, 30, 20], "area": 600, "iscrowd": 0,
         "tokens_positive": [[0, 5], [25, 33]], "phrase_ids": 13},
    ],
    "categories": [{"id": 1, "name": "object", "supercategory": "object"}],
}


def test_mdetr_json_registers_and_keeps_grounding_fields(tmp_path):
    json_file = _write(tmp_path / "flickr.json", FLICKR)
    _unregister("tiny_flickr")
    register_mdetr_grounding("tiny_flickr", json_file, str(tmp_path / "imgs"), evaluator_type="flickr",
                             metadata={"flickr_subset": "val"})
    meta = MetadataCatalog.get("tiny_flickr")
    assert meta.evaluator_type == "flickr" and meta.flickr_subset == "val" and meta.json_file == json_file

    (d,) = DatasetCatalog.get("tiny_flickr")
    assert d["file_name"] == os.path.join(str(tmp_path / "imgs"), "1000.jpg")
    assert (d["image_id"], d["height"], d["width"]) == (7, 100, 120)
    assert d["caption"] == CAPTION and d["sentence_id"] == 2 and d["original_img_id"] == 1000
    assert d["dataset_name"] == "flickr" and d["tokens_negative"] == [[0, 33]]
    assert d["tokens_positive_eval"] == FLICKR["images"][0]["tokens_positive_eval"]
    assert [CAPTION[s:e] for (s, e), in d["tokens_positive_eval"]] == ["A man", "red hat", "two dogs"]
    assert [a["tokens_positive"] for a in d["annotations"]] == [a["tokens_positive"] for a in FLICKR["annotations"]]
    assert [a["phrase_ids"] for a in d["annotations"]] == [11, 12, 13, 13]
    assert all(a["category_id"] == 0 and a["bbox_mode"] == BoxMode.XYWH_ABS for a in d["annotations"])
    assert meta.thing_classes == ["object"]
    # Original boxes in xyxy, and per evaluated phrase the boxes whose spans overlap it (hand-computed).
    assert d["boxes_eval"] == [[10, 20, 40, 60], [15, 5, 25, 13], [50, 50, 70, 60], [80, 60, 110, 80]]
    assert d["phrase_boxes_eval"] == [
        [[10, 20, 40, 60], [80, 60, 110, 80]],
        [[15, 5, 25, 13]],
        [[50, 50, 70, 60], [80, 60, 110, 80]],
    ]
    _unregister("tiny_flickr")


def test_mixed_json_uses_one_image_folder_per_source(tmp_path):
    data = json.loads(json.dumps(FLICKR))
    data["images"].append(dict(data["images"][0], id=8, file_name="2.jpg", data_source="vg"))
    data["images"][0]["data_source"] = "coco"
    data["annotations"].append(dict(data["annotations"][0], id=9, image_id=8))
    json_file = _write(tmp_path / "mixed.json", data)
    records = load_grounding_json(json_file, {"coco": "/c", "vg": "/v"})
    assert [r["file_name"] for r in records] == ["/c/1000.jpg", "/v/2.jpg"]
    assert [r["data_source"] for r in records] == ["coco", "vg"]
    assert "tokens_positive_eval" in records[1]
    with pytest.raises(ValueError, match="data_source 'vg'"):
        load_grounding_json(json_file, {"coco": "/c"})


def test_grounding_json_errors_name_the_problem(tmp_path):
    bad = json.loads(json.dumps(FLICKR))
    bad["annotations"][1]["tokens_positive"] = [[30, 40]]
    with pytest.raises(ValueError, match=r"image id 7.*\[30, 40\]"):
        load_grounding_json(_write(tmp_path / "bad.json", bad), "imgs")
    no_caption = json.loads(json.dumps(FLICKR))
    del no_caption["images"][0]["caption"]
    with pytest.raises(ValueError, match="no 'caption'"):
        load_grounding_json(_write(tmp_path / "nocap.json", no_caption), "imgs")


LVIS = {
    "images": [
        {"id": 42, "height": 50, "width": 60, "coco_url": "http://images.cocodataset.org/val2017/000000000042.jpg",
         "not_exhaustive_category_ids": [2], "neg_category_ids": [3]},
    ],
    "annotations": [
        {"id": 1, "image_id": 42, "category_id": 3, "bbox": [1, 2, 10, 20], "area": 150,
         "segmentation": [[1, 2, 11, 2, 11, 22, 1, 22]]},
        {"id": 2, "image_id": 42, "category_id": 1, "bbox": [5, 5, 4, 4], "area": 16,
         "segmentation": [[5, 5, 9, 5, 9, 9]]},
    ],
    "categories": [
        {"id": 2, "name": "bow_(weapon)", "synonyms": ["bow_(weapon)"], "frequency": "r"},
        {"id": 1, "name": "aerosol_can", "synonyms": ["aerosol_can"], "frequency": "c"},
        {"id": 3, "name": "bull", "synonyms": ["horned_cow", "bull"], "frequency": "f"},
    ],
}


def test_lvis_json_registers_with_names_from_json(tmp_path):
    json_file = _write(tmp_path / "lvis.json", LVIS)
    _unregister("tiny_lvis", "tiny_lvis_preset")
    register_lvis_grounding("tiny_lvis", json_file, str(tmp_path / "coco"))  # no trailing "/": still joined
    assert MetadataCatalog.get("tiny_lvis").evaluator_type == "lvis"
    (d,) = DatasetCatalog.get("tiny_lvis")
    assert MetadataCatalog.get("tiny_lvis").thing_classes == ["aerosol_can", "bow_(weapon)", "bull"]
    assert d["file_name"] == os.path.join(str(tmp_path / "coco"), "val2017", "000000000042.jpg")
    assert [a["category_id"] for a in d["annotations"]] == [2, 0]
    assert d["annotations"][0]["bbox"] == [1, 2, 10, 20] and d["annotations"][0]["bbox_mode"] == BoxMode.XYWH_ABS
    assert d["not_exhaustive_category_ids"] == [2] and d["neg_category_ids"] == [3]

    register_lvis_grounding("tiny_lvis_preset", json_file, str(tmp_path), ["aerosol_can", "bow", "horned_cow"])
    with pytest.raises(ValueError, match="differ from the registered thing_classes"):
        DatasetCatalog.get("tiny_lvis_preset")
    _unregister("tiny_lvis", "tiny_lvis_preset")


COCO = {
    "images": [{"id": 1, "file_name": "a.jpg", "height": 40, "width": 40}],
    "annotations": [
        {"id": 1, "image_id": 1, "category_id": 7, "bbox": [1, 1, 5, 5], "area": 25, "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 3, "bbox": [2, 2, 5, 5], "area": 25, "iscrowd": 0},
    ],
    "categories": [{"id": 7, "name": "fish"}, {"id": 3, "name": "shark"}],
}


def test_coco_json_as_grounding_data(tmp_path):
    json_file = _write(tmp_path / "odinw.json", COCO)
    _unregister("tiny_det", "tiny_det_override")
    register_coco_grounding("tiny_det", json_file, str(tmp_path))
    assert MetadataCatalog.get("tiny_det").evaluator_type == "coco"
    (d,) = DatasetCatalog.get("tiny_det")
    assert MetadataCatalog.get("tiny_det").thing_classes == ["shark", "fish"]  # sorted by id: 3, 7
    assert [a["category_id"] for a in d["annotations"]] == [1, 0]

    # Renamed categories (OVERRIDE_CATEGORY): metadata is complete before loading.
    register_coco_grounding("tiny_det_override", json_file, str(tmp_path), thing_classes=["great shark", "fish"])
    meta = MetadataCatalog.get("tiny_det_override")
    assert meta.thing_classes == ["great shark", "fish"] and meta.thing_dataset_id_to_contiguous_id == {3: 0, 7: 1}
    (d,) = DatasetCatalog.get("tiny_det_override")
    assert [a["category_id"] for a in d["annotations"]] == [1, 0]
    with pytest.raises(ValueError, match="1 thing_classes given but .* has 2 categories"):
        register_coco_grounding("tiny_det_bad", json_file, str(tmp_path), thing_classes=["x"])
    _unregister("tiny_det", "tiny_det_override")


def test_odinw_layout(tmp_path):
    for folder in ("train", "valid"):
        os.makedirs(tmp_path / folder)
        _write(tmp_path / folder / "annotations_without_background.json", COCO)
    _unregister("tiny_odinw_train", "tiny_odinw_val")
    names = register_odinw("tiny_odinw", str(tmp_path), splits=("train", "val"))
    assert names == ["tiny_odinw_train", "tiny_odinw_val"]
    assert MetadataCatalog.get("tiny_odinw_val").image_root == str(tmp_path / "valid")
    (d,) = DatasetCatalog.get("tiny_odinw_val")
    assert d["file_name"] == str(tmp_path / "valid" / "a.jpg")
    with pytest.raises(ValueError, match="unknown ODinW split"):
        register_odinw("tiny_odinw", str(tmp_path), splits=("minival",))
    _unregister("tiny_odinw_train", "tiny_odinw_val")


def test_builtin_names_registered_without_disk_access():
    root = os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))
    expected = {
        "flickr30k_val": ("flickr", "mdetr_annotations/final_flickr_separateGT_val.json"),
        "refcoco+_testA": ("refexp", "mdetr_annotations/final_refcoco+_testA.json"),
        "refcocog_test": ("refexp", "mdetr_annotations/final_refcocog_test.json"),
        "mixed_train_no_coco": ("mixed", "mdetr_annotations/final_mixed_train_no_coco.json"),
        "lvis_v1_minival": ("lvis", "lvis/lvis_v1_minival_inserted_image_name.json"),
        "objects365_v2_val": ("coco", "objects365/annotations/zhiyuan_objv2_val.json"),
    }
    for name, (evaluator_type, json_file) in expected.items():
        assert name in DatasetCatalog.list()
        meta = MetadataCatalog.get(name)
        assert meta.evaluator_type == evaluator_type and meta.json_file == os.path.join(root, json_file)
    assert set(MDETR_BUILTIN) | set(LVIS_BUILTIN) | set(COCO_GROUNDING_BUILTIN) <= set(DatasetCatalog.list())
    assert MetadataCatalog.get("mixed_train_no_coco").image_root == {
        "coco": os.path.join(root, "coco/train2014"), "vg": os.path.join(root, "gqa/images")}
    lvis_names = MetadataCatalog.get("lvis_v1_val_glip").thing_classes
    assert len(lvis_names) == 1203 and lvis_names[0] == "aerosol_can" and "bull" in lvis_names
    assert "horned_cow" not in lvis_names  # detectron2's lvis_v1_val uses synonyms[0] instead


def test_register_datasets_from_cfg_registers_user_json(tmp_path):
    """DATASETS.REGISTER_COCO registers a user's COCO json so one command can evaluate it."""
    import json

    from detectron2.config import get_cfg
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from glip_d2 import add_glip_config
    from glip_d2.data.datasets import register_datasets_from_cfg

    coco = {
        "images": [{"id": 1, "file_name": "a.jpg", "height": 10, "width": 20}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [1, 2, 3, 4], "area": 12, "iscrowd": 0}],
        "categories": [{"id": 7, "name": "traffic_light"}, {"id": 9, "name": "dog"}],
    }
    json_file = tmp_path / "val.json"
    json_file.write_text(json.dumps(coco))
    cfg = add_glip_config(get_cfg())
    cfg.DATASETS.REGISTER_COCO = [("user_cfg_val", str(json_file), str(tmp_path))]
    assert register_datasets_from_cfg(cfg) == ["user_cfg_val"]
    dicts = DatasetCatalog.get("user_cfg_val")
    assert len(dicts) == 1 and dicts[0]["annotations"][0]["category_id"] == 0
    assert MetadataCatalog.get("user_cfg_val").evaluator_type == "coco"
    cfg.DATASETS.REGISTER_COCO = [("missing_val", str(tmp_path / "nope.json"), str(tmp_path))]
    with pytest.raises(FileNotFoundError, match="missing_val"):
        register_datasets_from_cfg(cfg)
