"""VQA data: registration of a handwritten VQA v2-format json, the answer vocabulary threshold, soft targets, the
mapper, the synthetic VQA set, and clear errors for bad input."""
import json
import os
from collections import Counter

import cv2
import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog

from glip_d2.data.datasets.synthetic import CATEGORY_NAMES
from glip_d2.data.datasets.synthetic_vqa import SYNTHETIC_VQA_DATASETS, generate_synthetic_vqa, register_synthetic_vqa
from glip_d2.data.datasets.vqa import build_answer_vocab, load_vqa_json, register_vqa
from glip_d2.data.vqa_mapper import VQADatasetMapper
from glip_d2.engine.defaults import load_glip_cfg

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK = os.path.join(REPO, "configs", "quick_schedules", "glipv2_tiny_vqa_synthetic.yaml")


def _answers(*pairs):
    """[(answer, count), ...] -> 10 VQA v2 answer dicts."""
    given = [a for a, n in pairs for _ in range(n)]
    assert len(given) == 10
    return [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(given)]


def _write_set(folder, questions, annotations, images=None):
    folder.mkdir(parents=True, exist_ok=True)
    for image_id in sorted({q["image_id"] for q in questions}):
        cv2.imwrite(str(folder / f"{image_id}.jpg"), np.full((40, 60, 3), 30 * image_id, np.uint8))
    q = {"questions": questions, **({"images": images} if images is not None else {})}
    (folder / "q.json").write_text(json.dumps(q))
    (folder / "a.json").write_text(json.dumps({"annotations": annotations}))
    return str(folder / "q.json"), str(folder / "a.json"), str(folder)


def _ann(qid, image_id, mca, answers, answer_type="other"):
    return {"question_id": qid, "image_id": image_id, "answers": answers, "multiple_choice_answer": mca,
            "answer_type": answer_type, "question_type": "what"}


@pytest.fixture()
def handwritten(tmp_path):
    questions = [
        {"image_id": 1, "question": "Is it dark?", "question_id": 11},
        {"image_id": 1, "question": "How many dogs?", "question_id": 12},
        {"image_id": 2, "question": "Is it dark?", "question_id": 21},
        {"image_id": 2, "question": "What color?", "question_id": 22},
    ]
    annotations = [
        _ann(11, 1, "yes", _answers(("yes", 9), ("no", 1)), "yes/no"),
        _ann(12, 1, "2", _answers(("2", 5), ("two", 3), ("3", 2)), "number"),  # "two" normalises to "2": 8 of 10
        _ann(21, 2, "yes", _answers(("yes", 8), ("Yes.", 2)), "yes/no"),
        _ann(22, 2, "red", _answers(("red", 2), ("dark red", 1), ("the red", 1), ("blue", 6))),
    ]
    names = ("_vqa_test_train", "_vqa_test_val")
    yield _write_set(tmp_path / "set", questions, annotations), names
    for n in names:
        if n in DatasetCatalog.list():
            DatasetCatalog.remove(n)
            MetadataCatalog.remove(n)


def test_registration_round_trip(handwritten):
    (qj, aj, root), (train, val) = handwritten
    vocab = register_vqa(train, qj, aj, root, image_pattern="{image_id}.jpg", min_answer_count=1)
    # multiple_choice_answers: yes x2, 2, red -> most frequent first, ties alphabetical
    assert vocab == ["yes", "2", "red"] == MetadataCatalog.get(train).answer_vocab
    assert MetadataCatalog.get(train).evaluator_type == "vqa"
    records = {r["question_id"]: r for r in DatasetCatalog.get(train)}
    assert records[11]["file_name"] == os.path.join(root, "1.jpg") and records[11]["question"] == "Is it dark?"
    assert records[11]["answers"][:2] == ["yes", "yes"] and records[11]["answer_type"] == "yes/no"
    # soft scores = leave-one-out accuracy of each answer in the vocabulary: yes given 9x -> 1; "no" not in vocab
    assert records[11]["answer_ids"] == [0] and records[11]["answer_scores"] == [1.0]
    assert records[12]["answer_ids"] == [1] and records[12]["answer_scores"] == [1.0]  # "2" + "two" = 8 of 10
    assert records[21]["answer_scores"] == [1.0]  # "Yes." normalises to "yes"
    ids, scores = records[22]["answer_ids"], records[22]["answer_scores"]
    assert ids == [2] and scores == pytest.approx([0.9])  # "red" x2 + "the red" = 3 of 10 ("dark red" differs)
    # validation sets share the training vocabulary
    assert register_vqa(val, qj, aj, root, train, image_pattern="{image_id}.jpg") == vocab
    assert MetadataCatalog.get(val).answer_vocab_source == train


def test_vocabulary_threshold():
    anns = [{"question_id": i, "multiple_choice_answer": a} for i, a in enumerate(["yes"] * 9 + ["no"] * 8 + ["2"])]
    assert build_answer_vocab(anns, 9) == ["yes"]
    assert build_answer_vocab(anns, 8) == ["yes", "no"]
    assert build_answer_vocab(anns, 1) == ["yes", "no", "2"]
    with pytest.raises(ValueError, match="vocabulary would be empty"):
        build_answer_vocab(anns, 10)


def test_images_list_and_soft_score_values(tmp_path):
    questions = [{"image_id": 5, "question": "what?", "question_id": 1}]
    annotations = [_ann(1, 5, "a1", _answers(("a1", 3), ("a2", 2), ("a3", 1), ("a4", 4)))]
    images = [{"id": 5, "file_name": "5.jpg", "height": 40, "width": 60}]
    qj, aj, root = _write_set(tmp_path, questions, annotations, images)
    (record,) = load_vqa_json(qj, aj, root, ["a1", "a2", "a3", "a4"])
    assert record["height"] == 40 and record["file_name"] == os.path.join(root, "5.jpg")
    assert dict(zip(record["answer_ids"], record["answer_scores"])) == pytest.approx({0: 0.9, 1: 0.6, 2: 0.3, 3: 1.0})


@pytest.mark.parametrize("mutate,match", [
    (lambda q, a: a.append(_ann(99, 1, "yes", _answers(("yes", 10)))), "question_id 99 has no question"),
    (lambda q, a: a[0]["answers"].__setitem__(3, {"answer": " . ", "answer_id": 4}), "normalises to an empty string"),
    (lambda q, a: a[0]["answers"].__setitem__(3, {"answer": 7, "answer_id": 4}), "is not a string"),
    (lambda q, a: a[0].__setitem__("image_id", 2), "image_id 2 in the annotations"),
    (lambda q, a: q.append(dict(q[0])), "appears twice"),
])
def test_bad_annotations_are_clear_errors(tmp_path, mutate, match):
    questions = [{"image_id": 1, "question": "Is it dark?", "question_id": 11}]
    annotations = [_ann(11, 1, "yes", _answers(("yes", 10)))]
    mutate(questions, annotations)
    qj, aj, root = _write_set(tmp_path, questions, annotations)
    with pytest.raises(ValueError, match=match):
        load_vqa_json(qj, aj, root, ["yes"], image_pattern="{image_id}.jpg")
    with pytest.raises(ValueError, match="image_pattern"):
        load_vqa_json(qj, None, root, ["yes"])


@pytest.fixture(scope="module")
def cfg():
    return load_glip_cfg(QUICK, [])


def test_mapper_targets_and_question_errors(cfg, handwritten):
    (qj, aj, root), (train, _) = handwritten
    register_vqa(train, qj, aj, root, image_pattern="{image_id}.jpg", min_answer_count=1)
    records = {r["question_id"]: r for r in DatasetCatalog.get(train)}
    mapper = VQADatasetMapper(cfg, is_train=True)
    out = mapper(records[12])
    assert out["caption"] == "How many dogs?" and out["question_id"] == 12
    assert torch.equal(out["answer_ids"], torch.tensor([1])) and torch.equal(out["answer_scores"], torch.tensor([1.0]))
    assert out["image"].shape[0] == 3 and min(out["image"].shape[1:]) == cfg.INPUT.MIN_SIZE_TRAIN[0]
    assert "positive_map" not in out and "instances" not in out  # a question has no labels
    with pytest.raises(ValueError, match="question_id 12: the question is empty"):
        mapper(dict(records[12], question="  "))
    with pytest.raises(ValueError, match=r"question_id 12: the question has \d+ tokens.*MAX_QUERY_LEN=32"):
        mapper(dict(records[12], question="is there a red star " * 10))
    unanswered = {k: v for k, v in records[12].items() if not k.startswith("answer")}
    with pytest.raises(ValueError, match="question_id 12: a training record needs answers"):
        mapper(unanswered)
    assert "answer_ids" not in VQADatasetMapper(cfg, is_train=False)(unanswered)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("synthetic_vqa"))
    register_synthetic_vqa(root, num_train=40, num_val=8, num_test=8, seed=0, min_answer_count=2)
    return root


def test_synthetic_vqa_set(synthetic, cfg):
    train = DatasetCatalog.get("synthetic_vqa_train")
    vocab = MetadataCatalog.get("synthetic_vqa_train").answer_vocab
    assert MetadataCatalog.get("synthetic_vqa_test").answer_vocab == vocab
    assert {"yes", "no", "1", "red", "circle"} <= set(vocab)
    kinds = Counter(r["answer_type"] for r in train)
    assert set(kinds) == {"yes/no", "number", "other"}
    yes_no = Counter(r["multiple_choice_answer"] for r in train if r["answer_type"] == "yes/no")
    assert abs(yes_no["yes"] - yes_no["no"]) <= 1  # balanced by construction
    noisy = 0
    for r in train:
        counts = Counter(r["answers"])
        assert len(r["answers"]) == 10 and counts.most_common(1)[0] == (r["multiple_choice_answer"],
                                                                        counts[r["multiple_choice_answer"]])
        assert counts[r["multiple_choice_answer"]] >= 7
        noisy += len(counts) > 1
        boxes = r.get("annotations", [])
        names = [CATEGORY_NAMES[b["category_id"] - 1] for b in boxes]
        q, a = r["question"], r["multiple_choice_answer"]
        if q.startswith("what color is the"):  # exactly one object of that shape, of the answered colour
            assert len(names) == 1 and names[0] == f"{a} {q.split()[-1][:-1]}"
        elif q.startswith("how many"):
            assert len(boxes) == int(a)
        elif q.startswith("is there a"):
            assert (len(boxes) > 0) == (a == "yes") and all(n in q for n in names)
        for b in boxes:  # the spans name the objects in the question
            s, e = b["tokens_positive"][0]
            assert q[s:e] in q and e <= len(q)
    assert 0 < noisy < len(train)  # some questions have human-like mistakes, most do not
    # the scenes are the grounding set's: same pixels as synthetic_train image 1
    from glip_d2.data.datasets.synthetic import render_sample

    image, _ = render_sample(np.random.default_rng([0, 0, 0]))
    saved = cv2.imread(train[0]["file_name"])
    assert saved.shape == image.shape and np.abs(saved.astype(int) - image).mean() < 6  # JPEG noise
    # grounded boxes become GLIP prompt fields, and training instances when the grounding loss is kept
    grounded = next(r for r in train if r.get("annotations"))
    out = VQADatasetMapper(cfg, is_train=False)(grounded)
    assert out["positive_map"].shape[1] == cfg.MODEL.LANGUAGE.MAX_QUERY_LEN and out["phrases"]
    cfg2 = cfg.clone()
    cfg2.defrost()
    cfg2.MODEL.VQA.KEEP_DETECTION_LOSS = True
    out = VQADatasetMapper(cfg2, is_train=True)(grounded)
    assert len(out["instances"]) == len(grounded["annotations"])
    assert out["instances"].gt_positive_map.shape == (len(grounded["annotations"]), cfg.MODEL.LANGUAGE.MAX_QUERY_LEN)


def test_synthetic_vqa_is_deterministic(tmp_path, synthetic):
    generate_synthetic_vqa(str(tmp_path), num_train=40, num_val=8, num_test=8, seed=0)
    for split in ("train", "val", "test"):
        for kind in ("questions", "annotations"):
            with open(os.path.join(synthetic, f"{split}_{kind}.json")) as f, \
                    open(tmp_path / f"{split}_{kind}.json") as g:
                assert json.load(f) == json.load(g)
    assert sorted(SYNTHETIC_VQA_DATASETS) == ["synthetic_vqa_test", "synthetic_vqa_train", "synthetic_vqa_val"]
