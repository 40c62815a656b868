"""DyConv, DyReLU and the VL tower against hand-written formulations and the official GLIP-T(C) run.

The deformable conv is checked against a loop transcription of the official CUDA kernel's index arithmetic
(per-image flat offset/mask buffers, zero-outside bilinear sampling), which is what makes the official reuse of
a level's offsets on the coarser level (read as a flat prefix of the buffer) well defined.
"""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from detectron2.config import get_cfg
from reference_data import (
    load_reference,
    official_key_list,
    official_reference_weights,
    requires_official_keys,
    requires_reference,
)
from torchvision.ops import deform_conv2d

from glip_d2 import add_glip_config
from glip_d2.layers.modulated_deform_conv import kernel_view, modulated_deform_conv
from glip_d2.modeling.dyhead import DyConv, DyReLU
from glip_d2.modeling.fusion import BiAttentionFusion, ClampedBertLayer
from glip_d2.modeling.vl_tower import VLDyHeadBlock, VLTower


# ----------------------------------------------------------------------------------------------- references
def _bilinear_zero_outside(img, y, x):
    """DCNv2's sampler: zero when the point is a full pixel outside, else bilinear over in-range corners."""
    _, h, w = img.shape
    if y <= -1 or y >= h or x <= -1 or x >= w:
        return np.zeros(img.shape[0])
    y0, x0 = math.floor(y), math.floor(x)
    ly, lx = y - y0, x - x0
    val = np.zeros(img.shape[0])
    for yy, xx, wgt in ((y0, x0, (1 - ly) * (1 - lx)), (y0, x0 + 1, (1 - ly) * lx),
                        (y0 + 1, x0, ly * (1 - lx)), (y0 + 1, x0 + 1, ly * lx)):
        if 0 <= yy < h and 0 <= xx < w:
            val += wgt * img[:, yy, xx]
    return val


def dcn_kernel_reference(x, offset_buffers, mask_buffers, weight, bias, stride, pad=1):
    """Loop transcription of the official modulated_deformable_im2col + GEMM.

    ``offset_buffers[b]`` / ``mask_buffers[b]`` are each image's raw memory, read flat with the kernel's index
    arithmetic for this conv's output size, whatever size the buffers were computed at.
    """
    x, weight, bias = x.numpy(), weight.numpy(), bias.numpy()
    bsz, c, h, w = x.shape
    o, _, kh, kw = weight.shape
    ho, wo = (h + 2 * pad - kh) // stride + 1, (w + 2 * pad - kw) // stride + 1
    out = np.zeros((bsz, o, ho, wo))
    for b in range(bsz):
        off, msk = offset_buffers[b], mask_buffers[b]
        for oy in range(ho):
            for ox in range(wo):
                col = np.zeros((c, kh * kw))
                for i in range(kh):
                    for j in range(kw):
                        k = i * kw + j
                        dy = off[(2 * k * ho + oy) * wo + ox]
                        dx = off[((2 * k + 1) * ho + oy) * wo + ox]
                        m = msk[(k * ho + oy) * wo + ox]
                        col[:, k] = m * _bilinear_zero_outside(x[b], oy * stride - pad + i + dy,
                                                               ox * stride - pad + j + dx)
                out[b, :, oy, ox] = weight.reshape(o, -1) @ col.reshape(-1) + bias
    return torch.from_numpy(out)


def _group_norm(x, gn):
    b, c, h, w = x.shape
    g = x.reshape(b, gn.num_groups, -1)
    g = (g - g.mean(-1, keepdim=True)) / torch.sqrt(g.var(-1, unbiased=False, keepdim=True) + gn.eps)
    return g.reshape(b, c, h, w) * gn.weight[None, :, None, None] + gn.bias[None, :, None, None]


def dyrelu_reference(m, x):
    """Per image and channel: max(a1 x + b1, a2 x + b2) with the official coefficient transforms."""
    out = torch.empty_like(x)
    c = x.shape[1]
    for b in range(x.shape[0]):
        ctx = x[b].mean(dim=(1, 2))
        theta = F.relu6(m.fc2(F.relu(m.fc1(ctx))) + 3) / 6
        for ch in range(c):
            a1 = 2 * (theta[ch] - 0.5) + 1.0
            b1 = theta[c + ch] - 0.5
            a2 = 2 * (theta[2 * c + ch] - 0.5)
            b2 = theta[3 * c + ch] - 0.5
            out[b, ch] = torch.maximum(a1 * x[b, ch] + b1, a2 * x[b, ch] + b2)
    return out


@torch.no_grad()
def dyconv_reference(m, feats):
    """The official DyConv forward written out; deformable convs through the kernel transcription."""
    def branch(mod, inp, offset_mask, stride):
        if offset_mask is not None:
            y = dcn_kernel_reference(inp, [om[:18].reshape(-1).numpy() for om in offset_mask],
                                     [om[18:].sigmoid().reshape(-1).numpy() for om in offset_mask],
                                     mod.conv.weight.detach(), mod.conv.bias.detach(), stride)
        else:
            y = F.conv2d(inp, mod.conv.weight, mod.conv.bias, stride=stride, padding=1)
        return _group_norm(y, mod.norm) if mod.norm is not None else y

    outs = []
    for lvl, x in enumerate(feats):
        om = F.conv2d(x, m.offset.weight, m.offset.bias, padding=1) if m.offset is not None else None
        cands = [branch(m.same_conv, x, om, 1)]
        if lvl > 0:
            cands.append(branch(m.finer_conv, feats[lvl - 1], om, 2))
        if lvl < len(feats) - 1:
            cands.append(F.upsample_bilinear(branch(m.coarser_conv, feats[lvl + 1], om, 1), size=x.shape[-2:]))
        if m.scale_attn is not None:
            total = 0
            for cand in cands:
                s = (cand.mean(dim=(2, 3)) @ m.scale_attn.weight.view(1, -1).T + m.scale_attn.bias).clamp(min=0)
                total = total + cand * (F.relu6(s + 3) / 6)[:, :, None, None]
            fused = total / len(cands)
        else:
            fused = sum(cands) / len(cands)
        outs.append(dyrelu_reference(m.dyrelu, fused) if m.dyrelu is not None else fused.clamp(min=0))
    return outs


def _rand_dyconv(seed=0, channels=4, **switches):
    torch.manual_seed(seed)
    m = DyConv(channels=channels, gn_groups=2, **switches).double().eval()
    with torch.no_grad():
        for mod in (m.coarser_conv, m.same_conv, m.finer_conv):
            if mod.norm is not None:
                mod.norm.weight.uniform_(0.5, 1.5)
                mod.norm.bias.uniform_(-0.3, 0.3)
            mod.conv.bias.uniform_(-0.2, 0.2)
            mod.conv.weight.normal_(0, 0.3)
        if m.offset is not None:
            m.offset.weight.normal_(0, 0.3)  # offsets of a pixel or more: samples leave the map
        if m.scale_attn is not None:
            m.scale_attn.weight.normal_(0, 2.0)
            m.scale_attn.bias.uniform_(-1, 1)
    return m


def _pyramid(seed=1, channels=4, sizes=((6, 6), (3, 3), (2, 2), (1, 1)), B=2, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, channels, h, w, generator=g, dtype=dtype) for h, w in sizes]


def _official_weights(prefix):
    """The reference run's weights of the official keys under ``prefix``, with ``prefix`` removed."""
    return {k[len(prefix):]: v for k, v in official_reference_weights(prefix).items()}


_DYCONV_NAMES = [("DyConv.0.bn.", "coarser_conv.norm."), ("DyConv.1.bn.", "same_conv.norm."),
                 ("DyConv.2.bn.", "finer_conv.norm."), ("DyConv.0.", "coarser_conv."), ("DyConv.1.", "same_conv."),
                 ("DyConv.2.", "finer_conv."), ("AttnConv.1.", "scale_attn."), ("relu.fc.0.", "dyrelu.fc1."),
                 ("relu.fc.2.", "dyrelu.fc2."), ("offset.", "offset.")]


def official_dyconv_state(prefix):
    """Official DyConv weights renamed to ours (docs/architecture.md)."""
    out = {}
    for k, v in _official_weights(prefix).items():
        old, new = next((a, b) for a, b in _DYCONV_NAMES if k.startswith(a))
        out[new + k[len(old):]] = v
    return out


def _sample(t):
    n = t.numel()
    return t.reshape(-1)[(torch.arange(1000) * (n - 1)) // 999]


def _rel_diff(out, ref):
    if isinstance(ref, dict):
        return ((_sample(out) - ref["sample"]).abs().max() / max(abs(ref["max"]), abs(ref["min"]))).item()
    return ((out - ref).abs().max() / ref.abs().max()).item()


def _small_cfg(num_convs=2):
    cfg = add_glip_config(get_cfg())
    cfg.MODEL.DYHEAD.CHANNELS = cfg.MODEL.FPN.OUT_CHANNELS = 16
    cfg.MODEL.DYHEAD.GN_GROUPS = 4
    cfg.MODEL.DYHEAD.NUM_CONVS = num_convs
    cfg.MODEL.LANGUAGE.HIDDEN_DIM = 64
    cfg.MODEL.FUSION.EMBED_DIM = 32
    cfg.MODEL.FUSION.NUM_HEADS = 4
    return cfg


def _lang(B=2, T=5, D=64, seed=2, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return {"hidden": torch.randn(B, T, D, generator=g, dtype=dtype),
            "masks": torch.tensor([[1] * T, [1] * (T - 2) + [0] * 2])}


# ----------------------------------------------------------------------------------------------- deformable conv
@pytest.mark.parametrize("impl", ["torchvision", "embedding_bag", "gather"])
@pytest.mark.parametrize("case", ["coarser", "same", "finer"])
def test_deform_conv_matches_kernel_transcription(case, impl):
    g = torch.Generator().manual_seed(0)
    src_hw = (5, 6)  # the level whose offsets are used
    in_hw, stride = {"coarser": ((3, 3), 1), "same": (src_hw, 1), "finer": ((9, 11), 2)}[case]
    x = torch.randn(2, 2, *in_hw, generator=g, dtype=torch.float64)
    offset_mask = 1.5 * torch.randn(2, 27, *src_hw, generator=g, dtype=torch.float64)
    weight = torch.randn(3, 2, 3, 3, generator=g, dtype=torch.float64)
    bias = torch.randn(3, generator=g, dtype=torch.float64)
    offset, mask = offset_mask[:, :18], offset_mask[:, 18:].sigmoid()  # offset is a strided view, as officially
    ours = modulated_deform_conv(x, offset, mask, weight, bias, stride=stride, impl=impl)
    ref = dcn_kernel_reference(x, [om.reshape(-1).numpy() for om in offset_mask],  # raw per-image memory
                               [mk.reshape(-1).numpy() for mk in mask], weight, bias, stride)
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-12)
    assert (ref == 0).sum() < ref.numel()  # not a degenerate all-zero case


def test_torchvision_rejects_raw_mismatched_offsets_and_kernel_view_is_a_flat_prefix():
    x = torch.randn(1, 2, 3, 3)
    offset, mask = torch.randn(1, 18, 5, 6), torch.rand(1, 9, 5, 6)
    with pytest.raises(RuntimeError):
        deform_conv2d(x, offset, torch.randn(3, 2, 3, 3), padding=(1, 1), mask=mask)
    view = kernel_view(offset, 18, 3, 3)
    assert torch.equal(view.reshape(-1), offset.reshape(-1)[:18 * 9])
    assert torch.equal(view[0, 1, 0], offset[0, 0, 1, 3:6])  # channel 1 starts at flat index 9 = row 1, col 3
    assert kernel_view(offset, 18, 5, 6) is offset
    with pytest.raises(ValueError, match="past the image"):
        kernel_view(offset, 18, 6, 6)


# ----------------------------------------------------------------------------------------------- DyReLU / DyConv
def test_dyrelu_matches_direct_formula():
    torch.manual_seed(0)
    m = DyReLU(8).double()
    with torch.no_grad():
        m.fc1.weight.mul_(10.0)  # reach both hard-sigmoid saturations
        m.fc2.weight.mul_(10.0)
    assert m.fc1.weight.shape == (2, 8) and m.fc2.weight.shape == (32, 2)
    x = torch.randn(3, 8, 4, 5, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(m(x), dyrelu_reference(m, x), rtol=0, atol=1e-12)
        theta = F.relu6(m.fc2(F.relu(m.fc1(x.mean(dim=(2, 3))))) + 3) / 6
    assert (theta == 0).any() and (theta == 1).any()


SWITCHES = [
    {"use_deform": True, "use_gn": True, "use_dyrelu": True, "use_dyfuse": True},
    {"use_deform": False, "use_gn": False, "use_dyrelu": False, "use_dyfuse": False},
    {"use_deform": True, "use_gn": False, "use_dyrelu": True, "use_dyfuse": False},
    {"use_deform": False, "use_gn": True, "use_dyrelu": False, "use_dyfuse": True},
]


@pytest.mark.parametrize("switches", SWITCHES, ids=lambda s: "".join("1" if v else "0" for v in s.values()))
def test_dyconv_matches_official_forward(switches):
    m = _rand_dyconv(**switches)
    assert (m.offset is not None) == switches["use_deform"]
    assert (m.same_conv.norm is not None) == switches["use_gn"]
    assert (m.dyrelu is not None) == switches["use_dyrelu"]
    assert (m.scale_attn is not None) == switches["use_dyfuse"]
    feats = _pyramid()
    with torch.no_grad():
        ours = m(feats)
    ref = dyconv_reference(m, feats)
    for a, b, x in zip(ours, ref, feats):
        assert a.shape == x.shape
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def test_dyconv_coarser_branch_really_reads_the_flat_prefix():
    """Against a port that crops (or resizes) offsets instead, the outputs of levels with a coarser level differ."""
    m = _rand_dyconv()
    feats = _pyramid()
    with torch.no_grad():
        ours = m(feats)
        om = m.offset(feats[0])
        cropped = modulated_deform_conv(feats[1], om[:, :18, :3, :3], om[:, 18:, :3, :3].sigmoid(),
                                        m.coarser_conv.conv.weight, m.coarser_conv.conv.bias)
        flat = modulated_deform_conv(feats[1], om[:, :18], om[:, 18:].sigmoid(),
                                     m.coarser_conv.conv.weight, m.coarser_conv.conv.bias)
    assert (cropped - flat).abs().max() > 1e-2
    assert ours[0].shape == feats[0].shape


def test_dyconv_init_follows_official():
    torch.manual_seed(0)
    m = DyConv(channels=64, gn_groups=16)
    bound = 1 / math.sqrt(64 * 9)  # ModulatedDeformConv's own uniform init (DyConv's normal init skips it)
    w = m.same_conv.conv.weight
    assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound and m.same_conv.conv.bias.abs().sum() == 0
    assert abs(m.scale_attn.weight.std().item() - 0.01) < 0.004 and m.scale_attn.bias.item() == 0
    plain = DyConv(channels=64, gn_groups=16, use_deform=False)
    assert abs(plain.finer_conv.conv.weight.std().item() - 0.01) < 0.001 and plain.finer_conv.conv.stride == (2, 2)
    assert m.finer_conv.conv.stride == 2 and m.offset.weight.shape == (27, 64, 3, 3)
    with pytest.raises(ValueError, match="GN_GROUPS"):
        DyConv(channels=20, gn_groups=16)
    with pytest.raises(ValueError, match=r"features\[1\]"):
        m([torch.zeros(1, 64, 4, 4), torch.zeros(1, 32, 2, 2)])


def test_autocast_bfloat16_keeps_deformable_convs_in_fp32():
    torch.manual_seed(0)
    m = DyConv(channels=16, gn_groups=4).eval()
    feats = _pyramid(channels=16, dtype=torch.float32)
    seen = {}

    def record(name):
        return lambda mod, inp, out: seen.setdefault(name, set()).add(out.dtype)

    for name in ("coarser_conv", "same_conv", "finer_conv"):
        getattr(m, name).conv.register_forward_hook(record(name))
    m.offset.register_forward_hook(record("offset"))
    with torch.no_grad():
        ref = m(feats)
        seen.clear()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = m(feats)
    assert seen["offset"] == {torch.bfloat16}  # autocast really was on
    for name in ("coarser_conv", "same_conv", "finer_conv"):
        assert seen[name] == {torch.float32}, name
    for a, b in zip(out, ref):
        assert torch.isfinite(a).all()
        assert (a.float() - b).abs().max() < 0.05 * b.abs().max() + 0.05


# ----------------------------------------------------------------------------------------------- tower
def test_tower_structure_from_config():
    cfg = _small_cfg(num_convs=3)
    tower = VLTower(cfg)
    assert len(tower.blocks) == 3
    for blk in tower.blocks:
        assert isinstance(blk.fusion, BiAttentionFusion) and isinstance(blk.lang_layer, ClampedBertLayer)
        assert isinstance(blk.dyconv, DyConv) and blk.checkpoint_dyconv
    keys = set(tower.state_dict())
    for k in ("blocks.0.fusion.gamma_v", "blocks.0.fusion.attn.values_l_proj.weight",
              "blocks.2.lang_layer.attention.output.LayerNorm.weight", "blocks.1.dyconv.coarser_conv.conv.weight",
              "blocks.1.dyconv.finer_conv.norm.bias", "blocks.1.dyconv.offset.weight",
              "blocks.1.dyconv.scale_attn.weight", "blocks.1.dyconv.dyrelu.fc2.bias"):
        assert k in keys, k

    cfg.MODEL.GLIP.USE_FUSED_FEATURES_DOT_PRODUCT = False  # official: DummyLayer in the last block
    t = VLTower(cfg)
    assert [b.lang_layer is not None for b in t.blocks] == [True, True, False]
    cfg.MODEL.FUSION.USE_LANG_LAYER = False
    assert all(b.lang_layer is None for b in VLTower(cfg).blocks)
    cfg.MODEL.FUSION.TYPE = ""  # GLIP-T(A)
    t = VLTower(cfg)
    assert all(b.fusion is None and b.lang_layer is None for b in t.blocks)
    assert not any(k.split(".")[2] in ("fusion", "lang_layer") for k in t.state_dict())
    lang = _lang(dtype=torch.float32)
    with torch.no_grad():
        out, lang_out = t.eval()(_pyramid(channels=16, dtype=torch.float32), lang)
    assert lang_out is lang and len(out) == 4
    cfg.MODEL.FPN.OUT_CHANNELS = 32
    with pytest.raises(ValueError, match="FPN.OUT_CHANNELS"):
        VLTower(cfg)


@requires_official_keys
def test_one_default_block_has_the_official_parameters():
    cfg = add_glip_config(get_cfg())
    cfg.MODEL.DYHEAD.NUM_CONVS = 1
    tower = VLTower(cfg)
    official = {}
    for key, shape, _dtype in official_key_list("T_C"):
        if key.split(".")[:3] == ["rpn", "head", "dyhead_tower"] and key.split(".")[3] in ("0", "1", "2"):
            official[key] = math.prod(shape)
    ours = {k: v.numel() for k, v in tower.state_dict().items()}
    assert len(ours) == len(official) == 54
    assert sum(ours.values()) == sum(official.values())  # 15.3 M per fused block


def test_block_order_is_fusion_then_text_layer_then_dyconv():
    cfg = _small_cfg(num_convs=2)
    torch.manual_seed(0)
    tower = VLTower(cfg).double().eval()
    feats, lang = _pyramid(channels=16), _lang()
    hidden_before = lang["hidden"].clone()
    with torch.no_grad():
        out, lang_out = tower(feats, lang)
        f, l = feats, lang
        for blk in tower.blocks:
            f, l = blk.fusion(f, l)
            l = dict(l, hidden=blk.lang_layer(l["hidden"], l["masks"]))
            f = blk.dyconv(f)
    for a, b in zip(out, f):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(lang_out["hidden"], l["hidden"], rtol=0, atol=0)
    assert torch.equal(lang["hidden"], hidden_before)  # the caller's dict is not modified
    assert lang_out["masks"] is lang["masks"]


def test_checkpointing_gives_the_same_gradients():
    cfg = _small_cfg(num_convs=1)
    grads = []
    for ckpt in (False, True):
        cfg.MODEL.DYHEAD.USE_CHECKPOINT = cfg.MODEL.FUSION.USE_CHECKPOINT = ckpt
        torch.manual_seed(0)
        tower = VLTower(cfg).double().train()
        feats = [x.requires_grad_(True) for x in _pyramid(channels=16, sizes=((4, 4), (2, 2), (1, 1)))]
        torch.manual_seed(1)  # dropout masks: checkpointing replays the RNG state
        out, lang = tower(feats, _lang())
        (sum((o ** 2).sum() for o in out) + lang["hidden"].sum()).backward()
        grads.append([feats[0].grad] + [p.grad for p in tower.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


# ----------------------------------------------------------------------------------------------- official run
@pytest.fixture(scope="module")
def reference():
    return load_reference()


@requires_reference
def test_dyconv_block5_matches_official_run(reference):
    m = DyConv(channels=256).eval()
    m.load_state_dict(official_dyconv_state("rpn.head.dyhead_tower.17."))
    tower5 = reference["tower"][5]
    with torch.no_grad():
        out = m(tower5["fuse_visual"])
    worst = max(_rel_diff(a, r) for a, r in zip(out, tower5["dyconv_visual"]))
    assert worst < 1e-3, worst  # README tolerance; measured ~1.5e-6


@requires_reference
@pytest.mark.slow
def test_whole_tower_matches_official_run_block_by_block(reference):
    blocks = []
    for b in range(6):
        fusion = BiAttentionFusion(v_dim=256, l_dim=768)
        fusion.load_state_dict(_official_weights(f"rpn.head.dyhead_tower.{3 * b}.b_attn."))
        layer = ClampedBertLayer(hidden_dim=768)
        layer.load_state_dict(_official_weights(f"rpn.head.dyhead_tower.{3 * b + 1}."))
        dyconv = DyConv(channels=256)
        dyconv.load_state_dict(official_dyconv_state(f"rpn.head.dyhead_tower.{3 * b + 2}."))
        blocks.append(VLDyHeadBlock(dyconv, fusion, layer))
    tower = VLTower(blocks=blocks).eval()
    feats = reference["backbone"]["fpn"]
    lang = {"hidden": reference["language"]["backbone_hidden"], "masks": reference["inputs"]["attention_mask"]}
    n = int(lang["masks"].sum())
    with torch.no_grad():
        for b, blk in enumerate(tower.blocks):
            fused, lang = blk.fusion(feats, lang)
            lang_rel = [_rel_diff(lang["hidden"], blk_ref)
                        for blk_ref in [reference["tower"][b].get("fuse_lang")] if blk_ref is not None]
            lang = dict(lang, hidden=blk.lang_layer(lang["hidden"], lang["masks"]))
            feats = blk.dyconv(fused)
            ref = reference["tower"][b]
            if "bert_lang" in ref:
                lang_rel.append(_rel_diff(lang["hidden"], ref["bert_lang"]))
            else:
                lang_rel += [_rel_diff(lang["hidden"][:, :n], ref["bert_lang_valid_tokens"]),
                             _rel_diff(lang["hidden"], ref["bert_lang_summary"])]
            vis_rel = [_rel_diff(a, r) for a, r in zip(fused, ref["fuse_visual"])]
            vis_rel += [_rel_diff(a, r) for a, r in zip(feats, ref["dyconv_visual"])]
            assert max(vis_rel) < 1e-3, (b, vis_rel)
            assert max(lang_rel) < 2e-5, (b, lang_rel)
    assert _rel_diff(lang["hidden"], reference["language"]["fused_hidden"]) < 2e-5
