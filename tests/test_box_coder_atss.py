"""Legacy "+1" box geometry, anchors and ATSS assignment against hand-computed values and the official reference."""
import math

import pytest
import torch
from reference_data import load_reference, requires_reference

import glip_d2  # noqa: F401  (shims)
from glip_d2.modeling.dense_heads.anchor_generator import GLIPAnchorGenerator, legacy_cell_anchors
from glip_d2.modeling.dense_heads.atss import ATSSMatcher
from glip_d2.modeling.dense_heads.box_coder import GLIPBoxCoder
from glip_d2.structures.legacy_boxes import continuous_to_legacy, legacy_clip, legacy_pairwise_iou


# ---- box coder ---------------------------------------------------------------------------------------------------
def test_encode_hand_computed():
    # anchor [0,0,7,7]: "+1" size 8, centre 3.5; gt [2,2,9,13]: size 8x12, centre (5.5, 7.5)
    deltas = GLIPBoxCoder().encode(torch.tensor([[2.0, 2.0, 9.0, 13.0]]), torch.tensor([[0.0, 0.0, 7.0, 7.0]]))
    expected = torch.tensor([[10 * 2 / 8, 10 * 4 / 8, 0.0, 5 * math.log(12 / 8)]])
    torch.testing.assert_close(deltas, expected)


def test_decode_hand_computed_and_clamped():
    coder = GLIPBoxCoder()
    anchors = torch.tensor([[0.0, 0.0, 7.0, 7.0], [0.0, 0.0, 7.0, 7.0]])
    deltas = torch.tensor([[5.0, -10.0, 5 * math.log(2.0), 0.0], [0.0, 0.0, 100.0, -100.0]])
    boxes = coder.decode(deltas, anchors)
    # row 0: centre (3.5 + 0.5*8, 3.5 - 1*8) = (7.5, -4.5), size (16, 8) -> [7.5-7.5, -4.5-3.5, 7.5+7.5, -4.5+3.5]
    torch.testing.assert_close(boxes[0], torch.tensor([0.0, -8.0, 15.0, -1.0]))
    # row 1: dw clamped to log(1000/16) -> width 8 * 62.5 = 500; dh = -20 (no lower clamp) -> height 8 e^-20
    w, h = 500.0, 8 * math.exp(-20.0)
    expected = torch.tensor([3.5 - (w - 1) / 2, 3.5 - (h - 1) / 2, 3.5 + (w - 1) / 2, 3.5 + (h - 1) / 2])
    torch.testing.assert_close(boxes[1], expected)


def test_box_coder_round_trip():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(200, 2, generator=g) * 500
    anchors = torch.cat([xy, xy + torch.rand(200, 2, generator=g) * 300 + 2], dim=1)
    xy = torch.rand(200, 2, generator=g) * 500
    gt = torch.cat([xy, xy + torch.rand(200, 2, generator=g) * 300 + 2], dim=1)
    coder = GLIPBoxCoder((10.0, 10.0, 5.0, 5.0))
    torch.testing.assert_close(coder.decode(coder.encode(gt, anchors), anchors), gt, atol=1e-3, rtol=0)


def test_box_coder_rejects_bad_shapes():
    with pytest.raises(ValueError, match="shape"):
        GLIPBoxCoder().decode(torch.zeros(3, 5), torch.zeros(3, 4))
    with pytest.raises(ValueError, match="4 numbers"):
        GLIPBoxCoder((1.0, 1.0))


def test_plus_one_iou_and_clip():
    a = torch.tensor([[0.0, 0.0, 9.0, 9.0]])
    b = torch.tensor([[5.0, 5.0, 14.0, 14.0], [20.0, 20.0, 30.0, 30.0], [9.0, 9.0, 9.0, 9.0]])
    # areas 100 each, overlap 5x5 = 25 -> 25 / 175; disjoint -> 0; a single pixel on the corner -> 1 / 100
    torch.testing.assert_close(legacy_pairwise_iou(a, b), torch.tensor([[25 / 175, 0.0, 1 / 100]]))
    clipped = legacy_clip(torch.tensor([[-5.0, -1.0, 400.0, 250.0]]), height=200, width=300)
    torch.testing.assert_close(clipped, torch.tensor([[0.0, 0.0, 299.0, 199.0]]))
    torch.testing.assert_close(continuous_to_legacy(torch.tensor([[10.0, 20.0, 30.0, 40.0]])),
                               torch.tensor([[10.0, 20.0, 29.0, 39.0]]))


# ---- anchors -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "stride,size,expected",
    [(8, 64, [-28, -28, 35, 35]), (16, 128, [-56, -56, 71, 71]), (32, 256, [-112, -112, 143, 143]),
     (64, 512, [-224, -224, 287, 287]), (128, 1024, [-448, -448, 575, 575])],
)
def test_cell_anchors_reference_values(stride, size, expected):
    torch.testing.assert_close(legacy_cell_anchors(stride, [size], [1.0]), torch.tensor([expected], dtype=torch.float32))


def test_cell_anchor_aspect_ratio_rounding():
    # ratio 2 at stride 8: w = round(sqrt(64 / 2)) = 6, h = round(6 * 2) = 12, scaled x8 -> 48 x 96 around 3.5
    torch.testing.assert_close(legacy_cell_anchors(8, [64], [2.0]), torch.tensor([[-20.0, -44.0, 27.0, 51.0]]))


def test_anchor_grid_is_row_major_over_padded_map():
    gen = GLIPAnchorGenerator(sizes=[64, 128], strides=[8, 16], aspect_ratios=[1.0])
    a8, a16 = gen([torch.zeros(1, 1, 2, 3), torch.zeros(1, 1, 1, 2)])
    assert a8.shape == (6, 4) and a16.shape == (2, 4)
    torch.testing.assert_close(a8[1], torch.tensor([-20.0, -28.0, 43.0, 35.0]))  # x + 8
    torch.testing.assert_close(a8[3], torch.tensor([-28.0, -20.0, 35.0, 43.0]))  # next row, y + 8
    torch.testing.assert_close(a16[1], torch.tensor([-40.0, -56.0, 87.0, 71.0]))
    assert "cell_anchors_0" not in gen.state_dict()  # recomputed, never saved


@requires_reference
def test_anchors_match_official_reference():
    ref = load_reference()
    gen = GLIPAnchorGenerator(sizes=[64, 128, 256, 512, 1024], strides=[8, 16, 32, 64, 128])
    feats = [torch.zeros(1, 1, s, s) for s in (40, 20, 10, 5, 3)]  # padded 320x320 input
    for ours, theirs in zip(gen(feats), ref["anchors"]):
        assert torch.equal(ours, theirs)


# ---- ATSS --------------------------------------------------------------------------------------------------------
def _grid_anchors(n=4, stride=8, size=16):
    gen = GLIPAnchorGenerator(sizes=[size], strides=[stride])
    return gen([torch.zeros(1, 1, n, n)])


def test_atss_hand_computed():
    """4x4 grid of 16-px anchors [-4+8x, -4+8y, 11+8x, 11+8y]; topk 3.

    GT0 [5,6,20,21] (centre 12.5,13.5): closest anchors (1,1),(1,2),(2,1) with IoUs 210/302, 150/362, 126/386;
    threshold mean+std = 0.6714 -> only (1,1) (index 5), whose centre (11.5,11.5) is inside.
    GT1 [3,2,18,16] (centre 10.5,9): closest (1,1),(1,0),(0,1), IoUs 195/301, 150/346, 117/379; threshold 0.6349
    -> also only (1,1). Anchor 5 goes to the GT it overlaps more: GT0 (0.695 > 0.648). Everything else negative.
    """
    anchors = _grid_anchors()
    gt = torch.tensor([[5.0, 6.0, 20.0, 21.0], [3.0, 2.0, 18.0, 16.0]])
    matched = ATSSMatcher(topk=3)(anchors, gt)
    expected = torch.full((16,), -1, dtype=torch.long)
    expected[5] = 0
    assert torch.equal(matched, expected)
    # alone, GT1 takes anchor 5
    assert torch.equal(ATSSMatcher(topk=3)(anchors, gt[1:]), expected)


def test_atss_centre_must_be_inside_box():
    """Three hand-placed anchors, all candidates. GT [0,0,9,4.2]: anchor 0 has IoU 52/100 = 0.52 >= mean + std
    (0.1733 + 0.3002) but its centre y = 4.5 is below y2 = 4.2 -> not positive. GT [0,0,9,5.2]: centre inside by
    0.7 -> positive."""
    anchors = [torch.tensor([[0.0, 0.0, 9.0, 9.0], [30.0, 30.0, 39.0, 39.0], [60.0, 60.0, 69.0, 69.0]])]
    matcher = ATSSMatcher(topk=3)
    assert torch.equal(matcher(anchors, torch.tensor([[0.0, 0.0, 9.0, 4.2]])), torch.tensor([-1, -1, -1]))
    assert torch.equal(matcher(anchors, torch.tensor([[0.0, 0.0, 9.0, 5.2]])), torch.tensor([0, -1, -1]))


def test_atss_no_gt_is_all_negative():
    assert torch.equal(ATSSMatcher()(_grid_anchors(), torch.zeros(0, 4)), torch.full((16,), -1))


def _atss_loop(anchors_per_level, gt, topk):
    """A second, loop-based formulation of the ATSS rule (one gt at a time, python floats)."""
    anchors = torch.cat(anchors_per_level).double()
    gt = gt.double()
    best = [(-math.inf, -1)] * len(anchors)
    for g, box in enumerate(gt):
        centre = (box[:2] + box[2:]) / 2
        cand = []
        start = 0
        for lvl in anchors_per_level:
            block = anchors[start : start + len(lvl)]
            d = (((block[:, :2] + block[:, 2:]) / 2 - centre) ** 2).sum(1).sqrt()
            cand += (d.argsort()[: min(topk, len(lvl))] + start).tolist()
            start += len(lvl)
        ious = [legacy_pairwise_iou(anchors[i : i + 1], box[None])[0, 0].item() for i in cand]
        mean = sum(ious) / len(ious)
        std = math.sqrt(sum((v - mean) ** 2 for v in ious) / (len(ious) - 1))
        for i, v in zip(cand, ious):
            cx, cy = ((anchors[i, :2] + anchors[i, 2:]) / 2).tolist()
            inside = min(cx - box[0], cy - box[1], box[2] - cx, box[3] - cy) > 0.01
            if v >= mean + std and inside and v > best[i][0]:
                best[i] = (v, g)
    return torch.tensor([g for _, g in best])


def test_atss_matches_loop_formulation_on_random_boxes():
    g = torch.Generator().manual_seed(3)
    gen = GLIPAnchorGenerator(sizes=[32, 64], strides=[8, 16])
    anchors = gen([torch.zeros(1, 1, 12, 13), torch.zeros(1, 1, 6, 7)])
    # off-grid random boxes: distance ties have probability 0
    xy = torch.rand(6, 2, generator=g) * 70 + 0.37
    gt = torch.cat([xy, xy + torch.rand(6, 2, generator=g) * 40 + 8.13], dim=1)
    ours = ATSSMatcher(topk=5)(anchors, gt)
    assert torch.equal(ours, _atss_loop(anchors, gt, 5))
    assert (ours >= 0).sum() >= 6  # sanity: the rule found positives
