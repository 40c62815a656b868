"""GLIPv2 masked language modelling: masking statistics and rules, greenlight maps per data kind, head and loss."""
import math

import pytest
import torch
from transformers import BertConfig

from glip_d2.data.greenlight import (
    GREENLIGHT_OFF,
    build_greenlight_map,
    detection_greenlight,
    token_category_ids,
)
from glip_d2.modeling.glipv2 import IGNORE_INDEX, LMPredictionHead, mask_tokens, masked_token_accuracy, mlm_loss

VOCAB = 30522
MASK_ID, CLS_ID, SEP_ID, PAD_ID = 103, 101, 102, 0
MAX_LEN = 32


def captions(num: int, seed: int = 0):
    """``num`` encoded captions of random length: [CLS] words [SEP] then padding; word ids avoid special ids."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(4, MAX_LEN + 1, (num,), generator=g)
    ids = torch.randint(1000, VOCAB, (num, MAX_LEN), generator=g)
    mask = torch.arange(MAX_LEN)[None, :] < lengths[:, None]
    ids[:, 0] = CLS_ID
    ids[torch.arange(num), lengths - 1] = SEP_ID
    ids[~mask] = PAD_ID
    return ids, mask.long(), lengths


def within_binomial(count: int, n: int, p: float, sigmas: float = 5.0) -> bool:
    return abs(count - n * p) <= sigmas * math.sqrt(n * p * (1 - p))


def test_choice_rate_and_80_10_10_split():
    ids, mask, _ = captions(2000)
    masked, labels = mask_tokens(ids, mask, None, VOCAB, MASK_ID, generator=torch.Generator().manual_seed(1))
    chosen = labels != IGNORE_INDEX  # without a greenlight map every chosen token carries loss
    n = int(mask.sum())
    assert within_binomial(int(chosen.sum()), n, 0.15)
    assert torch.equal(labels[chosen], ids[chosen])
    k = int(chosen.sum())
    to_mask = int((masked[chosen] == MASK_ID).sum())
    kept = int((masked[chosen] == ids[chosen]).sum())
    randomised = k - to_mask - kept
    assert within_binomial(to_mask, k, 0.8)
    assert within_binomial(randomised, k, 0.1)
    assert within_binomial(kept, k, 0.1 + 1.0 / VOCAB)  # a random id may equal the original
    assert torch.equal(masked[~chosen], ids[~chosen])  # nothing else changes
    # random replacements spread over the whole vocabulary, not only over the words of the batch
    replacement = masked[chosen & (masked != MASK_ID) & (masked != ids)]
    assert within_binomial(int((replacement < 1000).sum()), replacement.numel(), 1000 / VOCAB)


def test_padding_never_touched_and_special_tokens_follow_the_official_rule():
    ids, mask, lengths = captions(2000, seed=2)
    masked, labels = mask_tokens(ids, mask, None, VOCAB, MASK_ID, generator=torch.Generator().manual_seed(3))
    padding = mask == 0
    assert torch.equal(masked[padding], ids[padding]) and bool((labels[padding] == IGNORE_INDEX).all())
    # the official code chooses [CLS] / [SEP] like any other non-padding token
    assert within_binomial(int((labels[:, 0] != IGNORE_INDEX).sum()), ids.shape[0], 0.15)
    sep_chosen = labels[torch.arange(ids.shape[0]), lengths - 1] != IGNORE_INDEX
    assert within_binomial(int(sep_chosen.sum()), ids.shape[0], 0.15)
    # BERT-style: listed special ids are never chosen
    masked, labels = mask_tokens(ids, mask, None, VOCAB, MASK_ID, special_ids=(CLS_ID, SEP_ID),
                                 generator=torch.Generator().manual_seed(3))
    special = (ids == CLS_ID) | (ids == SEP_ID)
    assert torch.equal(masked[special], ids[special]) and bool((labels[special] == IGNORE_INDEX).all())


def test_greenlight_counts_loss_only_where_green():
    ids, mask, lengths = captions(1000, seed=4)
    green = torch.zeros_like(ids, dtype=torch.float32)
    green[:, 1:3] = 1.0  # e.g. the tokens of a class name
    masked, labels = mask_tokens(ids, mask, green, VOCAB, MASK_ID, generator=torch.Generator().manual_seed(5))
    labelled = labels != IGNORE_INDEX
    assert bool((green[labelled] == 1).all())
    assert within_binomial(int(labelled.sum()), int(((green == 1) & (mask == 1)).sum()), 0.15)
    # greenlight-0 tokens may still be corrupted (official), they only carry no loss
    corrupted_outside = (masked != ids) & (green == 0)
    assert int(corrupted_outside.sum()) > 0

    # the sentinel row disables the sample; only_positives=False ignores the map entirely, sentinel included
    green[0] = GREENLIGHT_OFF
    masked, labels = mask_tokens(ids, mask, green, VOCAB, MASK_ID, generator=torch.Generator().manual_seed(6))
    assert torch.equal(masked[0], ids[0]) and bool((labels[0] == IGNORE_INDEX).all())
    masked, labels = mask_tokens(ids, mask, green, VOCAB, MASK_ID, generator=torch.Generator().manual_seed(6),
                                 only_positives=False)
    assert within_binomial(int((labels != IGNORE_INDEX).sum()), int(mask.sum()), 0.15)
    assert bool(((labels != IGNORE_INDEX) & (green == 0)).any())


def test_masking_is_reproducible_and_leaves_inputs_alone():
    ids, mask, _ = captions(8, seed=7)
    before = ids.clone()
    mask_bool = mask.bool()
    a = mask_tokens(ids, mask_bool, None, VOCAB, MASK_ID, generator=torch.Generator().manual_seed(9))
    b = mask_tokens(ids, mask_bool, None, VOCAB, MASK_ID, generator=torch.Generator().manual_seed(9))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert torch.equal(ids, before) and torch.equal(mask_bool, mask.bool())


def test_greenlight_maps_per_data_kind():
    positive_map = torch.zeros(3, 10)
    positive_map[0, 1:3] = 1  # "traffic light" (present)
    positive_map[1, 4] = 1  # "dog" (negative class of the prompt)
    positive_map[2, 6:8] = 1  # "cat" (present)
    rows = torch.tensor([True, False, True])
    det = build_greenlight_map("detection", max_len=12, positive_map=positive_map, positive_rows=rows)
    assert det.tolist() == [0, 1, 1, 0, 0, 0, 1, 1, 0, 0, 0, 0]
    assert torch.equal(detection_greenlight(positive_map[rows]), det[:10])  # the boxes' own maps give the same

    grounding = build_greenlight_map("grounding", max_len=12, num_tokens=7)  # [CLS] + 5 words + [SEP]
    assert grounding.tolist() == [0, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
    for kind in ("detection", "grounding"):
        off = build_greenlight_map(kind, max_len=12, positive_map=positive_map, num_tokens=7, no_mask=True)
        assert bool((off == GREENLIGHT_OFF).all())
    with pytest.raises(ValueError):
        build_greenlight_map("caption", max_len=12, num_tokens=7)


def test_token_category_ids():
    positive_map = torch.zeros(4, 8)
    positive_map[0, 1:3] = 1
    positive_map[1, 4] = 1
    positive_map[2, 2] = 1  # overlaps row 0: the later row wins
    positive_map[3, 6] = 1  # a grounding phrase without a category
    ids = token_category_ids(positive_map, torch.tensor([17, 4, 9, -10]))
    assert ids.tolist() == [-1, 17, 9, -1, 4, -1, -1, -1]


def tiny_config(act="gelu"):
    return BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=32, hidden_act=act, layer_norm_eps=1e-5)


def test_lm_head_layout_and_formula():
    torch.manual_seed(0)
    head = LMPredictionHead(tiny_config("relu"))
    x = torch.randn(2, 5, 16)
    out = head(x)
    assert out.shape == (2, 5, 50)
    h = torch.relu(x @ head.transform.dense.weight.t() + head.transform.dense.bias)
    h = torch.nn.functional.layer_norm(h, (16,), head.transform.LayerNorm.weight, head.transform.LayerNorm.bias, 1e-5)
    assert torch.allclose(out, h @ head.decoder.weight.t() + head.decoder.bias, atol=1e-5)
    assert sorted(n for n, _ in head.named_parameters()) == [
        "decoder.bias", "decoder.weight", "transform.LayerNorm.bias", "transform.LayerNorm.weight",
        "transform.dense.bias", "transform.dense.weight",
    ]
    # a checkpoint with the separate output bias (official GLIP / BERT's cls.predictions) loads into decoder.bias
    state = {k: v.clone() for k, v in head.state_dict().items()}
    state["bias"] = state.pop("decoder.bias") + 1.0
    head.load_state_dict(state)
    assert torch.equal(head.decoder.bias, state["bias"])


def test_lm_head_learns_a_fixed_batch():
    torch.manual_seed(0)
    head = LMPredictionHead(tiny_config())
    hidden = torch.randn(4, 6, 16)
    labels = torch.randint(0, 50, (4, 6))
    labels[:, ::2] = IGNORE_INDEX
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss = mlm_loss(head(hidden), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(math.log(50), rel=0.2)
    assert losses[-1] < 0.3 * losses[0]
    assert masked_token_accuracy(head(hidden), labels).item() == 1.0


def test_mlm_loss_values():
    logits = torch.randn(2, 3, 7, requires_grad=True)
    labels = torch.tensor([[1, IGNORE_INDEX, 4], [IGNORE_INDEX, IGNORE_INDEX, 0]])
    keep = labels != IGNORE_INDEX
    expected = torch.nn.functional.cross_entropy(logits[keep], labels[keep])
    assert mlm_loss(logits, labels).item() == pytest.approx(expected.item(), rel=1e-6)

    empty = mlm_loss(logits, torch.full((2, 3), IGNORE_INDEX))
    assert empty.item() == 0.0
    empty.backward()
    assert logits.grad is not None and torch.equal(logits.grad, torch.zeros_like(logits))
    assert masked_token_accuracy(logits, torch.full((2, 3), IGNORE_INDEX)).item() == 0.0
