"""The self-training teacher's box selection, with a stand-in predictor whose outputs are chosen by the test: which
boxes are kept (threshold, top-k per phrase occurrence, best first), which spans they carry, and what happens to
captions without a phrase and to unreadable images."""
import cv2
import numpy as np
import pytest
import torch
from detectron2.structures import Boxes, Instances

from glip_d2.data.prompts import Prompt
from glip_d2.self_training import BadPairError, GroundingTeacher, ImageTextPair


class ScriptedPredictor:
    """``predict_batch`` returns, for every image, the detections ``script[caption]`` = [(label, score, box)]."""

    def __init__(self, script):
        self.script = script
        self.batches = []

    def encode_prompt(self, prompt):
        if len(prompt.caption) > 200:
            raise ValueError("too long for the teacher's prompt")
        return [{}]

    def predict_batch(self, images, prompts):
        assert all(isinstance(p, Prompt) for p in prompts)
        self.batches.append(len(images))
        out = []
        for image, prompt in zip(images, prompts):
            dets = self.script.get(prompt.caption, [])
            inst = Instances(image.shape[:2])
            inst.pred_boxes = Boxes(torch.tensor([d[2] for d in dets], dtype=torch.float32).reshape(-1, 4))
            inst.scores = torch.tensor([d[1] for d in dets], dtype=torch.float32)
            inst.pred_classes = torch.tensor([d[0] for d in dets], dtype=torch.long)
            out.append(inst)
        return out


@pytest.fixture
def image_path(tmp_path):
    path = str(tmp_path / "a.jpg")
    cv2.imwrite(path, np.full((40, 60, 3), 128, np.uint8))
    return path


def pair(index, image, caption):
    return ImageTextPair(index=index, image=image, caption=caption, where=f"pairs.jsonl:{index + 1}")


def test_keeps_the_best_boxes_above_the_threshold_per_phrase_occurrence(image_path):
    caption = "a dog chases a red ball and a dog"  # rows: "a dog" (0), "a red ball" (1), "a dog" again (2)
    script = {caption: [
        (0, 0.9, [1, 2, 11, 22]), (0, 0.6, [0, 0, 5, 5]), (0, 0.7, [2, 2, 8, 8]), (0, 0.2, [3, 3, 9, 9]),
        (1, 0.55, [10, 10, 30, 20]), (1, 0.49, [0, 0, 1, 1]),
    ]}
    teacher = GroundingTeacher(ScriptedPredictor(script), score_threshold=0.5, topk_per_phrase=2)
    (record,) = teacher.label([pair(0, image_path, caption)])
    assert (record["width"], record["height"]) == (60, 40)
    got = [(b["phrase"], b["tokens_positive"], round(b["score"], 2), b["bbox"]) for b in record["boxes"]]
    assert got == [
        ("a dog", [[0, 5]], 0.9, [1.0, 2.0, 10.0, 20.0]),  # x, y, w, h
        ("a dog", [[0, 5]], 0.7, [2.0, 2.0, 6.0, 6.0]),  # top 2 of 3 above 0.5; 0.6 dropped
        ("a red ball", [[13, 23]], 0.55, [10.0, 10.0, 20.0, 10.0]),
    ]
    for box in record["boxes"]:
        s, e = box["tokens_positive"][0]
        assert caption[s:e] == box["phrase"]
    assert teacher.counts == {"pairs": 1, "boxes": 3, "no_phrase": 0, "bad_image": 0}


def test_captions_without_a_usable_phrase_are_processed_pairs_without_boxes(image_path):
    predictor = ScriptedPredictor({})
    teacher = GroundingTeacher(predictor, batch_size=2)
    pairs = [pair(0, image_path, "is very nice"), pair(1, image_path, "a cat " * 60), pair(2, image_path, "a cat")]
    records = teacher.label(pairs)
    assert [r["pair"].index for r in records] == [0, 1, 2] and all(r["boxes"] == [] for r in records)
    assert teacher.counts["no_phrase"] == 2 and teacher.counts["pairs"] == 3
    assert predictor.batches == [1]  # only the usable caption reached the model


def test_unreadable_images_stop_with_the_pair_named_or_are_skipped_and_counted(image_path, tmp_path):
    missing = str(tmp_path / "missing.jpg")
    with pytest.raises(BadPairError, match=r"pairs.jsonl:2: cannot read the image .*missing.jpg"):
        GroundingTeacher(ScriptedPredictor({})).label([pair(0, image_path, "a cat"), pair(1, missing, "a cat")])
    teacher = GroundingTeacher(ScriptedPredictor({}), on_bad_row="skip")
    records = teacher.label([pair(0, image_path, "a cat"), pair(1, missing, "a cat"), pair(2, image_path, "a cat")])
    assert [r["pair"].index for r in records] == [0, 2] and teacher.counts["bad_image"] == 1


def test_settings_are_checked():
    with pytest.raises(ValueError, match="score_threshold"):
        GroundingTeacher(ScriptedPredictor({}), score_threshold=1.5)
    with pytest.raises(ValueError, match="topk_per_phrase"):
        GroundingTeacher(ScriptedPredictor({}), topk_per_phrase=0)
    with pytest.raises(ValueError, match="on_bad_row"):
        GroundingTeacher(ScriptedPredictor({}), on_bad_row="ignore")
