"""COCO caption metrics: the pure-Python PTB tokenizer (against the Java one when installed), the pycocoevalcap
wiring of score_captions, and CaptionEvaluator end to end on a tiny registered caption dataset.

The evaluator tests force ``use_java=False`` so they behave the same with and without Java (CI has none); the tests
that compare with or run the Java path are skipped, with the reason, where ``java`` is missing."""
import json
import os

import pytest
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog

from glip_d2 import add_glip_config
from glip_d2.evaluation import build_evaluator
from glip_d2.evaluation.caption import CaptionEvaluator
from glip_d2.evaluation.caption_metrics import (
    java_available,
    python_ptb_tokenize,
    score_captions,
    tokenize_captions,
)

needs_java = pytest.mark.skipif(not java_available(), reason="java is not installed: pycocoevalcap's PTBTokenizer, "
                                "METEOR and SPICE cannot run")


@pytest.mark.parametrize("raw,expected", [
    ("a man's hat.", "a man 's hat"),
    ("A MAN RIDING A HORSE.", "a man riding a horse"),
    ("Two dogs, a cat; and a bird!", "two dogs a cat and a bird"),
    ("Don't touch.", "do n't touch"),
    ("They can't, won't, and cannot go.", "they ca n't wo n't and can not go"),
    ("I'm sure they're here and we've left", "i 'm sure they 're here and we 've left"),
    ("the dogs' bone", "the dogs bone"),
    ('He said "hello" to \'them\'', "he said hello to them"),
    ("\u201cSmart\u201d quotes don\u2019t matter", "smart quotes do n't matter"),
    ("A black-and-white photo of a t-shirt", "a black-and-white photo of a t-shirt"),
    ("a 3.5 inch screen and 1,000 people", "a 3.5 inch screen and 1,000 people"),
    ("a cat sitting... and waiting \u2026", "a cat sitting and waiting"),
    ("a man -- standing - there", "a man standing there"),
    ("Mr. Smith in the U.S. at 5 p.m.", "mr. smith in the u.s. at 5 p.m."),
    ("a (small) dog", "a -lrb- small -rrb- dog"),  # official quirk: PUNCTUATIONS lists "-LRB-", output is lower-case
    ("what's that?!", "what 's that ?!"),  # "?!" is one token, not in PUNCTUATIONS
    ("o'clock in the '90s", "o'clock in the '90s"),
    ("gonna wanna", "gon na wan na"),
    ("cost $5 or 10%", "cost $ 5 or 10 %"),
    ("", ""),
    ("  spaced   out\ttext  ", "spaced out text"),
])
def test_python_tokenizer_handmade(raw, expected):
    assert python_ptb_tokenize(raw) == expected


# Varied captions: COCO style, odd casing and spacing, punctuation, contractions, quotes, numbers, abbreviations.
VARIED_CAPTIONS = [
    "A man riding a wave on top of a surfboard.",
    "A group of people standing around a kitchen .",
    "Two dogs don't play, they can't; won't they?",
    "a man's hat and the dogs' bone",
    "\"Hello,\" she said to the 'quoted' crowd",
    "A black-and-white photo of a 3.5 inch cat...",
    "Mr. Smith lives in the U.S. now.",
    "A (small) dog [on] a {bed}.",
    "It costs $5.50 or 5% off & more!",
    "A/B test and 1/2 of a * star",
    "Cannot gonna wanna gotta lemme gimme",
    "It's the dogs' bone; o'clock in the '90s",
    "\u201cSmart quotes\u201d and \u2018single\u2019 ones\u2026 and don\u2019t \u2014 dash \u2013 en",
    "A man -- standing - there",
    "Hello...world and so.... on",
    "#hashtag @user 1,000 people at 10:30 am",
    "A MAN RIDING A HORSE ON THE BEACH",
    "what's that?!? Really??",
    "a dog.a cat and hello.world",
    "Y'all ain't seen nothin'",
    "a 2nd place 3rd time 1990s cat 4x4 truck",
    "He said \"no.\" to the No. 5 bus",
    "etc. and so on vs. them",
    "it is 5'10\" tall and a 12-year-old boy",
    "the cat., a dog: a bird",
    "a 5 7/8 inch pipe and \u00bd cup",
    "\u00a35 and \u20ac3 and \u00a2",
    "a dog  with   extra spaces\tand a tab",
    "she'd've he'll we've you'd I'm",
    "e-mail me at foo@bar.com or http://www.example.com",
    "the mcdonald's sign, an o'neil shop",
    "A kid.",
]


@needs_java
def test_python_tokenizer_equals_java_ptbtokenizer():
    java = tokenize_captions({i: [c] for i, c in enumerate(VARIED_CAPTIONS)}, use_java=True)
    mismatches = [(c, java[i][0], python_ptb_tokenize(c)) for i, c in enumerate(VARIED_CAPTIONS)
                  if java[i][0] != python_ptb_tokenize(c)]
    assert not mismatches, "\n".join(f"{c!r}: java {j!r}, python {p!r}" for c, j, p in mismatches)


def test_tokenize_captions_python_path_keeps_keys_and_order():
    out = tokenize_captions({"a": ["A dog.", "Two CATS!"], 7: []}, use_java=False)
    assert out == {"a": ["a dog", "two cats"], 7: []}


REFS = {
    1: ["a brown dog is running on the green grass", "a dog running across a grassy field",
        "a brown dog runs on the grass outside"],
    2: ["a man is riding a red bicycle down the street", "a person rides a bike on a city street",
        "a man on a red bike in the street"],
    3: ["two cats are sleeping on a blue couch", "a pair of cats asleep on the sofa",
        "two cats lying on a blue couch together"],
}


def _scores(candidates):
    return score_captions(candidates, REFS, use_java=False)


def test_metric_wiring_identical_shuffled_wrong():
    identical = _scores({k: v[0] for k, v in REFS.items()})
    shuffled = _scores({1: "grass the dog running green a on is brown",
                        2: "street the a riding red bicycle is man down a",
                        3: "couch sleeping blue two on a are cats"})
    wrong = _scores({1: "a plate of food on a wooden table", 2: "a clock tower under a cloudy sky",
                     3: "an airplane parked at the airport gate"})
    assert list(identical) == ["BLEU_1", "BLEU_2", "BLEU_3", "BLEU_4", "ROUGE_L", "CIDEr_D"]  # no Java: no METEOR
    assert identical["BLEU_4"] == pytest.approx(100.0)
    assert identical["BLEU_1"] == pytest.approx(100.0) and identical["ROUGE_L"] == pytest.approx(100.0)
    assert shuffled["BLEU_1"] == pytest.approx(100.0)  # same words ...
    assert shuffled["BLEU_4"] < identical["BLEU_4"] and shuffled["CIDEr_D"] < identical["CIDEr_D"]  # ... wrong order
    for key in ("BLEU_1", "BLEU_4", "ROUGE_L", "CIDEr_D"):
        assert wrong[key] < shuffled[key] and wrong[key] < identical[key], key
    # CIDEr-D (x100): an exact reference scores far above anything else on this set
    assert identical["CIDEr_D"] > 2 * shuffled["CIDEr_D"] and identical["CIDEr_D"] > 100


def test_scores_ignore_case_and_punctuation():
    a = _scores({k: v[0] for k, v in REFS.items()})
    b = _scores({k: v[0].upper() + " ." for k, v in REFS.items()})
    assert a == b


def test_input_errors():
    with pytest.raises(ValueError, match=r"without a candidate \[3\]"):
        score_captions({1: "a dog", 2: "a man"}, REFS, use_java=False)
    with pytest.raises(ValueError, match=r"without references \[9\]"):
        score_captions({**{k: "a dog" for k in REFS}, 9: "extra"}, REFS, use_java=False)
    with pytest.raises(ValueError, match="id 2 has no reference captions"):
        score_captions({1: "a dog", 2: "a man"}, {1: ["a dog"], 2: []}, use_java=False)
    with pytest.raises(ValueError, match="candidate for id 1 is a list"):
        score_captions({1: ["a dog"]}, {1: ["a dog"]}, use_java=False)


def test_without_java_skips_meteor_and_spice_and_says_so_once(monkeypatch, caplog):
    from glip_d2.evaluation import caption_metrics

    monkeypatch.setattr(caption_metrics, "java_available", lambda: False)
    monkeypatch.setattr(caption_metrics, "_warned_no_java", False)
    candidates = {k: v[0] for k, v in REFS.items()}
    with caplog.at_level("INFO", logger=caption_metrics.__name__):
        first = score_captions(candidates, REFS, spice=True)  # use_java=None: auto-detected (absent here)
        second = score_captions(candidates, REFS)
    assert "METEOR" not in first and "SPICE" not in first and first == second
    assert sum("METEOR/SPICE are skipped" in r.getMessage() for r in caplog.records) == 1


@needs_java
def test_java_path_meteor():
    # one call only: METEOR starts a JVM that loads its paraphrase tables (several seconds)
    java = score_captions({k: v[0] for k, v in REFS.items()}, REFS, use_java=True)
    assert list(java) == ["BLEU_1", "BLEU_2", "BLEU_3", "BLEU_4", "METEOR", "ROUGE_L", "CIDEr_D"]
    assert java["BLEU_4"] == pytest.approx(100.0) and java["METEOR"] > 90
    # the Java tokenizer gives these plain captions the same tokens, hence the same n-gram scores
    python = score_captions({k: v[0] for k, v in REFS.items()}, REFS, use_java=False)
    for key in python:
        assert java[key] == pytest.approx(python[key]), key


# --------------------------------------------------------------------------------------------------------------------
# CaptionEvaluator
# --------------------------------------------------------------------------------------------------------------------
@pytest.fixture
def caption_dataset():
    name = "test_caption_metric_tiny"
    records = [{"file_name": f"{k}.jpg", "image_id": k, "height": 8, "width": 8, "captions": v}
               for k, v in REFS.items()]
    records.append({"file_name": "4.jpg", "image_id": 4, "height": 8, "width": 8,
                    "captions": ["a red apple on a white plate", "an apple on a plate"]})
    DatasetCatalog.register(name, lambda: records)
    MetadataCatalog.get(name).set(evaluator_type="caption")
    yield name
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def _run(evaluator, captions: dict):
    evaluator.reset()
    items = list(captions.items())
    for i in range(0, len(items), 2):  # batches of 2
        batch = items[i:i + 2]
        evaluator.process([{"image_id": k, "file_name": f"{k}.jpg"} for k, _ in batch],
                          [{"caption": c} for _, c in batch])
    return evaluator.evaluate()


def test_evaluator_end_to_end(caption_dataset, tmp_path):
    evaluator = CaptionEvaluator(caption_dataset, output_dir=str(tmp_path), distributed=False, use_java=False)
    captions = {1: REFS[1][0], 2: REFS[2][0], 3: REFS[3][0], 4: "a red apple on a white plate"}
    results = _run(evaluator, captions)
    assert list(results) == ["caption"]
    assert set(results["caption"]) == {"BLEU_1", "BLEU_2", "BLEU_3", "BLEU_4", "ROUGE_L", "CIDEr_D"}
    assert results["caption"]["BLEU_4"] == pytest.approx(100.0)
    saved = json.loads((tmp_path / "caption_predictions.json").read_text())
    assert saved == [{"image_id": k, "caption": c} for k, c in captions.items()]
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]  # the temp file was renamed away


def test_evaluator_subset_duplicates_and_errors(caption_dataset, tmp_path):
    evaluator = CaptionEvaluator(caption_dataset, distributed=False, use_java=False)
    # a subset of the split (2 of 4 images); the duplicate of image 1 is ignored (the first caption counts)
    evaluator.reset()
    evaluator.process([{"image_id": 1}, {"image_id": 3}], [{"caption": REFS[1][0]}, {"caption": REFS[3][0]}])
    evaluator.process([{"image_id": 1}], [{"caption": "a plate of food"}])
    subset = evaluator.evaluate()["caption"]
    assert subset == score_captions({1: REFS[1][0], 3: REFS[3][0]}, {1: REFS[1], 3: REFS[3]}, use_java=False)
    assert subset["BLEU_4"] == pytest.approx(100.0)

    evaluator.reset()
    with pytest.raises(ValueError, match="image_id 2.*needs 'caption'"):
        evaluator.process([{"image_id": 2}], [{"tokens": [1, 2]}])
    evaluator.reset()
    assert evaluator.evaluate() == {}  # nothing processed: a warning, no metrics
    evaluator.process([{"image_id": 99}], [{"caption": "a dog"}])
    with pytest.raises(ValueError, match=r"not in 'test_caption_metric_tiny': \[99\]"):
        evaluator.evaluate()


def test_build_evaluator_picks_caption(caption_dataset, tmp_path):
    cfg = get_cfg()
    add_glip_config(cfg)
    evaluator = build_evaluator(cfg, caption_dataset, output_dir=str(tmp_path))
    assert isinstance(evaluator, CaptionEvaluator) and evaluator.output_dir == str(tmp_path)


def test_missing_pycocoevalcap_is_named_before_any_inference(monkeypatch, caption_dataset):
    """pycocoevalcap is the "caption" extra (make demo leaves it out): without it the evaluator refuses to be built
    and says what to install, instead of failing after a whole inference pass."""
    import sys

    monkeypatch.setitem(sys.modules, "pycocoevalcap", None)  # makes `import pycocoevalcap` raise ImportError
    with pytest.raises(ImportError, match=r"pip install 'pycocoevalcap>=1.2'.*glip_d2\[caption\]"):
        CaptionEvaluator(caption_dataset, distributed=False)
    with pytest.raises(ImportError, match="pycocoevalcap"):
        score_captions({1: "a red star"}, {1: ["a red star"]}, use_java=False)
