"""Swin / FPN / ResNet-FPN backbones against timm, detectron2, hand-computed cases and the official GLIP run."""
import math

import pytest
import torch
import torch.nn.functional as F
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_backbone
from reference_data import load_reference, official_reference_weights, requires_reference

from glip_d2 import add_glip_config
from glip_d2.checkpoint import KNOWN_ARCHITECTURES, map_official_key, official_state_dict
from glip_d2.modeling.backbone import (
    GLIPFPN,
    DropBlock2D,
    SwinTransformer,
    build_swin_glip_fpn_backbone,
)
from glip_d2.modeling.backbone.swin import PatchMerging, shifted_window_mask

GLIP_T = KNOWN_ARCHITECTURES["GLIP-T"]


def n_params(module):
    return sum(p.numel() for p in module.parameters())


def glip_cfg(**swin):
    cfg = add_glip_config(get_cfg())
    for k, v in swin.items():
        setattr(cfg.MODEL.SWIN, k, v)
    return cfg


def tiny_swin(**kw):
    args = {"embed_dim": 16, "depths": (2, 2, 2, 2), "num_heads": (1, 2, 2, 4), "window_size": 7,
            "drop_path_rate": 0.0}
    args.update(kw)
    return SwinTransformer(**args)


def randomize_(module, seed=0, scale=0.5):
    """Weights large enough that attention is far from uniform, so masking/bias mistakes show up."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.dim() == 1 and name.endswith("weight"):  # norms
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            elif "relative_position_bias_table" in name:
                p.copy_(torch.randn(p.shape, generator=g))
            elif p.dim() == 1:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(scale * torch.randn(p.shape, generator=g) / math.sqrt(p[0].numel()) * 2)
    return module


# ----------------------------------------------------------------------------------------------------------
# Swin: structure
# ----------------------------------------------------------------------------------------------------------
def test_swin_t_and_fpn_parameter_counts_match_official():
    backbone = build_swin_glip_fpn_backbone(glip_cfg(), ShapeSpec(channels=3))
    swin = n_params(backbone.bottom_up)
    assert round(swin / 1e6, 2) == 27.52
    assert round((n_params(backbone) - swin) / 1e6, 2) == 3.30
    # 187 official Swin keys minus the 12 recomputed relative_position_index buffers
    assert len(backbone.bottom_up.state_dict()) == 175
    assert "norm0.weight" not in backbone.bottom_up.state_dict()
    assert {f"norm{i}.weight" for i in (1, 2, 3)} <= set(backbone.bottom_up.state_dict())


@pytest.mark.slow
def test_swin_l_and_fpn_parameter_counts_match_official():
    cfg = glip_cfg(EMBED_DIM=192, DEPTHS=[2, 2, 18, 2], NUM_HEADS=[6, 12, 24, 48], WINDOW_SIZE=12,
                   DROP_PATH_RATE=0.4, FREEZE_AT=2)
    backbone = build_swin_glip_fpn_backbone(cfg, ShapeSpec(channels=3))
    swin = n_params(backbone.bottom_up)
    assert round(swin / 1e6, 2) == 195.20
    assert round((n_params(backbone) - swin) / 1e6, 2) == 3.64


def test_swin_output_shape_and_stochastic_depth_schedule():
    swin = SwinTransformer(drop_path_rate=0.2)
    shapes = swin.output_shape()
    assert {k: (v.channels, v.stride) for k, v in shapes.items()} == {
        "stage2": (96, 4), "stage3": (192, 8), "stage4": (384, 16), "stage5": (768, 32)}
    probs = [blk.drop_path.drop_prob for layer in swin.layers for blk in layer.blocks]
    assert probs == pytest.approx([0.2 * i / 11 for i in range(12)])
    shifts = [[blk.shift_size for blk in layer.blocks] for layer in swin.layers]
    assert shifts == [[0, 3], [0, 3], [0, 3, 0, 3, 0, 3], [0, 3]]


def test_swin_freeze_at_2_freezes_patch_embed_and_first_stage_and_keeps_them_in_eval():
    swin = tiny_swin(frozen_stages=2, drop_path_rate=0.1)
    frozen = {n.split(".")[0] + ("." + n.split(".")[1] if n.startswith("layers") else "")
              for n, p in swin.named_parameters() if not p.requires_grad}
    assert frozen == {"patch_embed", "layers.0"}
    swin.train()
    assert not swin.patch_embed.training and not swin.layers[0].training
    assert swin.layers[1].training and swin.layers[1].blocks[1].drop_path.training
    assert all(p.requires_grad for p in swin.layers[1].parameters())
    nothing = tiny_swin(frozen_stages=-1)
    assert all(p.requires_grad for p in nothing.parameters())


def test_shifted_window_mask_hand_case():
    # 4x4 padded map, window 2, shift 1: after the roll, rows/cols split into regions [0,2), [2,3), [3,4).
    mask = shifted_window_mask(4, 4, window_size=2, shift_size=1)
    assert mask.shape == (4, 4, 4)
    X = -100.0
    # window (0,0): one region
    assert torch.equal(mask[0], torch.zeros(4, 4))
    # window (0,1): tokens (0,2),(0,3),(1,2),(1,3) have region labels 1,2,1,2
    assert torch.equal(mask[1], torch.tensor([[0, X, 0, X], [X, 0, X, 0], [0, X, 0, X], [X, 0, X, 0]]))
    # window (1,0): tokens (2,0),(2,1),(3,0),(3,1) have labels 3,3,6,6
    assert torch.equal(mask[2], torch.tensor([[0, 0, X, X], [0, 0, X, X], [X, X, 0, 0], [X, X, 0, 0]]))
    # window (1,1): four different labels 4,5,7,8
    assert torch.equal(mask[3], torch.full((4, 4), X).fill_diagonal_(0))


def test_patch_merging_concat_order_and_odd_padding():
    merge = PatchMerging(1)
    with torch.no_grad():
        merge.norm.weight.fill_(1.0)
        merge.norm.bias.zero_()
    # capture the 4C vector entering the norm
    seen = {}
    merge.norm.register_forward_hook(lambda m, i, o: seen.setdefault("x", i[0]))
    H, W = 3, 3  # odd: padded to 4x4 with zeros
    grid = torch.arange(1.0, 10.0).view(1, H * W, 1)  # value = 1 + 3*row + col
    merge(grid, H, W)
    x = seen["x"].view(2, 2, 4)
    # order: (even row, even col), (odd row, even col), (even row, odd col), (odd row, odd col)
    assert x[0, 0].tolist() == [1, 4, 2, 5]
    assert x[0, 1].tolist() == [3, 6, 0, 0]
    assert x[1, 0].tolist() == [7, 0, 8, 0]
    assert x[1, 1].tolist() == [9, 0, 0, 0]


# ----------------------------------------------------------------------------------------------------------
# Swin: values against timm (224, no padding involved) and a dense reference (odd size)
# ----------------------------------------------------------------------------------------------------------
def test_swin_t_matches_timm_at_224():
    timm_swin = pytest.importorskip("timm.models.swin_transformer")
    torch.manual_seed(0)
    ours = randomize_(SwinTransformer(drop_path_rate=0.0), scale=0.5).eval()
    # always_partition: keep the 7x7 window and the shift on the 7x7 last stage, as the detection Swin does
    ref = timm_swin.SwinTransformer(img_size=224, embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24),
                                    window_size=7, always_partition=True, drop_path_rate=0.0, num_classes=0)
    ref = ref.eval()
    mapped = {}
    for k, v in ours.state_dict().items():
        if k.startswith("norm"):
            continue  # our per-stage output norms, applied below
        # official: downsample at the end of layer i; timm: at the start of layer i+1
        parts = k.split(".")
        if parts[0] == "layers" and parts[2] == "downsample":
            parts[1] = str(int(parts[1]) + 1)
        mapped[".".join(parts)] = v
    missing, unexpected = ref.load_state_dict(mapped, strict=False)
    assert not unexpected and set(missing) <= {"norm.weight", "norm.bias"}

    img = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        out = ours(img)
        x = ref.patch_embed(img)
        for i, stage in enumerate(ref.layers):
            x = stage(x)  # NHWC
            norm = getattr(ours, f"norm{i}")
            expected = norm(x).permute(0, 3, 1, 2)
            torch.testing.assert_close(out[f"stage{i + 2}"], expected, rtol=0, atol=1e-4)


def _dense_block_reference(blk, x, H, W):
    """One Swin block as global attention over the padded map: pairs in different (shifted) windows are
    excluded, pairs from different roll regions get -100, the bias is looked up from coordinate offsets."""
    B, _, C = x.shape
    ws, s, nh = blk.window_size, blk.shift_size, blk.attn.num_heads
    Hp, Wp = math.ceil(H / ws) * ws, math.ceil(W / ws) * ws
    xn = F.pad(blk.norm1(x).view(B, H, W, C), (0, 0, 0, Wp - W, 0, Hp - H)).reshape(B, Hp * Wp, C)
    r, c = torch.meshgrid(torch.arange(Hp), torch.arange(Wp), indexing="ij")
    r, c = (r - s) % Hp, (c - s) % Wp  # positions in the rolled frame
    r, c = r.reshape(-1), c.reshape(-1)

    def region(v, n):
        return torch.where(v < n - ws, 0, torch.where(v < n - s, 1, 2)) if s > 0 else torch.zeros_like(v)

    label = region(r, Hp) * 3 + region(c, Wp)
    same_window = ((r[:, None] // ws) == (r[None] // ws)) & ((c[:, None] // ws) == (c[None] // ws))
    table_idx = ((r[:, None] % ws - r[None] % ws) + ws - 1) * (2 * ws - 1) + (c[:, None] % ws - c[None] % ws) + ws - 1
    bias = blk.attn.relative_position_bias_table[table_idx.clamp(min=0)].permute(2, 0, 1)  # nh, N, N
    logits_extra = bias + torch.where(label[:, None] != label[None], -100.0, 0.0).to(x.dtype)
    logits_extra = logits_extra.masked_fill(~same_window, float("-inf"))
    qkv = blk.attn.qkv(xn).view(B, -1, 3, nh, C // nh).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0] * blk.attn.scale, qkv[1], qkv[2]
    attn = (q @ k.transpose(-2, -1) + logits_extra).softmax(-1)
    y = blk.attn.proj((attn @ v).transpose(1, 2).reshape(B, -1, C))
    y = y.view(B, Hp, Wp, C)[:, :H, :W].reshape(B, H * W, C)
    x = x + y
    return x + blk.mlp(blk.norm2(x))


def _merge_reference(merge, x, H, W):
    B, _, C = x.shape
    grid = F.pad(x.transpose(1, 2).reshape(B, C, H, W), (0, W % 2, 0, H % 2))
    cols = F.unfold(grid, kernel_size=2, stride=2)  # B, C*kh*kw, L'
    cols = cols.view(B, C, 2, 2, -1).permute(0, 4, 3, 2, 1).reshape(B, -1, 4 * C)  # (kw, kh, C) order
    return merge.reduction(merge.norm(cols))


def test_swin_odd_size_matches_dense_reference():
    torch.manual_seed(0)
    model = randomize_(tiny_swin(), seed=1).double().eval()
    # 100x164: every stage needs window padding (25x41, 13x21, 7x11, 4x6), merging pads odd sizes, and the
    # last stage is smaller than the window (still shifted, no window clamping).
    img = torch.randn(1, 3, 100, 164, dtype=torch.float64)
    with torch.no_grad():
        out = model(img)
        x = model.patch_embed(img)
        H, W = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2)
        for i, layer in enumerate(model.layers):
            for blk in layer.blocks:
                x = _dense_block_reference(blk, x, H, W)
            expected = getattr(model, f"norm{i}")(x).transpose(1, 2).reshape(1, -1, H, W)
            torch.testing.assert_close(out[f"stage{i + 2}"], expected, rtol=0, atol=1e-9)
            if layer.downsample is not None:
                x = _merge_reference(layer.downsample, x, H, W)
                H, W = (H + 1) // 2, (W + 1) // 2
    assert [tuple(out[f"stage{i}"].shape[-2:]) for i in range(2, 6)] == [(25, 41), (13, 21), (7, 11), (4, 6)]


def test_swin_pads_input_to_patch_multiple_with_zeros():
    model = randomize_(tiny_swin(), seed=2).eval()
    img = torch.randn(1, 3, 198, 325)
    with torch.no_grad():
        a = model(img)
        b = model(F.pad(img, (0, 3, 0, 2)))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-5)


def test_swin_gradient_checkpointing_gives_same_outputs_and_grads():
    torch.manual_seed(0)
    plain = randomize_(tiny_swin(), seed=3).double().train()
    ckpt = randomize_(tiny_swin(use_checkpoint=True), seed=3).double().train()
    assert all(layer.use_checkpoint for layer in ckpt.layers)
    img = torch.randn(1, 3, 32, 48, dtype=torch.float64)
    grads = []
    for model in (plain, ckpt):
        model.zero_grad()
        out = model(img)
        sum((v * (j + 1)).sum() for j, v in enumerate(out.values())).backward()
        grads.append(model.layers[1].blocks[1].attn.qkv.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=1e-10)


# ----------------------------------------------------------------------------------------------------------
# FPN
# ----------------------------------------------------------------------------------------------------------
def resnet18_cfg(**fpn):
    cfg = add_glip_config(get_cfg())
    cfg.MODEL.BACKBONE.NAME = "build_resnet_glip_fpn_backbone"
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res3", "res4", "res5"]
    for k, v in fpn.items():
        setattr(cfg.MODEL.FPN, k, v)
    return cfg


def test_fpn_strides_and_sizes_for_800x1344():
    cfg = glip_cfg(EMBED_DIM=8, DEPTHS=[2, 2, 2, 2], NUM_HEADS=[1, 1, 1, 1])
    cfg.MODEL.FPN.OUT_CHANNELS = 8
    cfg.MODEL.BACKBONE.NAME = "build_swin_glip_fpn_backbone"
    backbone = build_backbone(cfg).eval()
    assert isinstance(backbone, GLIPFPN) and backbone.size_divisibility == 32
    assert {k: (v.channels, v.stride) for k, v in backbone.output_shape().items()} == {
        f"p{i}": (8, 2**i) for i in range(3, 8)}
    with torch.no_grad():
        out = backbone(torch.randn(1, 3, 800, 1344))
    sizes = {k: tuple(v.shape[-2:]) for k, v in out.items()}
    assert sizes == {"p3": (100, 168), "p4": (50, 84), "p5": (25, 42), "p6": (13, 21), "p7": (7, 11)}
    assert sum(h * w for h, w in sizes.values()) == 22400


def test_fpn_matches_detectron2_fpn_with_p6p7_on_p5():
    from detectron2.modeling.backbone.fpn import FPN, LastLevelP6P7

    ours = build_backbone(resnet18_cfg()).eval()
    with torch.no_grad():  # non-zero biases so a missing bias would show
        for name, p in ours.named_parameters():
            if name.endswith("bias") and not name.startswith("bottom_up"):
                p.normal_(0, 0.1)
    d2 = FPN(bottom_up=ours.bottom_up, in_features=["res3", "res4", "res5"], out_channels=256,
             top_block=LastLevelP6P7(256, 256, in_feature="p5")).eval()
    d2.load_state_dict(ours.state_dict(), strict=True)  # same names: fpn_lateral*, fpn_output*, top_block.*
    img = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        a, b = ours(img), d2(img)
    assert list(a) == list(b) == ["p3", "p4", "p5", "p6", "p7"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-5)


def test_fpn_top_down_uses_nearest_to_lateral_size_at_odd_sizes():
    fpn = build_backbone(resnet18_cfg()).eval()
    img = torch.randn(1, 3, 200, 328)  # res3 25x41, res4 13x21, res5 7x11: not exact halves
    with torch.no_grad():
        feats = fpn.bottom_up(img)
        out = fpn(img)
        l5 = fpn.fpn_lateral5(feats["res5"])
        l4 = fpn.fpn_lateral4(feats["res4"])
        # nearest: source index floor(dst * in / out)
        rows = torch.arange(13) * 7 // 13
        cols = torch.arange(21) * 11 // 21
        m4 = l4 + l5[:, :, rows][:, :, :, cols]
        torch.testing.assert_close(out["p4"], fpn.fpn_output4(m4), rtol=0, atol=1e-5)
        rows, cols = torch.arange(25) * 13 // 25, torch.arange(41) * 21 // 41
        m3 = fpn.fpn_lateral3(feats["res3"]) + m4[:, :, rows][:, :, :, cols]
        torch.testing.assert_close(out["p3"], fpn.fpn_output3(m3), rtol=0, atol=1e-5)
        p6 = fpn.top_block.p6(out["p5"])
        torch.testing.assert_close(out["p7"], fpn.top_block.p7(p6.clamp(min=0)), rtol=0, atol=1e-5)
    assert tuple(out["p6"].shape[-2:]) == (4, 6) and tuple(out["p7"].shape[-2:]) == (2, 3)


def test_fpn_init_is_kaiming_uniform_a1_with_zero_bias():
    fpn = build_backbone(resnet18_cfg())
    w = fpn.fpn_output3.weight
    bound = math.sqrt(6 / ((1 + 1**2) * w[0].numel()))  # kaiming_uniform gain sqrt(2/(1+a^2)), a=1
    assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound
    assert all(getattr(fpn, n).bias.abs().sum() == 0 for n in ("fpn_lateral3", "fpn_output5"))
    assert fpn.top_block.p7.bias.abs().sum() == 0


def _dropblock_loop_reference(x, seeds, block_size):
    """Each seed at (a, b) zeroes rows a-(bs-1)+bs//2 .. a+bs//2 (same for cols), clipped to the map."""
    N, _, H, W = x.shape
    keep = torch.ones(N, H, W)
    p = block_size // 2
    for n, a, b in seeds.nonzero().tolist():
        for i in range(a - (block_size - 1) + p, a + p + 1):
            for j in range(b - (block_size - 1) + p, b + p + 1):
                if 0 <= i < H and 0 <= j < W:
                    keep[n, i, j] = 0
    return x * keep[:, None] * (keep.numel() / keep.sum())


@pytest.mark.parametrize("block_size", [3, 2])
def test_dropblock_matches_official_formula(block_size):
    db = DropBlock2D(0.3, block_size)
    x = torch.randn(2, 4, 9, 11)
    db.eval()
    assert db(x) is x
    db.train()
    torch.manual_seed(5)
    out = db(x)
    torch.manual_seed(5)
    seeds = torch.rand(2, 9, 11) < 0.3 / block_size**2  # gamma = p / bs^2, one draw per image position
    assert seeds.any()
    torch.testing.assert_close(out, _dropblock_loop_reference(x, seeds, block_size), rtol=0, atol=1e-6)


def test_fpn_dropblock_only_in_training_and_only_on_p3_p4():
    fpn = build_backbone(resnet18_cfg())  # FrozenBN: the bottom-up has no train/eval difference
    img = torch.randn(1, 3, 128, 160)
    with torch.no_grad():
        ev = fpn.eval()(img)
        torch.manual_seed(0)
        tr = fpn.train()(img)
    for k in ("p5", "p6", "p7"):
        torch.testing.assert_close(tr[k], ev[k], rtol=0, atol=0)
    for k in ("p3", "p4"):
        assert not torch.allclose(tr[k], ev[k])
    off = build_backbone(resnet18_cfg(DROP_BLOCK=False))
    off.load_state_dict(fpn.state_dict())
    with torch.no_grad():
        tr_off = off.train()(img)
    for k in ev:
        torch.testing.assert_close(tr_off[k], ev[k], rtol=0, atol=0)


def test_bad_inputs_raise_clear_errors():
    cfg = resnet18_cfg()
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res4", "res5"]
    with pytest.raises(ValueError, match="OUT_FEATURES"):
        build_backbone(cfg)
    with pytest.raises(ValueError, match="strides"):
        GLIPFPN(bottom_up=tiny_swin(), in_features=["stage2", "stage3", "stage4"])
    with pytest.raises(ValueError, match="not produced"):
        GLIPFPN(bottom_up=tiny_swin(out_features=("stage2",)), in_features=["stage3", "stage4", "stage5"])
    with pytest.raises(ValueError, match="divisible"):
        SwinTransformer(embed_dim=10, num_heads=(3, 6, 12, 24))
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        tiny_swin()(torch.zeros(3, 32, 32))


def test_official_backbone_key_renaming():
    """The checkpoint converter's key map (the one official -> glip_d2 map) on backbone keys."""
    def r(key):
        return map_official_key(key, GLIP_T)  # (glip_d2 key, None) or (None, why it is dropped)

    # the ``module.`` prefix of a DDP-saved file is stripped before mapping
    stripped = official_state_dict({"model": {"module.backbone.body.layers.2.blocks.5.attn.qkv.weight": torch.zeros(1)}})
    assert list(stripped) == ["backbone.body.layers.2.blocks.5.attn.qkv.weight"]
    assert r(next(iter(stripped))) == ("backbone.bottom_up.layers.2.blocks.5.attn.qkv.weight", None)
    assert r("backbone.body.norm3.bias") == ("backbone.bottom_up.norm3.bias", None)
    new, reason = r("backbone.body.layers.0.blocks.1.attn.relative_position_index")
    assert new is None and reason  # dropped, with a reason (recomputed)
    assert r("backbone.fpn.fpn_inner2.weight") == ("backbone.fpn_lateral3.weight", None)
    assert r("backbone.fpn.fpn_inner4.bias") == ("backbone.fpn_lateral5.bias", None)
    assert r("backbone.fpn.fpn_layer3.weight") == ("backbone.fpn_output4.weight", None)
    assert r("backbone.fpn.top_blocks.p7.bias") == ("backbone.top_block.p7.bias", None)
    assert r("rpn.head.bias0") == ("head.bias0", None)  # a head key, not a backbone one


# ----------------------------------------------------------------------------------------------------------
# Fidelity against the official GLIP-T run
# ----------------------------------------------------------------------------------------------------------
@requires_reference
def test_swin_t_fpn_reproduces_official_fpn_outputs():
    ref = load_reference()
    backbone = build_swin_glip_fpn_backbone(glip_cfg(), ShapeSpec(channels=3)).eval()
    state = {}
    for key, value in official_reference_weights("backbone.").items():
        new, _ = map_official_key(key, GLIP_T)
        if new is not None:
            state[new[len("backbone."):]] = value
    backbone.load_state_dict(state, strict=True)
    with torch.no_grad():
        out = backbone(ref["inputs"]["image_tensor_padded"])
    for name, expected in zip(["p3", "p4", "p5", "p6", "p7"], ref["backbone"]["fpn"]):
        assert out[name].shape == expected.shape
        torch.testing.assert_close(out[name], expected, rtol=0, atol=1e-4, msg=f"FPN level {name} differs from the official output")
