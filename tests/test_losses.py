"""GLIP losses: token focal vs the direct formula, GIoU and centerness by hand, normalisers, [NoObj] targets."""
import math
import os
import tempfile

import pytest
import torch
import torch.multiprocessing as mp

import glip_d2  # noqa: F401  (shims)
from glip_d2.modeling.dense_heads.atss import ATSSMatcher
from glip_d2.modeling.dense_heads.box_coder import GLIPBoxCoder
from glip_d2.modeling.dense_heads.losses import (
    GLIPLoss,
    build_token_targets,
    centerness_targets,
    giou_loss,
    token_sigmoid_focal_loss,
)


def _direct_focal(logit: float, target: float, alpha=0.25, gamma=2.0) -> float:
    p = 1 / (1 + math.exp(-logit))
    if target == 1:
        return -alpha * (1 - p) ** gamma * math.log(p)
    return -(1 - alpha) * p**gamma * math.log(1 - p)


def test_token_focal_matches_direct_formula_and_skips_padding():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 6, generator=g) * 3
    targets = (torch.rand(2, 5, 6, generator=g) > 0.7).float()
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0]])
    expected = sum(
        _direct_focal(logits[b, a, t].item(), targets[b, a, t].item())
        for b in range(2) for a in range(5) for t in range(6) if mask[b, t]
    )
    got = token_sigmoid_focal_loss(logits, targets, mask, alpha=0.25, gamma=2.0)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    # padded positions do not matter at all
    logits2 = logits.clone()
    logits2[0, :, 4:] = 50.0
    logits2[1, :, 2:] = -50.0
    assert token_sigmoid_focal_loss(logits2, targets, mask).item() == pytest.approx(expected, rel=1e-5)


def test_token_focal_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="text_mask"):
        token_sigmoid_focal_loss(torch.zeros(1, 2, 3), torch.zeros(1, 2, 3), torch.ones(1, 4))


def test_giou_hand_computed():
    pred = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 2.0, 2.0]])
    target = torch.tensor([[1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 2.0, 2.0]])
    # inter 1, union 7, enclosing 9 -> giou = 1/7 - 2/9; identical boxes -> giou 1 (eps-sized difference)
    loss0 = 1 - (1 / 7 - 2 / 9)
    torch.testing.assert_close(giou_loss(pred, target), torch.tensor(loss0), atol=1e-6, rtol=0)
    weighted = giou_loss(pred, target, weight=torch.tensor([0.5, 2.0]))
    torch.testing.assert_close(weighted, torch.tensor(0.5 * loss0), atol=1e-6, rtol=0)
    # x2 < x1 on the prediction is raised to x1 (zero-area box): iou 0, enclosing [1,0,3,3] (area 6), union 4 -> 1 - (0 - 2/6)
    flipped = giou_loss(torch.tensor([[2.0, 0.0, 0.0, 2.0]]), torch.tensor([[1.0, 1.0, 3.0, 3.0]]))
    torch.testing.assert_close(flipped, torch.tensor(1 + 1 / 3), atol=1e-6, rtol=0)


def test_centerness_target_hand_computed():
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0]])  # centre (5, 5)
    ctr = centerness_targets(torch.tensor([[0.0, 0.0, 10.0, 20.0]]), anchors)  # l=r=5, t=5, b=15
    torch.testing.assert_close(ctr, torch.tensor([math.sqrt(1.0 * 5 / 15)]))


def test_token_targets_noobj_slot_and_width():
    matched = torch.tensor([1, -1, 0])
    pmap = torch.zeros(2, 8)
    pmap[0, 1] = 1
    pmap[1, 3:5] = 1
    t = build_token_targets(matched, pmap, num_tokens=6)  # map is 8 wide, caption 6 tokens: last 2 columns empty
    expected = torch.zeros(3, 6)
    expected[0, 3:5] = 1
    expected[1, 5] = 1  # [NoObj] = last token position
    expected[2, 1] = 1
    assert torch.equal(t, expected)
    pmap[0, 7] = 1
    with pytest.raises(ValueError, match="beyond"):
        build_token_targets(matched, pmap, num_tokens=6)


def _one_level_setup():
    """4x4 grid of 16-px anchors (stride 8); GT [5,6,20,21] -> with topk 3 only anchor 5 is positive
    (hand-computed in test_box_coder_atss.py)."""
    from glip_d2.modeling.dense_heads.anchor_generator import GLIPAnchorGenerator

    anchors = GLIPAnchorGenerator(sizes=[16], strides=[8])([torch.zeros(1, 1, 4, 4)])
    gt = torch.tensor([[5.0, 6.0, 20.0, 21.0]])
    pmap = torch.zeros(1, 6)
    pmap[0, 1:3] = 1
    return anchors, gt, pmap


def _loss(topk=3):
    return GLIPLoss(box_coder=GLIPBoxCoder(), matcher=ATSSMatcher(topk=topk))


def test_glip_loss_values_with_one_positive():
    anchors, gt, pmap = _one_level_setup()
    coder = GLIPBoxCoder()
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(1, 16, 6, generator=g)
    ctr_logits = torch.randn(1, 1, 4, 4, generator=g)
    # perfect regression at the positive anchor, arbitrary elsewhere
    deltas = torch.randn(1, 16, 4, generator=g)
    deltas[0, 5] = coder.encode(gt, anchors[0][5:6])[0]
    box_reg = deltas.reshape(1, 4, 4, 4).permute(0, 3, 1, 2)  # [B, 4, H, W], row-major locations
    mask = torch.tensor([[1, 1, 1, 1, 0, 0]])
    losses = _loss()([box_reg], [ctr_logits], [logits], anchors, [gt], [pmap], mask)

    targets = torch.zeros(1, 16, 6)
    targets[0, :, 5] = 1  # [NoObj] for negatives (masked out here: position 5 is padding)
    targets[0, 5] = pmap[0]
    expected_token = token_sigmoid_focal_loss(logits, targets, mask) / 1.0  # one positive
    torch.testing.assert_close(losses["loss_dot_product_token"], expected_token)
    assert losses["loss_reg"].item() == pytest.approx(0.0, abs=1e-5)  # GIoU of a perfect box, x2.0
    ctr_t = centerness_targets(gt, anchors[0][5:6])  # anchor centre (11.5,11.5) in [5,6,20,21]
    expected_ctr = torch.nn.functional.binary_cross_entropy_with_logits(ctr_logits.reshape(-1)[5:6], ctr_t, reduction="sum")
    torch.testing.assert_close(losses["loss_centerness"], expected_ctr)


def test_glip_loss_reg_weight_and_normaliser():
    anchors, gt, pmap = _one_level_setup()
    box_reg = torch.zeros(2, 4, 4, 4)  # anchors as predictions
    ctr = torch.zeros(2, 1, 4, 4)
    logits = torch.zeros(2, 16, 6)
    mask = torch.ones(2, 6, dtype=torch.long)
    # two images with the same single positive: normaliser = 2 positives, GIoU term sums over both
    losses = _loss()([box_reg], [ctr], [logits], anchors, [gt, gt], [pmap, pmap], mask)
    pred = anchors[0][5:6]
    one = giou_loss(pred, gt)  # centerness weight cancels against the centerness-sum normaliser
    torch.testing.assert_close(losses["loss_reg"], 2.0 * one, rtol=1e-5, atol=1e-6)
    targets = torch.zeros(2, 16, 6)
    targets[:, :, 5] = 1
    targets[:, 5] = pmap[0]
    torch.testing.assert_close(losses["loss_dot_product_token"], token_sigmoid_focal_loss(logits, targets, mask) / 2)


def test_glip_loss_without_ground_truth():
    anchors, _, _ = _one_level_setup()
    box_reg = torch.randn(1, 4, 4, 4, requires_grad=True)
    logits = torch.randn(1, 16, 6, requires_grad=True)
    mask = torch.ones(1, 6, dtype=torch.long)
    losses = _loss()([box_reg], [torch.zeros(1, 1, 4, 4)], [logits], anchors, [torch.zeros(0, 4)], [torch.zeros(0, 6)], mask)
    assert losses["loss_reg"].item() == 0 and losses["loss_centerness"].item() == 0
    targets = torch.zeros(1, 16, 6)
    targets[..., 5] = 1  # every anchor is [NoObj]; normaliser max(0, 1) = 1
    torch.testing.assert_close(losses["loss_dot_product_token"], token_sigmoid_focal_loss(logits, targets, mask))
    sum(losses.values()).backward()
    assert box_reg.grad is not None and logits.grad.abs().sum() > 0


def test_glip_loss_rejects_mismatched_maps():
    anchors, gt, pmap = _one_level_setup()
    with pytest.raises(ValueError, match="positive-map rows"):
        _loss()([torch.zeros(1, 4, 4, 4)], [torch.zeros(1, 1, 4, 4)], [torch.zeros(1, 16, 6)], anchors,
                [gt], [torch.zeros(2, 6)], torch.ones(1, 6))


def _distributed_worker(rank, world_size, init_file, out_file):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    anchors, gt, pmap = _one_level_setup()
    # rank 0: one image with the GT (1 positive); rank 1: no GT (0 positives) -> mean positives 0.5 -> clamp to 1
    gts = [gt] if rank == 0 else [torch.zeros(0, 4)]
    maps = [pmap] if rank == 0 else [torch.zeros(0, 6)]
    box_reg = torch.zeros(1, 4, 4, 4)
    logits = torch.full((1, 16, 6), 0.3)
    losses = _loss()([box_reg], [torch.zeros(1, 1, 4, 4)], [logits], anchors, gts, maps, torch.ones(1, 6))
    torch.save({k: v.detach() for k, v in losses.items()}, f"{out_file}.{rank}")
    dist.destroy_process_group()


def test_normalisers_are_averaged_over_workers():
    """Two gloo workers: the token normaliser is max(total positives / 2, 1) and the GIoU normaliser is the
    centerness-target sum / 2, so rank 0's GIoU term is doubled relative to a single-process run."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "losses")
        mp.start_processes(_distributed_worker, args=(2, os.path.join(tmp, "init"), out), nprocs=2,
                           start_method="spawn")
        r0, r1 = torch.load(f"{out}.0"), torch.load(f"{out}.1")
    anchors, gt, pmap = _one_level_setup()
    single = _loss()([torch.zeros(1, 4, 4, 4)], [torch.zeros(1, 1, 4, 4)], [torch.full((1, 16, 6), 0.3)], anchors,
                     [gt], [pmap], torch.ones(1, 6))
    torch.testing.assert_close(r0["loss_reg"], 2 * single["loss_reg"])  # ctr-sum 1 positive / 2 workers
    torch.testing.assert_close(r0["loss_dot_product_token"], single["loss_dot_product_token"])  # max(0.5, 1) = 1
    assert r1["loss_reg"].item() == 0.0
