"""The official VQA accuracy and answer normalisation against hand-worked examples, and the evaluator around them."""
import math

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog

from glip_d2 import add_glip_config
from glip_d2.evaluation import build_evaluator
from glip_d2.evaluation.vqa import VQAEvaluator, vqa_results
from glip_d2.evaluation.vqa_answers import (
    normalize_answer,
    process_digit_article,
    process_punctuation,
    soft_score,
    vqa_accuracy,
)


@pytest.mark.parametrize("raw,expected", [
    ("two", "2"), ("Two", "2"), ("none", "0"), ("ten", "10"),
    ("a dog", "dog"), ("The dog", "dog"), ("an apple", "apple"),
    ("yes.", "yes"), ("yes!", "yes"), ("  yes\n", "yes"), ("Yes", "yes"),
    ("dont", "don't"), ("isnt", "isn't"), ("couldnt've", "couldn't've"), ("couldn'tve", "couldn't've"),
    ("2.5", "2.5"), ("1,000", "1000"), ("black-and-white", "black and white"),
    ("red, white", "red white"),  # ", " touches a space: deleted; the words stay apart
    ("its", "its"), ("well", "well"),  # ordinary words are not contractions
])
def test_normalisation_cases(raw, expected):
    assert normalize_answer(raw) == expected


def test_punctuation_rule_depends_on_spaces():
    # touching a space: deleted; inside a word: replaced by a space; a digit,digit group anywhere: all deleted
    assert process_punctuation("t-shirt") == "t shirt"
    assert process_punctuation("left - right") == "left  right"
    assert process_punctuation("1,000 t-shirts") == "1000 tshirts"
    assert process_punctuation("dr. who") == "dr who" and process_punctuation("3.14") == "3.14"
    assert process_digit_article("A Two  the three") == "2 3"


def test_accuracy_hand_worked():
    # all 10 agree: every leave-one-out subset has 9 matches -> 1
    assert vqa_accuracy("yes", ["yes"] * 10) == 1.0
    # 2 x "2", 8 x "3", predicted "two" -> "2": the 2 givers see 1 match (1/3), the 8 others see 2 (2/3): 0.6
    assert vqa_accuracy("two", ["2"] * 2 + ["3"] * 8) == pytest.approx((2 / 3 * 8 + 1 / 3 * 2) / 10)
    # 3 givers: givers see 2 (2/3), the other 7 see 3 (1) -> 0.9
    assert vqa_accuracy("red", ["red"] * 3 + ["blue"] * 7) == pytest.approx(0.9)
    # 1 giver: the giver sees 0, the other 9 see 1 (1/3) -> 0.3
    assert vqa_accuracy("cat", ["cat"] + ["dog"] * 9) == pytest.approx(0.3)
    assert vqa_accuracy("bird", ["cat"] + ["dog"] * 9) == 0.0
    # 4 or more givers: every subset keeps >= 3 -> 1
    assert vqa_accuracy("red", ["red"] * 4 + ["blue"] * 6) == 1.0


def test_accuracy_normalises_prediction_and_disagreeing_answers():
    assert vqa_accuracy("A dog.", ["dog"] * 10) == 1.0
    assert vqa_accuracy("dont know", ["don't know"] * 10) == 1.0
    # the human answers are punctuation-processed when they disagree: "yes!" counts as "yes"
    assert vqa_accuracy("yes", ["yes"] * 9 + ["yes!"]) == 1.0
    # ... and left alone when they all agree (official: VQA v2 stores them normalised)
    assert vqa_accuracy("yes", ["yes!"] * 10) == 0.0
    # the human answers are not digit-normalised: "two" written by annotators does not match "2"
    assert vqa_accuracy("2", ["two"] * 5 + ["2"] * 5) == 1.0
    assert vqa_accuracy("2", ["two"] * 8 + ["2"] * 2) == pytest.approx(0.6)
    with pytest.raises(ValueError, match="at least one"):
        vqa_accuracy("yes", [])


def test_soft_scores_equal_leave_one_out_accuracy():
    assert [round(soft_score(c, 10), 6) for c in range(5)] == [0.0, 0.3, 0.6, 0.9, 1.0]
    for n in (3, 5, 10):
        for c in range(n + 1):
            answers = ["x"] * c + ["y"] * (n - c)
            assert soft_score(c, n) == pytest.approx(vqa_accuracy("x", answers))


def test_results_per_answer_type():
    records = {
        1: {"answers": ["yes"] * 10, "answer_type": "yes/no"},
        2: {"answers": ["2"] * 2 + ["3"] * 8, "answer_type": "number"},
        3: {"answers": ["red"] * 10, "answer_type": "other"},
        4: {"answers": [], "answer_type": "other"},  # no annotations: not scored
    }
    res = vqa_results({1: "yes", 2: "two", 3: "blue", 4: "x"}, records)
    assert res["yes/no"] == 100.0 and res["number"] == 60.0 and res["other"] == 0.0
    assert res["accuracy"] == pytest.approx(round(100 * 1.6 / 3, 2)) and res["count"] == 3
    with pytest.raises(ValueError, match="not in the dataset"):
        vqa_results({99: "yes"}, records)


def test_evaluator_argmax_over_vocabulary(tmp_path):
    name = "_test_vqa_metric_set"
    records = [{"question_id": 1, "answers": ["yes"] * 10, "answer_type": "yes/no"},
               {"question_id": 2, "answers": ["2"] * 10, "answer_type": "number"}]
    DatasetCatalog.register(name, lambda: records)
    MetadataCatalog.get(name).set(evaluator_type="vqa", answer_vocab=["yes", "no", "2"])
    try:
        evaluator = build_evaluator(add_glip_config(get_cfg()), name, str(tmp_path))
        assert isinstance(evaluator, VQAEvaluator)
        evaluator.reset()
        evaluator.process([{"question_id": 1}, {"question_id": 2}],
                          [{"vqa_scores": torch.tensor([0.9, 0.1, 0.0])}, {"vqa_scores": torch.tensor([0.5, 0.1, 0.2])}])
        res = evaluator.evaluate()["vqa"]
        assert res["accuracy"] == 50.0 and res["yes/no"] == 100.0 and res["number"] == 0.0
        assert (tmp_path / "vqa_predictions.json").is_file()
        with pytest.raises(ValueError, match="3 in its answer vocabulary"):
            evaluator.process([{"question_id": 1}], [{"vqa_scores": torch.zeros(5)}])
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    assert math.isnan(vqa_results({}, {})["accuracy"])
