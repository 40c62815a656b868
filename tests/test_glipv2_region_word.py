"""GLIPv2 region-word contrastive loss on one process: the formula, padding, temperature, anchor selection.

The reference below is a slow, pair-by-pair transcription of the loss written from its definition; the projections
are set to the identity so that the embeddings are the hand-made vectors themselves (L2-normalised).
"""
import math

import pytest
import torch

from glip_d2.modeling.glipv2 import (
    RegionWordContrastiveLoss,
    flatten_anchor_features,
    region_inputs_from_anchors,
    select_region_word_anchors,
)

DIM = 4
NUM_TOKENS = 6


def identity_loss(**kwargs) -> RegionWordContrastiveLoss:
    loss = RegionWordContrastiveLoss(DIM, DIM, embed_dim=DIM, **kwargs)
    with torch.no_grad():
        for proj in (loss.region_proj, loss.token_proj):
            proj.weight.copy_(torch.eye(DIM))
            proj.bias.zero_()
    return loss


def cosine(a, b):
    dot = sum(x * y for x, y in zip(a, b))
    return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def reference_loss(regions, tokens, log_scale, num_positive):
    """regions: (image, vector or None for a zero pad, token map, category); tokens: (image, position, vector,
    is_real, category). Positive: same image -> the region's token map; other image -> equal categories >= 0."""
    temperature = math.exp(log_scale)

    def logit(r, t):
        if r[1] is None or not t[3]:
            return -1e6
        return cosine(r[1], t[2]) / temperature

    def positive(r, t):
        if r[1] is None or not t[3]:
            return False
        if r[0] == t[0]:
            return r[2][t[1]] > 0
        return r[3] >= 0 and r[3] == t[4]

    def direction(rows, cols, pair):
        total = 0.0
        for a in rows:
            positives = [b for b in cols if positive(*pair(a, b))]
            if not positives:
                continue
            log_norm = math.log(sum(math.exp(logit(*pair(a, b))) for b in cols))
            total += sum(log_norm - logit(*pair(a, b)) for b in positives) / len(positives)
        return total

    region_to_token = direction(regions, tokens, lambda r, t: (r, t))
    token_to_region = direction(tokens, regions, lambda t, r: (r, t))
    return (region_to_token + token_to_region) / 2 / max(num_positive, 1)


def batch():
    """Three images: two detection prompts sharing category 1, one grounding caption; padded tokens in image 0."""
    g = torch.Generator().manual_seed(0)
    token_features = torch.randn(3, NUM_TOKENS, DIM, generator=g)
    token_mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]])
    token_cats = torch.tensor([[-1, 1, 1, 2, -1, -1], [-1, 1, 3, -1, -1, -1], [-1] * 6])
    region_features = [torch.randn(2, DIM, generator=g), torch.randn(1, DIM, generator=g), torch.randn(2, DIM, generator=g)]
    region_maps = [
        torch.tensor([[0, 1, 1, 0, 0, 0], [0, 0, 0, 1, 0, 0]]),
        torch.tensor([[0, 1, 0, 0, 0, 0]]),
        torch.tensor([[0, 1, 1, 0, 0, 0], [0, 0, 0, 0, 0, 0]]),  # the second grounding region has no positive
    ]
    region_cats = [torch.tensor([1, 2]), torch.tensor([1]), torch.tensor([-10, -10])]
    return token_features, token_mask, token_cats, region_features, region_maps, region_cats


def reference_inputs(token_features, token_mask, token_cats, region_features, region_maps, region_cats, pads):
    """``pads[i]``: list of vectors (background) or None (zero pad) appended to image i's regions."""
    regions, tokens = [], []
    for i in range(len(region_features)):
        for vec, row, cat in zip(region_features[i], region_maps[i], region_cats[i]):
            regions.append((i, vec.tolist(), row.tolist(), int(cat)))
        for vec in pads[i]:
            regions.append((i, None if vec is None else vec.tolist(), [0] * NUM_TOKENS, -1))
        for t in range(NUM_TOKENS):
            tokens.append((i, t, token_features[i, t].tolist(), bool(token_mask[i, t]), int(token_cats[i, t])))
    return regions, tokens


def test_matches_pairwise_reference_with_zero_pads():
    tf, tm, tc, rf, rm, rc = batch()
    loss = identity_loss(zero_pads=True)(rf, rm, rc, tf, tm, tc)
    regions, tokens = reference_inputs(tf, tm, tc, rf, rm, rc, pads=[[], [None], []])
    expected = reference_loss(regions, tokens, log_scale=0.0, num_positive=5)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_matches_pairwise_reference_with_background_pads():
    tf, tm, tc, rf, rm, rc = batch()
    background = [torch.zeros(0, DIM), torch.randn(1, DIM), torch.zeros(0, DIM)]  # exactly the one pad needed
    loss = identity_loss()(rf, rm, rc, tf, tm, tc, background_features=background)
    regions, tokens = reference_inputs(tf, tm, tc, rf, rm, rc, pads=[[], [background[1][0]], []])
    expected = reference_loss(regions, tokens, log_scale=0.0, num_positive=5)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    zero_padded = identity_loss(zero_pads=True)(rf, rm, rc, tf, tm, tc, background_features=background)
    assert zero_padded.item() != pytest.approx(loss.item(), rel=1e-3)  # the background region is a real negative
    too_few = identity_loss()(rf, rm, rc, tf, tm, tc, background_features=[torch.zeros(0, DIM)] * 3)
    assert too_few.item() == pytest.approx(zero_padded.item(), rel=1e-6)  # missing backgrounds -> masked zero rows


def test_cross_image_category_positives_count():
    """Changing image 1's category-1 tokens into "none" removes cross-image positives and changes the loss."""
    tf, tm, tc, rf, rm, rc = batch()
    module = identity_loss(zero_pads=True)
    without = tc.clone()
    without[1, 1] = -1
    regions, tokens = reference_inputs(tf, tm, without, rf, rm, rc, pads=[[], [None], []])
    got = module(rf, rm, rc, tf, tm, without)
    assert got.item() == pytest.approx(reference_loss(regions, tokens, 0.0, 5), rel=1e-5)
    assert got.item() != pytest.approx(module(rf, rm, rc, tf, tm, tc).item(), rel=1e-3)


def test_weight_and_normaliser():
    tf, tm, tc, rf, rm, rc = batch()
    base = identity_loss(zero_pads=True)(rf, rm, rc, tf, tm, tc)
    weighted = identity_loss(zero_pads=True, loss_weight=3.0)(rf, rm, rc, tf, tm, tc, num_positive_anchors=10)
    assert weighted.item() == pytest.approx(base.item() * 3.0 * 5 / 10, rel=1e-6)


def test_log_scale_is_the_temperature():
    tf, tm, tc, rf, rm, rc = batch()
    regions, tokens = reference_inputs(tf, tm, tc, rf, rm, rc, pads=[[], [None], []])
    module = identity_loss(zero_pads=True, log_scale_init=-1.5)
    got = module(rf, rm, rc, tf, tm, tc)
    assert got.item() == pytest.approx(reference_loss(regions, tokens, -1.5, 5), rel=1e-5)
    got.backward()
    assert module.log_scale.grad is not None and torch.isfinite(module.log_scale.grad).all()

    # with every positive more similar than every negative, a colder temperature gives a smaller loss
    tokens = torch.eye(DIM)[None, :2].repeat(2, 1, 1)  # two tokens per image, directions e0 and e1
    regions = [torch.eye(DIM)[:2], torch.eye(DIM)[:2]]
    maps = [torch.eye(2), torch.eye(2)]
    cats = [torch.tensor([0, 1])] * 2
    token_cats = torch.tensor([[0, 1], [0, 1]])
    mask = torch.ones(2, 2)
    losses = [identity_loss(log_scale_init=s)(regions, maps, cats, tokens, mask, token_cats).item() for s in (0.0, -1.0, -2.0)]
    assert losses[0] > losses[1] > losses[2]


def test_subsampling_is_seeded_and_bounded():
    """Ten identical positives in image 0, at most four kept: any subset gives the reference loss of four,
    normalised by all ten ATSS positives; the same seed gives the same draw."""
    tf, tm, tc, _, _, _ = batch()
    vec = torch.tensor([1.0, 0.5, -0.2, 0.3])
    rf = [vec.repeat(10, 1), torch.tensor([[0.2, 1.0, 0.0, -0.4]]), torch.zeros(0, DIM)]
    rm = [torch.tensor([[0, 1, 1, 0, 0, 0]]).repeat(10, 1), torch.tensor([[0, 1, 0, 0, 0, 0]]), torch.zeros(0, NUM_TOKENS)]
    rc = [torch.ones(10, dtype=torch.long), torch.tensor([1]), torch.zeros(0, dtype=torch.long)]
    module = identity_loss(zero_pads=True, max_positive_anchors=4)
    got = module(rf, rm, rc, tf, tm, tc, generator=torch.Generator().manual_seed(3))
    kept = [rf[0][:4], rf[1], rf[2]]
    regions, tokens = reference_inputs(tf, tm, tc, kept, [rm[0][:4], rm[1], rm[2]], [rc[0][:4], rc[1], rc[2]],
                                       pads=[[], [None] * 3, [None] * 4])
    assert got.item() == pytest.approx(reference_loss(regions, tokens, 0.0, 11), rel=1e-5)

    # distinct regions: the draw matters, and is reproduced by the same seed
    rf[0] = torch.randn(10, DIM, generator=torch.Generator().manual_seed(1))
    draws = [module(rf, rm, rc, tf, tm, tc, generator=torch.Generator().manual_seed(s)).item() for s in (5, 5, 6, 7)]
    assert draws[0] == draws[1]
    assert len({round(d, 6) for d in draws[1:]}) > 1


def test_no_positive_anywhere_gives_a_connected_zero():
    tf, tm, tc, _, _, _ = batch()
    module = RegionWordContrastiveLoss(DIM, DIM)
    empty = [torch.zeros(0, DIM)] * 3
    loss = module(empty, [torch.zeros(0, NUM_TOKENS)] * 3, [torch.zeros(0, dtype=torch.long)] * 3, tf, tm, tc)
    assert loss.item() == 0.0
    loss.backward()
    assert all(p.grad is not None and torch.all(p.grad == 0) for p in module.parameters())


def test_gradients_reach_every_parameter():
    tf, tm, tc, rf, rm, rc = batch()
    module = RegionWordContrastiveLoss(DIM, DIM, embed_dim=8)
    module(rf, rm, rc, tf, tm, tc, background_features=[torch.randn(5, DIM)] * 3).backward()
    for name, p in module.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_anchor_selection_from_atss_assignment():
    matched = torch.tensor([-1, 0, 0, -1, 1, -1, 2, -1, -1, 0])  # anchors of box 0 are positives too
    gt_maps = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=torch.float32)
    gt_cats = torch.tensor([7, -10, 3])
    sel = select_region_word_anchors(matched, gt_maps, gt_cats, max_positive_anchors=10)
    assert sel.positive_indices.tolist() == [1, 2, 4, 6, 9]
    assert sel.num_positive == 5
    assert torch.equal(sel.token_maps, gt_maps[[0, 0, 1, 2, 0]])
    assert sel.category_ids.tolist() == [7, 7, -10, 3, 7]
    assert sorted(sel.background_indices.tolist()) == [0, 3, 5, 7, 8]  # all negatives (fewer than 10)

    picks = [select_region_word_anchors(matched, gt_maps, gt_cats, 3, generator=torch.Generator().manual_seed(s))
             for s in (0, 0, 1, 2, 3)]
    assert torch.equal(picks[0].positive_indices, picks[1].positive_indices)
    for p in picks:
        assert p.positive_indices.numel() == 3 and p.num_positive == 5
        assert p.positive_indices.tolist() == sorted(p.positive_indices.tolist())
        assert set(p.positive_indices.tolist()) <= {1, 2, 4, 6, 9}
        assert torch.equal(p.token_maps, gt_maps[matched[p.positive_indices]])
        assert p.background_indices.numel() == 3 and set(p.background_indices.tolist()) <= {0, 3, 5, 7, 8}
    assert len({tuple(p.positive_indices.tolist()) for p in picks}) > 1

    no_box = select_region_word_anchors(torch.full((4,), -1), torch.zeros(0, 3), None, 2)
    assert no_box.positive_indices.numel() == 0 and no_box.background_indices.numel() == 2


def test_region_inputs_follow_anchor_order():
    levels = [torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).view(2, 3, 2, 2), torch.randn(2, 3, 1, 1)]
    flat = flatten_anchor_features(levels)
    assert flat.shape == (2, 5, 3)
    assert torch.equal(flat[1, 2], levels[0][1, :, 1, 0])  # anchor 2 of level 0 = row 1, column 0
    assert torch.equal(flat[0, 4], levels[1][0, :, 0, 0])
    matched = [torch.tensor([-1, 0, -1, -1, 0]), torch.tensor([1, -1, -1, 0, -1])]
    maps = [torch.tensor([[0, 1, 0]]), torch.tensor([[1, 0, 0], [0, 0, 1]])]
    sels = [select_region_word_anchors(m, p, max_positive_anchors=4) for m, p in zip(matched, maps)]
    inputs = region_inputs_from_anchors(flat, sels)
    assert torch.equal(inputs["region_features"][0], flat[0, [1, 4]])
    assert torch.equal(inputs["region_token_maps"][1], maps[1][[1, 0]])
    assert inputs["num_positive_anchors"] == 4
    assert inputs["background_features"][0].shape == (3, 3)
    loss = RegionWordContrastiveLoss(3, 5)(
        **inputs, token_features=torch.randn(2, 3, 5), token_mask=torch.ones(2, 3),
        token_category_ids=torch.full((2, 3), -1),
    )
    assert torch.isfinite(loss)
