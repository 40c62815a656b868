"""GLIPv2Caption: causal language stream (exact), decoding (greedy / beam search), training, errors."""
import math

import pytest
import torch
from detectron2.modeling import build_model

from glip_d2.engine.defaults import load_glip_cfg
from glip_d2.modeling.caption_decoding import beam_search, greedy_search
from glip_d2.modeling.fusion import ClampedBertLayer
from glip_d2.modeling.fusion.bi_attention import BiAttentionFusion

BOS, EOS, PAD = 1, 2, 0


def _cfg(*opts):
    """The tiny GLIP as a captioner, plus ``KEY VALUE`` overrides."""
    return load_glip_cfg("configs/quick_schedules/Base-GLIP-tiny.yaml", [
        "MODEL.META_ARCHITECTURE", "GLIPv2Caption", "MODEL.DEVICE", "cpu", "MODEL.LANGUAGE.MAX_QUERY_LEN", "32", *opts])


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(_cfg()).eval()


def _inputs(n=2):
    """Pictures of clearly different colours (BGR) with some noise, and a caption each."""
    g = torch.Generator().manual_seed(3)
    sizes = [(128, 160), (128, 128), (96, 128)]
    colours = [(40, 40, 220), (40, 200, 40), (200, 40, 160)]
    out = []
    for i, c in zip(range(n), ["a red circle left of a blue star", "two green squares", "a purple cross"]):
        h, w = sizes[i % 3]
        image = torch.tensor(colours[i % 3], dtype=torch.float32)[:, None, None].expand(3, h, w)
        image = (image + torch.randint(-30, 30, (3, h, w), generator=g)).clamp(0, 255)
        out.append({"image": image, "height": h, "width": w, "caption": c})
    return out


# ---- causality ------------------------------------------------------------------------------------------------
def test_bert_layer_causal_mask_is_exact():
    torch.manual_seed(0)
    layer = ClampedBertLayer(hidden_dim=64).eval()
    x = torch.randn(2, 7, 64)
    mask = torch.tensor([[1] * 7, [1] * 5 + [0] * 2])
    y = x.clone()
    y[:, 4:] = torch.randn(2, 3, 64)
    a, b = layer(x, mask, causal=True), layer(y, mask, causal=True)
    assert torch.equal(a[:, :4], b[:, :4])
    assert not torch.allclose(a[:, 4:], b[:, 4:])
    # without the flag every token sees every (unpadded) token
    assert not torch.allclose(layer(x, mask)[:, :4], layer(y, mask)[:, :4])


def test_text_encoder_causal_mask_is_exact(model):
    enc = model.language_encoder
    ids, mask = model.tokenize_captions(["a red circle and a blue star", "a green square"])
    changed = ids.clone()
    changed[:, 4:] = 2003
    a = enc(ids, mask, causal=True)["hidden"]
    b = enc(changed, mask, causal=True)["hidden"]
    assert torch.equal(a[:, :4], b[:, :4])
    assert not torch.allclose(a[:, 4:], b[:, 4:])


def test_prediction_at_a_position_ignores_later_tokens(model):
    """The whole model (encoder, fusion with the image, tower BERT layers, LM head): exact."""
    with torch.no_grad():
        keys = model.image_keys(_inputs())
        ids, mask = model.tokenize_captions(["a red circle left of a blue star", "a red circle right of the star"])
        changed = ids.clone()
        changed[:, 5:] = 2000
        a = model.caption_logits(keys, ids, mask)
        b = model.caption_logits(keys, changed, mask)
    assert torch.equal(a[:, :5], b[:, :5])
    assert (a[:, 5:] - b[:, 5:]).abs().max() > 1e-3


def test_text_side_is_the_fusion_text_output():
    """Captioning's text half computes the tokens' update exactly as the full bi-directional block does."""
    torch.manual_seed(0)
    fusion = BiAttentionFusion(v_dim=32, l_dim=64, embed_dim=64, num_heads=4).eval()
    visual = [torch.randn(2, 32, 6, 8), torch.randn(2, 32, 3, 4)]
    hidden = torch.randn(2, 5, 64)
    _, full = fusion(visual, {"hidden": hidden, "masks": torch.ones(2, 5, dtype=torch.long)})
    maps, keys = fusion.image_side(visual)
    assert torch.allclose(fusion.text_side(hidden, keys), full["hidden"], atol=1e-5)
    # the image is normalised but not updated from the text
    flat = torch.cat([v.flatten(2).transpose(1, 2) for v in visual], 1)
    assert torch.allclose(maps[0].flatten(2).transpose(1, 2), fusion.layer_norm_v(flat)[:, :48], atol=1e-6)


def test_beams_of_one_image_share_its_keys(model):
    """k captions per image stacked image-major give each caption's own result (no copies of the image keys)."""
    captions = ["a red circle", "two blue stars", "a green cross"]
    with torch.no_grad():
        keys = model.image_keys(_inputs(2))
        ids, mask = model.tokenize_captions(captions * 2)
        stacked = model.caption_logits(keys, ids, mask)
        for i in range(2):
            single_keys = [tuple(t.view(2, -1, *t.shape[1:])[i] for t in k) for k in keys]
            alone = model.caption_logits(single_keys, ids[3 * i:3 * i + 3], mask[3 * i:3 * i + 3])
            assert torch.allclose(stacked[3 * i:3 * i + 3], alone, atol=1e-4)


# ---- decoding -------------------------------------------------------------------------------------------------
def _markov_step(table: torch.Tensor):
    """A toy model: log p(next | last token) from a [V, V] table."""
    def step(ids):
        return table[ids[:, -1]].clone()
    return step


def _table(v=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.log_softmax(torch.randn(v, v, generator=g) * 2, dim=-1)


def test_greedy_follows_the_most_likely_token_and_stops_at_sep():
    table = torch.full((6, 6), -10.0)
    table[BOS, 3], table[3, 4], table[4, 5], table[5, EOS] = -0.1, -0.2, -0.3, -0.4
    (cap,) = greedy_search(_markov_step(table), 1, bos_id=BOS, eos_id=EOS, pad_id=PAD, max_length=20)
    assert cap.token_ids == [3, 4, 5]
    assert cap.log_prob == pytest.approx(-1.0)


def test_decoding_respects_max_min_length_and_banned_ids():
    table = _table()
    table[:, EOS] = -50.0  # [SEP] never attractive: max_length decides
    for search in ("greedy", "beam"):
        kwargs = dict(bos_id=BOS, eos_id=EOS, pad_id=PAD, max_length=6, banned_ids=(PAD, BOS, 7))
        if search == "greedy":
            caps = greedy_search(_markov_step(table), 3, **kwargs)
        else:
            caps = beam_search(_markov_step(table), 3, beam_size=3, **kwargs)
        for cap in caps:
            assert len(cap.token_ids) == 4  # 6 = [CLS] + 4 words + [SEP]
            assert not set(cap.token_ids) & {PAD, BOS, 7, EOS}
    eager = torch.full((6, 6), -5.0)
    eager[:, EOS] = -0.01  # [SEP] right away unless banned
    (cap,) = greedy_search(_markov_step(eager), 1, bos_id=BOS, eos_id=EOS, pad_id=PAD, max_length=10, min_length=3)
    assert len(cap.token_ids) == 3


@pytest.mark.parametrize("seed", range(5))
def test_beam_one_is_greedy(seed):
    step = _markov_step(_table(seed=seed))
    kwargs = dict(bos_id=BOS, eos_id=EOS, pad_id=PAD, max_length=9)
    greedy = greedy_search(step, 4, **kwargs)
    beam = beam_search(step, 4, beam_size=1, **kwargs)
    assert [c.token_ids for c in greedy] == [c.token_ids for c in beam]
    assert [c.log_prob for c in greedy] == pytest.approx([c.log_prob for c in beam])


def test_beam_search_escapes_the_greedy_trap_and_length_penalty_favours_longer():
    table = torch.full((7, 7), -20.0)
    table[BOS, 3], table[BOS, 4] = math.log(0.6), math.log(0.4)
    table[3, 5], table[3, 6] = math.log(0.5), math.log(0.5)  # after the likely first word, two so-so words
    table[4, 5] = math.log(0.99)  # after the unlikely one, a sure word
    table[5, EOS] = table[6, EOS] = 0.0
    kwargs = dict(bos_id=BOS, eos_id=EOS, pad_id=PAD, max_length=8)
    (greedy,) = greedy_search(_markov_step(table), 1, **kwargs)
    (beam,) = beam_search(_markov_step(table), 1, beam_size=2, **kwargs)
    assert greedy.token_ids[0] == 3 and beam.token_ids == [4, 5]
    assert beam.log_prob > greedy.log_prob

    long_table = torch.full((7, 7), -20.0)
    long_table[BOS, 3] = 0.0
    long_table[3, EOS], long_table[3, 4] = math.log(0.55), math.log(0.45)  # stop now, or go on ...
    long_table[4, 5] = 0.0
    long_table[5, EOS] = 0.0
    (short,) = beam_search(_markov_step(long_table), 1, beam_size=3, **kwargs)
    (longer,) = beam_search(_markov_step(long_table), 1, beam_size=3, length_penalty=2.0, **kwargs)
    assert short.token_ids == [3] and longer.token_ids == [3, 4, 5]


def test_model_greedy_equals_beam_one(model):
    with torch.no_grad():
        keys = model.image_keys(_inputs(2))
        greedy = model.generate(keys, 2, beam_size=1, max_length=8)
        beam = beam_search(
            lambda ids: torch.log_softmax(model.caption_logits(keys, ids, (ids != PAD).long())[:, -1].float(), -1),
            2, beam_size=1, bos_id=model._special["bos"], eos_id=model._special["eos"], pad_id=PAD, max_length=8,
            banned_ids=model._banned)
    assert [c.token_ids for c in greedy] == [c.token_ids for c in beam]
    for cap in model.generate(keys, 2, beam_size=3, max_length=6):
        assert len(cap.token_ids) <= 4
    out = model.inference(_inputs(2), beam_size=2, max_length=6)
    assert all(isinstance(o["caption"], str) and o["caption_score"] <= 0 for o in out)


# ---- training -------------------------------------------------------------------------------------------------
def test_training_learns_captions_and_every_parameter_gets_a_gradient():
    torch.manual_seed(0)
    model = build_model(_cfg("MODEL.LANGUAGE.FREEZE", "True")).train()
    inputs = _inputs(2)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3)
    losses = []
    for i in range(40):
        loss = model(inputs)["loss_caption"]
        opt.zero_grad()
        loss.backward()
        if i == 0:  # DDP without find_unused_parameters needs every trainable parameter in the graph
            assert all(p.grad is not None for p in params)
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < 0.2 * losses[0]
    model.eval()
    out = model.inference(inputs)
    assert [o["caption"] for o in out] == [x["caption"] for x in inputs]


def test_errors_name_the_problem(model):
    with pytest.raises(ValueError, match="non-empty"):
        model.tokenize_captions(["a circle", "  "])
    model.train()
    try:
        with pytest.raises(ValueError, match="'caption'"):
            model([{k: v for k, v in _inputs(1)[0].items() if k != "caption"}])
    finally:
        model.eval()
    with pytest.raises(ValueError, match="MAX_LENGTH"):
        build_model(_cfg("MODEL.CAPTION.MAX_LENGTH", "2"))
    with pytest.raises(ValueError, match="beam_size"):
        beam_search(lambda ids: ids, 1, beam_size=0, bos_id=BOS, eos_id=EOS, pad_id=PAD, max_length=5)


def test_long_captions_are_cut_with_their_sep(model):
    ids, mask = model.tokenize_captions(["a " + "very " * 60 + "long caption"])
    assert ids.shape[1] == model.max_length
    assert int(ids[0, -1]) == model._special["eos"]
