"""MHA-B fusion and the clamped BERT layer against second formulations and the official GLIP-T(C) run.

Reference formulations here are written independently: explicit loops over heads, levels and positions, float64,
with each clamp switchable so that every clamp is shown to matter.
"""
import math

import pytest
import torch
from detectron2.config import get_cfg
from reference_data import (
    load_reference,
    official_key_list,
    official_keys_available,
    official_reference_weights,
    requires_reference,
)

from glip_d2 import add_glip_config
from glip_d2.modeling.fusion import (
    FUSION_REGISTRY,
    BiAttentionFusion,
    ClampedBertLayer,
    build_fusion,
)

CLAMP = 50000.0


# ----------------------------------------------------------------------------------------------- helpers
def _small_fusion(clamps=True, **kw):
    args = {"v_dim": 8, "l_dim": 12, "embed_dim": 16, "num_heads": 4, "dropout": 0.0, "layer_scale_init": 0.3,
                "clamp_min_for_underflow": clamps, "clamp_max_for_overflow": clamps}
    args.update(kw)
    torch.manual_seed(0)
    m = BiAttentionFusion(**args).double().eval()
    with torch.no_grad():  # non-trivial LN and gamma so that they are tested too
        for p in (m.layer_norm_v.weight, m.layer_norm_l.weight, m.gamma_v, m.gamma_l):
            p.uniform_(0.5, 1.5)
        for p in (m.layer_norm_v.bias, m.layer_norm_l.bias):
            p.uniform_(-0.2, 0.2)
        for lin in (m.attn.v_proj, m.attn.l_proj, m.attn.values_v_proj, m.attn.values_l_proj, m.attn.out_v_proj,
                    m.attn.out_l_proj):
            lin.bias.uniform_(-0.1, 0.1)
    return m


def _inputs(seed=1, B=2, T=6):
    g = torch.Generator().manual_seed(seed)
    sizes = [(4, 5), (2, 3), (1, 1)]
    visual = [torch.randn(B, 8, h, w, generator=g, dtype=torch.float64) for h, w in sizes]
    hidden = torch.randn(B, T, 12, generator=g, dtype=torch.float64)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, 4:] = 0  # second prompt is padded
    return visual, hidden, mask


def _layer_norm(x, ln):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + ln.eps) * ln.weight + ln.bias


def _softmax_rows(s):
    e = torch.exp(s - s.max(dim=-1, keepdim=True)[0])
    return e / e.sum(dim=-1, keepdim=True)


def fusion_reference(m, visual, hidden, mask, clamp=True):
    """Straightforward MHA-B: explicit flatten, per-image and per-head loops, hand-written LN and softmax."""
    a = m.attn
    nh, hd = a.num_heads, a.head_dim
    out_v, out_l = [], []
    for b in range(hidden.shape[0]):
        seq = [visual[lv][b, :, y, x] for lv in range(len(visual))
               for y in range(visual[lv].shape[2]) for x in range(visual[lv].shape[3])]
        v = _layer_norm(torch.stack(seq), m.layer_norm_v)  # [N, C]
        l = _layer_norm(hidden[b], m.layer_norm_l)  # [T, D]
        q_all = (v @ a.v_proj.weight.T + a.v_proj.bias) * hd ** -0.5
        k_all = l @ a.l_proj.weight.T + a.l_proj.bias
        vv_all = v @ a.values_v_proj.weight.T + a.values_v_proj.bias
        vl_all = l @ a.values_l_proj.weight.T + a.values_l_proj.bias
        ctx_v, ctx_l = [], []
        for h in range(nh):
            cols = slice(h * hd, (h + 1) * hd)
            s = q_all[:, cols] @ k_all[:, cols].T  # [N, T]
            if clamp:
                s = s.clamp(-CLAMP, CLAMP)
            st = s.T - s.T.max(dim=1, keepdim=True)[0]
            if clamp:
                st = st.clamp(-CLAMP, CLAMP)
            p_l = _softmax_rows(st)  # tokens over all image positions, no mask
            add = torch.where(mask[b] == 0, torch.tensor(-9e15, dtype=s.dtype), mask[b].to(s.dtype))
            p_v = _softmax_rows(s + add[None, :])  # image positions over tokens
            ctx_v.append(p_v @ vl_all[:, cols])
            ctx_l.append(p_l @ vv_all[:, cols])
        dv = torch.cat(ctx_v, 1) @ a.out_v_proj.weight.T + a.out_v_proj.bias
        dl = torch.cat(ctx_l, 1) @ a.out_l_proj.weight.T + a.out_l_proj.bias
        out_v.append(v + m.gamma_v * dv)
        out_l.append(l + m.gamma_l * dl)
    flat = torch.stack(out_v)  # [B, N, C]
    levels, start = [], 0
    for x in visual:
        h, w = x.shape[2:]
        levels.append(torch.stack([flat[:, start + i * w + j] for i in range(h) for j in range(w)], -1)
                      .reshape(x.shape))
        start += h * w
    return levels, torch.stack(out_l)


def _official_weights(prefix):
    """Deterministic official-named weights of the reference run (its make_weights.py), ``prefix`` removed."""
    return {k[len(prefix):]: v for k, v in official_reference_weights(prefix).items()}


def official_suffixes(prefix):
    """Official GLIP-T(C) state-dict keys under ``prefix`` (prefix removed), or None without the key lists."""
    if not official_keys_available():
        return None
    return {key[len(prefix):] for key, _shape, _dtype in official_key_list("T_C") if key.startswith(prefix)}


def _sample(t):
    n = t.numel()
    return t.reshape(-1)[(torch.arange(1000) * (n - 1)) // 999]


def _rel_diff(out, ref):
    """max |out - ref| / max |ref|, against a full tensor or a reference summary (sample positions)."""
    if isinstance(ref, dict):
        scale = max(abs(ref["max"]), abs(ref["min"]))
        return ((_sample(out) - ref["sample"]).abs().max() / scale).item()
    return ((out - ref).abs().max() / ref.abs().max()).item()


@pytest.fixture(scope="module")
def reference():
    return load_reference()


# ----------------------------------------------------------------------------------------------- fusion
def test_registry_and_config():
    cfg = add_glip_config(get_cfg())
    assert "MHA-B" in FUSION_REGISTRY
    m = build_fusion(cfg)
    assert isinstance(m, BiAttentionFusion)
    assert m.attn.v_proj.weight.shape == (2048, 256) and m.attn.l_proj.weight.shape == (2048, 768)
    assert m.attn.num_heads == 8 and m.attn.head_dim == 256 and m.attn.dropout == 0.1
    assert torch.all(m.gamma_v == 1.0 / 6) and torch.all(m.gamma_l == 1.0 / 6)  # LAYER_SCALE_INIT <= 0
    assert m.use_checkpoint is True
    assert all(mod.bias.abs().sum() == 0 for mod in m.attn.children())  # official zero biases
    official = official_suffixes("rpn.head.dyhead_tower.0.b_attn.")
    if official is not None:  # exactly the official parameter names, without the b_attn. prefix
        assert set(m.state_dict()) == official

    cfg.MODEL.FUSION.LAYER_SCALE_INIT = 0.25
    cfg.MODEL.DYHEAD.NUM_CONVS = 8
    assert torch.all(build_fusion(cfg).gamma_v == 0.25)
    cfg.MODEL.FUSION.LAYER_SCALE_INIT = -1.0
    assert torch.allclose(build_fusion(cfg).gamma_l, torch.full((768,), 1.0 / 8))

    cfg.MODEL.FUSION.TYPE = ""
    with pytest.raises(ValueError, match="no deep fusion"):
        build_fusion(cfg)
    cfg.MODEL.FUSION.TYPE = "MHA-X"
    with pytest.raises(KeyError, match="MHA-X"):
        build_fusion(cfg)


def test_fusion_matches_per_head_loop_reference_and_clamps_matter():
    m = _small_fusion()
    visual, hidden, mask = _inputs()
    with torch.no_grad():
        # Large query/key weights: a good share of scores beyond +-50000, the rest not.
        m.attn.v_proj.weight.mul_(900.0)
        m.attn.l_proj.weight.mul_(900.0)
        v_out, lang = m(visual, {"hidden": hidden, "masks": mask})
        ref_v, ref_l = fusion_reference(m, visual, hidden, mask, clamp=True)
        unclamped_v, unclamped_l = fusion_reference(m, visual, hidden, mask, clamp=False)

        # The raw scores really cross the clamp (and not all of them).
        v_seq = m.layer_norm_v(torch.cat([x.flatten(2).transpose(1, 2) for x in visual], 1))
        q = m.attn.v_proj(v_seq) * m.attn.scale
        k = m.attn.l_proj(m.layer_norm_l(hidden))
        s = torch.einsum("bnhd,bthd->bhnt", q.view(2, -1, 4, 4), k.view(2, -1, 4, 4))
        frac = (s.abs() > CLAMP).double().mean().item()
        assert 0.05 < frac < 0.95, frac

    assert [tuple(x.shape) for x in v_out] == [tuple(x.shape) for x in visual]
    for a, b in zip(v_out, ref_v):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-9)
    torch.testing.assert_close(lang["hidden"], ref_l, rtol=0, atol=1e-9)
    assert lang["masks"] is mask
    assert max((a - b).abs().max().item() for a, b in zip(v_out, unclamped_v)) > 1e-3
    assert (lang["hidden"] - unclamped_l).abs().max().item() > 1e-3


def test_fusion_matches_reference_with_ordinary_values():
    m = _small_fusion()
    visual, hidden, mask = _inputs(seed=3)
    with torch.no_grad():
        v_out, lang = m(visual, {"hidden": hidden, "masks": mask})
    ref_v, ref_l = fusion_reference(m, visual, hidden, mask)
    for a, b in zip(v_out, ref_v):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    torch.testing.assert_close(lang["hidden"], ref_l, rtol=0, atol=1e-12)


@pytest.mark.parametrize("large_scores", [False, True])
def test_short_prompts_at_inference_take_the_token_space_path_with_the_same_values(monkeypatch, large_scores):
    """heads x tokens < embed_dim in eval mode: the re-associated path (no [N, embed_dim] tensor) runs and gives the
    per-head reference's values, clamps and padding included; otherwise (training, or long prompts) the direct one."""
    from glip_d2.modeling.fusion.bi_attention import BiMultiHeadAttention

    calls = []
    original = BiMultiHeadAttention._forward_in_token_space
    monkeypatch.setattr(BiMultiHeadAttention, "_forward_in_token_space",
                        lambda self, *a: calls.append(a[1].shape[1]) or original(self, *a))
    m = _small_fusion(embed_dim=64)
    visual, hidden, mask = _inputs(seed=5)  # 6 tokens x 4 heads = 24 < 64; the last two of image 1 padded
    with torch.no_grad():
        if large_scores:  # a share of the scores beyond the +-50000 clamps
            m.attn.v_proj.weight.mul_(900.0)
            m.attn.l_proj.weight.mul_(900.0)
        v_out, lang = m(visual, {"hidden": hidden, "masks": mask})
        ref_v, ref_l = fusion_reference(m, visual, hidden, mask, clamp=True)
    assert calls == [6]
    for a, b in zip(v_out, ref_v):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(lang["hidden"], ref_l, rtol=1e-9, atol=1e-9)

    long_hidden = torch.randn(2, 16, 12, dtype=torch.float64)  # 16 x 4 = 64 = embed_dim: the direct path
    with torch.no_grad():
        m(visual, {"hidden": long_hidden, "masks": torch.ones(2, 16, dtype=torch.long)})
        m.train()
        m(visual, {"hidden": hidden, "masks": mask})
    assert calls == [6]


def test_language_side_ignores_mask_and_image_side_ignores_padding():
    m = _small_fusion()
    visual, hidden, mask = _inputs()
    other_mask = mask.clone()
    other_mask[0, 3:] = 0
    with torch.no_grad():
        v1, l1 = m(visual, {"hidden": hidden, "masks": mask})
        v2, l2 = m(visual, {"hidden": hidden, "masks": other_mask})
        # Image -> text sees the mask: outputs of image 0 change; text -> image does not: bit-identical.
        assert (v1[0][0] - v2[0][0]).abs().max() > 1e-6
        assert torch.equal(l1["hidden"], l2["hidden"])
        # Changing padded tokens leaves the image side of image 1 unchanged (they get exactly zero weight).
        hidden_b = hidden.clone()
        hidden_b[1, 4:] = torch.randn(2, 12, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
        v3, l3 = m(visual, {"hidden": hidden_b, "masks": mask})
    for a, b in zip(v1, v3):
        assert torch.equal(a[1], b[1]) and torch.equal(a[0], b[0])
    assert (l3["hidden"][1, 4:] - l1["hidden"][1, 4:]).abs().max() > 1e-3


def test_residual_is_added_to_normalised_inputs():
    m = _small_fusion()
    visual, hidden, mask = _inputs()
    with torch.no_grad():
        m.gamma_v.zero_()
        m.gamma_l.zero_()
        v_out, lang = m(visual, {"hidden": hidden, "masks": mask})
    # gamma = 0: exactly the per-position LayerNorm of the input (the official residual is added to the
    # normalised features, not to the raw ones)
    for a, x in zip(v_out, visual):
        expected = _layer_norm(x.permute(0, 2, 3, 1), m.layer_norm_v).permute(0, 3, 1, 2)
        torch.testing.assert_close(a, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(lang["hidden"], _layer_norm(hidden, m.layer_norm_l), rtol=0, atol=1e-12)


def test_dropout_train_only_and_checkpoint_gives_same_gradients():
    visual, hidden, mask = _inputs()
    grads = []
    for use_ckpt in (False, True):
        m = _small_fusion(dropout=0.3, use_checkpoint=use_ckpt).train()
        vis = [x.clone().requires_grad_(True) for x in visual]
        torch.manual_seed(7)
        v_out, lang = m(vis, {"hidden": hidden, "masks": mask})
        (sum((x ** 2).sum() for x in v_out) + lang["hidden"].sum()).backward()
        grads.append([vis[0].grad.clone(), m.attn.v_proj.weight.grad.clone(), m.gamma_l.grad.clone()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    m = _small_fusion(dropout=0.3).train()
    with torch.no_grad():
        a, _ = m(visual, {"hidden": hidden, "masks": mask})
        b, _ = m(visual, {"hidden": hidden, "masks": mask})
        assert (a[0] - b[0]).abs().max() > 0  # dropout active in training
        m.eval()
        c, _ = m(visual, {"hidden": hidden, "masks": mask})
        d, _ = m(visual, {"hidden": hidden, "masks": mask})
    assert torch.equal(c[0], d[0])


def test_fusion_rejects_bad_inputs():
    m = _small_fusion()
    visual, hidden, mask = _inputs()
    with pytest.raises(ValueError, match="MODEL.DYHEAD.CHANNELS"):
        m([torch.zeros(2, 7, 3, 3, dtype=torch.float64)], {"hidden": hidden, "masks": mask})
    with pytest.raises(ValueError, match="MODEL.LANGUAGE.HIDDEN_DIM"):
        m(visual, {"hidden": hidden[..., :5], "masks": mask})
    with pytest.raises(ValueError, match="masks"):
        m(visual, {"hidden": hidden, "masks": mask[:, :3]})
    with pytest.raises(ValueError, match="non-empty list"):
        m([], {"hidden": hidden, "masks": mask})


@requires_reference
def test_fusion_block0_matches_official_run(reference):
    m = BiAttentionFusion(v_dim=256, l_dim=768).eval()
    m.load_state_dict(_official_weights("rpn.head.dyhead_tower.0.b_attn."))
    lang = {"hidden": reference["language"]["backbone_hidden"], "masks": reference["inputs"]["attention_mask"]}
    with torch.no_grad():
        v_out, lang_out = m(reference["backbone"]["fpn"], lang)
    tower0 = reference["tower"][0]
    worst_v = max(_rel_diff(a, r) for a, r in zip(v_out, tower0["fuse_visual"]))
    n = tower0["fuse_lang_valid_tokens"].shape[1]
    worst_l = max(_rel_diff(lang_out["hidden"][:, :n], tower0["fuse_lang_valid_tokens"]),
                  _rel_diff(lang_out["hidden"], tower0["fuse_lang_summary"]))
    assert worst_v < 1e-3, worst_v  # README tolerance for tower visual
    assert worst_l < 2e-5, worst_l  # README tolerance for tower language


# ----------------------------------------------------------------------------------------------- BERT layer
def _gelu(x):
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def bert_reference(layer, x, mask, clamps=("scores", "inter_in", "inter_out", "out_dense", "out_ln")):
    """The official clamped BERT layer written out, heads looped; ``clamps`` names the active clamps."""
    def c(t, name):
        return t.clamp(-CLAMP, CLAMP) if name in clamps else t

    sa, so = layer.attention.self, layer.attention.output
    nh = sa.num_heads
    hd = x.shape[-1] // nh
    q = x @ sa.query.weight.T + sa.query.bias
    k = x @ sa.key.weight.T + sa.key.bias
    v = x @ sa.value.weight.T + sa.value.bias
    ctx = torch.zeros_like(x)
    for b in range(x.shape[0]):
        for h in range(nh):
            cols = slice(h * hd, (h + 1) * hd)
            s = c(q[b, :, cols] @ k[b, :, cols].T / math.sqrt(hd), "scores")
            s = s.masked_fill(mask[b][None, :] == 0, -math.inf)  # padding gets no weight at all
            ctx[b, :, cols] = _softmax_rows(s) @ v[b, :, cols]
    attn = _layer_norm(ctx @ so.dense.weight.T + so.dense.bias + x, so.LayerNorm)
    inter = c(_gelu(c(attn @ layer.intermediate.dense.weight.T + layer.intermediate.dense.bias, "inter_in")),
              "inter_out")
    out = c(inter @ layer.output.dense.weight.T + layer.output.dense.bias, "out_dense")
    return c(_layer_norm(out + attn, layer.output.LayerNorm), "out_ln")


def _bert_inputs(D=128, B=2, T=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, D, generator=g, dtype=torch.float64)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[0, 5:] = 0
    return x, mask


def test_bert_layer_geometry_and_config():
    cfg = add_glip_config(get_cfg())
    layer = ClampedBertLayer(cfg)
    sa = layer.attention.self
    assert layer.hidden_dim == 768 and sa.num_heads == 12 and sa.head_dim == 64
    assert layer.intermediate.dense.weight.shape == (3072, 768)
    assert layer.output.LayerNorm.eps == 1e-12 and layer.attention.output.LayerNorm.eps == 1e-12
    assert sa.dropout.p == 0.1 and layer.output.dropout.p == 0.1 and sa.clamp_scores
    official = official_suffixes("rpn.head.dyhead_tower.1.")
    if official is not None:  # HF BertLayer names, as the official BertEncoderLayer
        assert set(layer.state_dict()) == official
    cfg.MODEL.LANGUAGE.HIDDEN_DIM = 384
    cfg.MODEL.FUSION.CLAMP_BERTATTN = False
    small = ClampedBertLayer(cfg)
    assert small.attention.self.num_heads == 6 and small.intermediate.dense.weight.shape == (1536, 384)
    assert not small.attention.self.clamp_scores
    with pytest.raises(ValueError, match="multiple of 64"):
        ClampedBertLayer(hidden_dim=100)
    with pytest.raises(ValueError, match="attention_mask"):
        small(torch.zeros(1, 4, 384), torch.ones(1, 5))


def test_bert_layer_equals_hf_bertlayer_with_same_state_dict():
    from transformers import BertConfig
    from transformers.models.bert.modeling_bert import BertLayer

    torch.manual_seed(0)
    mine = ClampedBertLayer(hidden_dim=128).double().eval()
    config = BertConfig(hidden_size=128, num_attention_heads=2, intermediate_size=512, hidden_act="gelu",
                        layer_norm_eps=1e-12)
    config._attn_implementation = "eager"
    hf = BertLayer(config).double().eval()
    hf.load_state_dict(mine.state_dict(), strict=True)  # identical parameter names
    x, mask = _bert_inputs()
    ext = (1.0 - mask[:, None, None, :].double()) * torch.finfo(torch.float64).min
    with torch.no_grad():
        ours = mine(x, mask)
        theirs = hf(x, attention_mask=ext)
        theirs = theirs[0] if isinstance(theirs, tuple) else theirs
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-12)
    torch.testing.assert_close(ours, bert_reference(mine, x, mask), rtol=0, atol=1e-12)


def test_bert_layer_every_clamp_is_applied():
    torch.manual_seed(0)
    layer = ClampedBertLayer(hidden_dim=128).double().eval()
    x, mask = _bert_inputs()
    with torch.no_grad():  # push every stage past +-50000
        layer.attention.self.query.weight.mul_(3000.0)
        layer.attention.self.key.weight.mul_(3000.0)
        layer.intermediate.dense.weight.mul_(2e5)
        layer.output.dense.weight.mul_(50.0)
        layer.output.LayerNorm.weight.fill_(5e4)
        layer.intermediate.dense.bias[0] = -math.inf  # what an fp16 overflow looks like
        out = layer(x, mask)
    all_clamps = ("scores", "inter_in", "inter_out", "out_dense", "out_ln")
    assert torch.isfinite(out).all() and out.abs().max() <= CLAMP
    torch.testing.assert_close(out, bert_reference(layer, x, mask, all_clamps), rtol=1e-12, atol=1e-6)
    # Each clamp changes the result when removed (the pre-GELU one turns GELU(-inf) into NaN) except the
    # post-GELU one, which can never bind after the pre-GELU clamp (GELU(x) <= x for x >= 0, > -0.17 below);
    # it is kept because the official layer has it.
    for missing in ("scores", "inter_in", "out_dense", "out_ln"):
        other = bert_reference(layer, x, mask, tuple(c for c in all_clamps if c != missing))
        assert (~torch.isclose(other, out, rtol=0, atol=1.0)).any(), missing
    # The score clamp follows the config switch.
    layer.attention.self.clamp_scores = False
    with torch.no_grad():
        torch.testing.assert_close(layer(x, mask), bert_reference(layer, x, mask, all_clamps[1:]),
                                   rtol=1e-12, atol=1e-6)


def test_bert_layer_padding_is_invisible_to_tokens():
    torch.manual_seed(0)
    layer = ClampedBertLayer(hidden_dim=128).double().eval()
    x, mask = _bert_inputs()
    y = x.clone()
    y[0, 5:] = 100.0
    with torch.no_grad():
        a, b = layer(x, mask), layer(y, mask)
    torch.testing.assert_close(a[0, :5], b[0, :5], rtol=0, atol=1e-12)
    torch.testing.assert_close(a[1], b[1], rtol=0, atol=0)


@requires_reference
def test_bert_layer_block5_matches_official_run(reference):
    layer = ClampedBertLayer(hidden_dim=768).eval()
    layer.load_state_dict(_official_weights("rpn.head.dyhead_tower.16."))
    tower5 = reference["tower"][5]
    with torch.no_grad():
        out = layer(tower5["fuse_lang"], reference["inputs"]["attention_mask"])
    rel = _rel_diff(out, tower5["bert_lang"])
    assert rel < 2e-5, rel
