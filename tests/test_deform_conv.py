"""The embedding-bag and gather implementations of modulated deformable conv against torchvision's kernel.

``deform_conv.py`` replaces torchvision's op on the CPU ("auto": embedding_bag; gather for ONNX), so both must agree
with it, values and gradients, everywhere the DyHead can sample: offsets far outside the image, samples on the last
row/column, stride 2, dilation, 1-pixel maps.
"""
import pytest
import torch
from detectron2.config import get_cfg
from torchvision.ops import deform_conv2d

from glip_d2 import add_glip_config
from glip_d2.layers import ModulatedDeformConv2d
from glip_d2.layers.deform_conv import deform_conv2d_embedding_bag, deform_conv2d_gather, resolve_deform_impl
from glip_d2.modeling.dyhead import DyConv

IMPLS = {"embedding_bag": deform_conv2d_embedding_bag, "gather": deform_conv2d_gather}
CASES = {  # (B, C_in, C_out, H, W, stride, padding, dilation, offset scale)
    "small offsets": (2, 3, 4, 6, 7, 1, 1, 1, 0.7),
    "far outside": (2, 3, 4, 5, 6, 1, 1, 1, 6.0),
    "stride 2": (1, 4, 2, 9, 11, 2, 1, 1, 2.0),
    "dilation 2": (1, 2, 3, 8, 8, 1, 2, 2, 1.5),
    "one pixel": (2, 2, 2, 1, 1, 1, 1, 1, 0.8),
    "one row": (1, 2, 2, 1, 9, 1, 1, 1, 1.2),
    "nine rows (as many as taps)": (2, 2, 3, 9, 4, 1, 1, 1, 1.0),
}


def _inputs(case, seed=0, integer_taps=True):
    b, cin, cout, h, w, stride, pad, dil, scale = CASES[case]
    g = torch.Generator().manual_seed(seed)
    ho = (h + 2 * pad - dil * 2 - 1) // stride + 1
    wo = (w + 2 * pad - dil * 2 - 1) // stride + 1
    x = torch.randn(b, cin, h, w, generator=g, dtype=torch.float64)
    offset = scale * torch.randn(b, 18, ho, wo, generator=g, dtype=torch.float64)
    if integer_taps:  # samples exactly on pixels, edges included
        offset[:, :4] = offset[:, :4].round()
    mask = torch.rand(b, 9, ho, wo, generator=g, dtype=torch.float64)
    weight = torch.randn(cout, cin, 3, 3, generator=g, dtype=torch.float64)
    bias = torch.randn(cout, generator=g, dtype=torch.float64)
    return [t.requires_grad_() for t in (x, offset, mask, weight, bias)], dict(stride=stride, padding=pad,
                                                                              dilation=dil)


@pytest.mark.parametrize("impl", sorted(IMPLS))
@pytest.mark.parametrize("with_mask", [True, False])
@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_torchvision_values_and_gradients(case, with_mask, impl):
    conv = IMPLS[impl]
    (x, offset, mask, weight, bias), geom = _inputs(case)
    m = mask if with_mask else None
    s, p, d = geom["stride"], geom["padding"], geom["dilation"]
    ref = deform_conv2d(x, offset, weight, bias, stride=(s, s), padding=(p, p), dilation=(d, d), mask=m)
    ours = conv(x, offset, weight, bias, m, **geom)
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-12)

    # gradients away from the band edge y or x == -1 exactly (see test_gradient_at_the_band_edge_is_officials)
    (x, offset, mask, weight, bias), geom = _inputs(case, integer_taps=False)
    m = mask if with_mask else None
    ref = deform_conv2d(x, offset, weight, bias, stride=(s, s), padding=(p, p), dilation=(d, d), mask=m)
    ours = conv(x, offset, weight, bias, m, **geom)
    upstream = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    wrt = [x, offset, weight, bias] + ([mask] if with_mask else [])
    ref_grads = torch.autograd.grad(ref, wrt, upstream)
    our_grads = torch.autograd.grad(ours, wrt, upstream)
    for name, a, b in zip(["input", "offset", "weight", "bias", "mask"], our_grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9, msg=f"gradient w.r.t. {name}")


@pytest.mark.parametrize("impl", sorted(IMPLS))
def test_gradient_at_the_band_edge_is_officials(impl):
    """A sample exactly at row -1 reads 0 (outside the band y > -1). The official DCN kernels' coordinate gradient
    is 0 there too (``argmax_h <= -1`` returns 0); torchvision's CPU kernel returns the one-sided derivative.
    Both implementations follow the official kernels."""
    conv = IMPLS[impl]
    x = torch.arange(1.0, 10.0, dtype=torch.float64).reshape(1, 1, 3, 3)
    weight = torch.zeros(1, 1, 3, 3, dtype=torch.float64)
    weight[0, 0, 1, 1] = 1.0  # the centre tap alone: output = the sample at (i + dy, j + dx)
    offset = torch.zeros(1, 18, 3, 3, dtype=torch.float64)
    offset[0, 8, 0, 1] = -1.0  # centre tap (k = 4) dy: output (0, 1) samples row -1
    offset.requires_grad_()
    ours = conv(x, offset, weight, None, None)
    ref = deform_conv2d(x, offset, weight, None, padding=(1, 1))
    assert ours[0, 0, 0, 1].item() == ref[0, 0, 0, 1].item() == 0.0
    (g_ours,) = torch.autograd.grad(ours[0, 0, 0, 1], offset)
    (g_ref,) = torch.autograd.grad(ref[0, 0, 0, 1], offset)
    assert g_ours[0, 8, 0, 1].item() == 0.0
    assert g_ref[0, 8, 0, 1].item() == x[0, 0, 0, 1].item()  # torchvision: d/dy of y+1 times x[0, 1]
    offset2 = offset.detach().clone()
    offset2[0, 8, 0, 1] = -0.5  # inside the band both agree: d/dy (0.5 * x[0, 1]) = x[0, 1]
    offset2.requires_grad_()
    (a,) = torch.autograd.grad(conv(x, offset2, weight, None, None)[0, 0, 0, 1], offset2)
    (b,) = torch.autograd.grad(deform_conv2d(x, offset2, weight, None, padding=(1, 1))[0, 0, 0, 1], offset2)
    assert a[0, 8, 0, 1].item() == b[0, 8, 0, 1].item() == 2.0


@pytest.mark.parametrize("impl", sorted(IMPLS))
def test_rejects_shapes_it_does_not_handle(impl):
    conv = IMPLS[impl]
    (x, offset, mask, weight, bias), _ = _inputs("small offsets")
    with pytest.raises(ValueError, match="offset must have shape"):
        conv(x, offset[:, :, :-1], weight, bias, mask)
    with pytest.raises(ValueError, match="offset must have shape"):
        conv(x, offset[:, :4], weight, bias, mask)
    with pytest.raises(ValueError, match="mask must have shape"):
        conv(x, offset, weight, bias, mask[:, :4])
    with pytest.raises(ValueError, match="input channels"):
        conv(x, offset, weight[:, :1], bias, mask)


def test_auto_uses_embedding_bags_off_cuda_and_torchvision_on_cuda():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_deform_impl("auto", cpu) == "embedding_bag"
    assert resolve_deform_impl("auto", cuda) == "torchvision"
    assert resolve_deform_impl("torchvision", cpu) == "torchvision"
    assert resolve_deform_impl("gather", cuda) == "gather"
    with pytest.raises(ValueError, match="DEFORM_IMPL"):
        resolve_deform_impl("grid_sample", cpu)


def test_dyconv_training_step_is_the_same_with_either_kernel():
    cfg = add_glip_config(get_cfg())
    cfg.MODEL.DYHEAD.CHANNELS = 16
    cfg.MODEL.DYHEAD.GN_GROUPS = 4
    g = torch.Generator().manual_seed(3)
    feats = [torch.randn(2, 16, h, w, generator=g) for h, w in ((16, 20), (8, 10), (4, 5), (2, 3))]
    results = {}
    for impl in ("torchvision", "embedding_bag", "gather"):
        cfg.MODEL.DYHEAD.DEFORM_IMPL = impl
        torch.manual_seed(0)
        dyconv = DyConv(cfg).train()
        inputs = [f.clone().requires_grad_() for f in feats]
        out = dyconv(inputs)
        loss = sum((o * o).mean() for o in out)
        grads = torch.autograd.grad(loss, inputs + list(dyconv.parameters()))
        results[impl] = (out, grads)
    out_t, g_t = results["torchvision"]
    for impl in ("embedding_bag", "gather"):
        out, grads = results[impl]
        for a, b in zip(out, out_t):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=impl)
        for a, b in zip(grads, g_t):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=impl)
    cfg.MODEL.DYHEAD.DEFORM_IMPL = "fast"
    with pytest.raises(ValueError, match="DEFORM_IMPL"):
        DyConv(cfg)


def test_dyconv_inference_is_the_same_with_every_kernel():
    """In eval on the CPU "auto" samples with embedding bags, coarser levels' convs included (they re-read a finer
    level's offsets, ``kernel_view``)."""
    cfg = add_glip_config(get_cfg())
    cfg.MODEL.DYHEAD.CHANNELS = 16
    cfg.MODEL.DYHEAD.GN_GROUPS = 4
    g = torch.Generator().manual_seed(4)
    feats = [torch.randn(2, 16, h, w, generator=g) for h, w in ((16, 20), (8, 10), (4, 5), (2, 3), (1, 2))]
    outputs = {}
    for impl in ("torchvision", "embedding_bag", "gather", "auto"):
        cfg.MODEL.DYHEAD.DEFORM_IMPL = impl
        torch.manual_seed(0)
        dyconv = DyConv(cfg).eval()
        with torch.no_grad():
            outputs[impl] = dyconv(feats)
    for impl in ("embedding_bag", "gather", "auto"):
        for ours, ref in zip(outputs[impl], outputs["torchvision"]):
            torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5, msg=impl)


def test_inference_keeps_the_tap_weight_only_while_the_weight_is_unchanged():
    """Without autograd the embedding-bag conv keeps its weight re-laid out between calls; a weight changed in place
    (an optimizer step, ``load_state_dict``) or re-assigned is used at once. A channels-last input gives the same."""
    conv = ModulatedDeformConv2d(4, 3, impl="embedding_bag").double()
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 4, 6, 7, generator=g, dtype=torch.float64)
    offset = 1.5 * torch.randn(2, 18, 6, 7, generator=g, dtype=torch.float64)
    mask = torch.rand(2, 9, 6, 7, generator=g, dtype=torch.float64)

    def reference():
        return deform_conv2d(x, offset, conv.weight, conv.bias, padding=(1, 1), mask=mask)

    with torch.no_grad():
        for change in (lambda: None, lambda: conv.weight.mul_(-2.0),
                       lambda: conv.load_state_dict({"weight": torch.randn(3, 4, 3, 3, generator=g).double(),
                                                     "bias": conv.bias.clone()}),
                       lambda: setattr(conv, "weight", torch.nn.Parameter(conv.weight.flip(0).clone()))):
            change()
            torch.testing.assert_close(conv(x, offset, mask), reference(), rtol=0, atol=1e-12)
            assert conv._tap_weight is not None
        channels_last = x.contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(conv(channels_last, offset, mask), reference(), rtol=0, atol=1e-12)
    out = conv(x.requires_grad_(), offset, mask)  # with autograd the weight's own graph is used
    out.sum().backward()
    assert conv.weight.grad is not None and x.grad is not None
