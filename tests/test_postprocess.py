"""Post-processing on hand-made head outputs, the "+1" NMS, and the official reference detections."""
import math

import pytest
import torch
import torchvision
from reference_data import load_reference, requires_reference

import glip_d2  # noqa: F401  (shims)
from glip_d2.modeling.dense_heads.box_coder import GLIPBoxCoder
from glip_d2.modeling.dense_heads.postprocess import GLIPPostProcessor, legacy_batched_nms, token_to_label_scores


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def test_label_score_is_mean_of_token_probabilities():
    probs = torch.sigmoid(torch.tensor([[3.0, -1.0, 0.5, 2.0]]))
    pmap = torch.tensor([[1.0, 1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0, 0.0], [0.0] * 5])  # wider than 4 tokens
    scores = token_to_label_scores(probs, pmap)
    mean_prob = (1 / (1 + math.exp(-3)) + 1 / (1 + math.exp(1))) / 2  # 0.6108, not sigmoid(mean logit) = 0.731
    torch.testing.assert_close(scores, torch.tensor([[mean_prob, probs[0, 3].item(), 0.0]]))
    with pytest.raises(ValueError, match="beyond"):
        token_to_label_scores(probs, torch.tensor([[0.0, 0.0, 0.0, 0.0, 1.0]]))


def test_plus_one_nms_suppresses_what_torchvision_keeps():
    # thin boxes: "+1" IoU = 1.6*11 / (22 + 22 - 17.6) = 0.667 > 0.6; continuous IoU = 6 / 14 = 0.43
    boxes = torch.tensor([[0.0, 0.0, 1.0, 10.0], [0.4, 0.0, 1.4, 10.0]])
    scores = torch.tensor([0.9, 0.8])
    labels = torch.tensor([0, 0])
    assert legacy_batched_nms(boxes, scores, labels, 0.6).tolist() == [0]
    assert torchvision.ops.batched_nms(boxes, scores, labels, 0.6).tolist() == [0, 1]
    # class-aware: another label is never suppressed
    assert legacy_batched_nms(boxes, scores, torch.tensor([0, 1]), 0.6).tolist() == [0, 1]
    # suppression needs IoU strictly above the threshold: 12 / 20 = 0.6 exactly keeps both
    boxes = torch.tensor([[0.0, 0.0, 3.0, 3.0], [1.0, 0.0, 4.0, 3.0]])
    assert legacy_batched_nms(boxes, torch.tensor([0.5, 0.7]), labels, 0.6).tolist() == [1, 0]


def test_nms_is_greedy():
    # A > B > C; A suppresses B, B would suppress C but is gone, A and C do not overlap enough -> keep A, C
    boxes = torch.tensor([[0.0, 0.0, 9.0, 9.0], [2.0, 0.0, 11.0, 9.0], [5.0, 0.0, 14.0, 9.0]])
    keep = legacy_batched_nms(boxes, torch.tensor([0.9, 0.8, 0.7]), torch.zeros(3, dtype=torch.long), 0.6)
    assert keep.tolist() == [0, 2]


def _hand_outputs():
    """One 2x2 level with stride 8 anchors of size 16; caption of 4 tokens; two labels (tokens {1,2} and {3})."""
    anchors = torch.tensor([[-4.0, -4.0, 11.0, 11.0], [4.0, -4.0, 19.0, 11.0], [-4.0, 4.0, 11.0, 19.0],
                            [4.0, 4.0, 19.0, 19.0]])
    logits = torch.full((1, 4, 4), -10.0)
    # loc 0: label 0 tokens probs 0.3 and 0.1 (mean 0.2); loc 1: label 1 prob 0.06 with a tiny centerness;
    # loc 2: label 1 prob 0.04 (below 0.05) with centerness ~1; loc 3: label 0 mean 0.9
    logits[0, 0, 1], logits[0, 0, 2] = _logit(0.3), _logit(0.1)
    logits[0, 1, 3] = _logit(0.06)
    logits[0, 2, 3] = _logit(0.04)
    logits[0, 3, 1], logits[0, 3, 2] = _logit(0.9), _logit(0.9)
    ctr = torch.tensor([_logit(0.5), _logit(0.1), 20.0, _logit(0.8)]).reshape(1, 1, 2, 2)
    box_reg = torch.zeros(1, 4, 2, 2)
    pmap = torch.tensor([[0.0, 1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    return box_reg, ctr, logits, anchors, pmap


def test_postprocessor_hand_made_logits():
    box_reg, ctr, logits, anchors, pmap = _hand_outputs()
    pp = GLIPPostProcessor(box_coder=GLIPBoxCoder(), nms_threshold=0.99)
    det = pp([box_reg], [ctr], [logits], [anchors], [(15, 18)], [pmap])[0]
    # threshold before centerness: loc 1 (0.06 * 0.1) stays, loc 2 (0.04 * ~1) goes; sorted by score
    expected_scores = [math.sqrt(0.9 * 0.8), math.sqrt(0.2 * 0.5), math.sqrt(0.06 * 0.1)]
    torch.testing.assert_close(det["scores"], torch.tensor(expected_scores), rtol=1e-5, atol=1e-6)
    assert det["labels"].tolist() == [0, 0, 1]
    # zero deltas -> the anchors themselves, clipped to x <= 17, y <= 14 (pixel-index bounds of 18x15)
    torch.testing.assert_close(det["boxes"], torch.tensor([[4.0, 4.0, 17.0, 14.0], [0.0, 0.0, 11.0, 11.0],
                                                           [4.0, 0.0, 17.0, 11.0]]))


def test_pre_nms_top_n_and_kth_score_rule():
    box_reg, ctr, logits, anchors, pmap = _hand_outputs()
    pp = GLIPPostProcessor(box_coder=GLIPBoxCoder(), pre_nms_top_n=2, nms_threshold=0.99)
    det = pp([box_reg], [ctr], [logits], [anchors], [(100, 100)], [pmap], return_pre_nms=True)[0]
    assert len(det["pre_nms"]["scores"]) == 2 and len(det["scores"]) == 2  # top 2 of 3 candidates per level
    # k-th rule: 5 disjoint boxes, cap 2, scores with a tie at the 2nd place -> 3 kept
    pp = GLIPPostProcessor(box_coder=GLIPBoxCoder(), detections_per_image=2)
    boxes = torch.tensor([[i * 20.0, 0.0, i * 20.0 + 9, 9.0] for i in range(5)])
    out = pp._select(boxes, torch.tensor([0.6, 0.8, 0.9, 0.8, 0.7]), torch.zeros(5, dtype=torch.long))
    assert out["scores"].tolist() == pytest.approx([0.9, 0.8, 0.8])


def test_postprocessor_handles_any_number_of_labels():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 64, 256, generator=g) + 1.0
    pmap = torch.zeros(300, 256)  # more labels than the official 80-column score tensor
    pmap[torch.arange(300), torch.arange(300) % 250 + 1] = 1
    anchors = torch.cat([torch.rand(64, 2, generator=g) * 50, torch.rand(64, 2, generator=g) * 50 + 60], dim=1)
    pp = GLIPPostProcessor(box_coder=GLIPBoxCoder())
    det = pp([torch.zeros(1, 4, 8, 8)], [torch.zeros(1, 1, 8, 8)], [logits], [anchors], [(200, 200)], [pmap])[0]
    assert det["labels"].max() >= 250 and len(det["scores"]) <= 100 + 5


def _canonical(boxes, scores, labels):
    order = torch.arange(len(scores))
    for key in [boxes[:, 3], boxes[:, 2], boxes[:, 1], boxes[:, 0], labels.double(), -scores.double()]:
        order = order[torch.sort(key[order], stable=True)[1]]
    return boxes[order], scores[order], labels[order]


@requires_reference
def test_official_reference_detections():
    """Official head outputs of GLIP-T(C) on the astronaut image -> the official pre-NMS candidates and the 100
    final detections (as sets). Many pairs sit at IoU ~0.6 there, so this pins down the +1 NMS."""
    ref = load_reference()
    head = ref["head"]
    pp = GLIPPostProcessor(box_coder=GLIPBoxCoder())
    det = pp(head["bbox_reg"], head["centerness"], head["dot_product_logits"], ref["anchors"], [(320, 320)],
             [ref["inputs"]["positive_map_binary"]], return_pre_nms=True)[0]
    for ours, theirs in [(det["pre_nms"], ref["pre_nms"]), (det, ref["final_sorted"])]:
        b, s, l = _canonical(ours["boxes"], ours["scores"], ours["labels"] + 1)  # official labels are 1-based
        rb, rs, rl = _canonical(theirs["boxes_xyxy"], theirs["scores"], theirs["labels"])
        assert len(s) == len(rs)
        assert torch.equal(l, rl)
        torch.testing.assert_close(s, rs, atol=1e-5, rtol=0)
        torch.testing.assert_close(b, rb, atol=1e-3, rtol=0)
    # torchvision's continuous-IoU NMS keeps a different set here
    keep = torchvision.ops.batched_nms(det["pre_nms"]["boxes"], det["pre_nms"]["scores"], det["pre_nms"]["labels"], 0.6)
    assert len(keep) != len(legacy_batched_nms(det["pre_nms"]["boxes"], det["pre_nms"]["scores"],
                                               det["pre_nms"]["labels"], 0.6))
