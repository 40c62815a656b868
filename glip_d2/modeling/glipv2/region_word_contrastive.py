"""GLIPv2's inter-image region-word contrastive loss.

Why: GLIP's grounding loss only contrasts a region with the words of its *own* prompt. GLIPv2 also contrasts it
with the words of every other prompt in the whole (distributed) batch: a "cat" region is pulled towards "cat"
wherever it appears and pushed away from every other word, which gives many more negatives than one prompt holds.
This reproduces the official GLIP code's switched-off region-word ("shallow contrastive") loss:

* regions are ATSS-positive anchors, at most ``max_positive_anchors`` per image chosen at random; every image is
  padded to the largest count of the distributed batch with random background anchors (extra negatives) or, with
  ``zero_pads``, with masked zero rows;
* both sides are projected to ``embed_dim`` and L2-normalised; text features are L2-normalised first, as the
  official dot-product branch does before handing them over;
* both sides are gathered across processes; logits are cosine / exp(log_scale); padded tokens and masked regions
  get -1e6;
* a region and a token are positive when they belong to the same image and the region's box covers the token
  (its token map), or, across images, when their detection category ids are equal and >= 0;
* the loss is a symmetric soft-target cross-entropy (region->all tokens for local regions, token->all regions for
  local tokens, targets row-normalised, rows without positives count 0), summed, halved, divided by the number
  of ATSS-positive anchors averaged over processes (the normaliser of the grounding loss) and weighted.

Deviation from the official code, on purpose: it lists positive anchors with ``nonzero(matched_gt_index)``, which
also drops the anchors matched to the *first* box of each image; here every anchor with a box is a positive.
"""
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

__all__ = [
    "RegionWordAnchors",
    "RegionWordContrastiveLoss",
    "all_gather_cat",
    "flatten_anchor_features",
    "region_inputs_from_anchors",
    "select_region_word_anchors",
]

#: Logit given to padded tokens and masked regions: finite (unlike -inf) so that 0 * log_softmax stays 0.
MASKED_LOGIT = -1e6
#: Category id of regions without a detection category (padding); anything < 0 never matches across images.
NO_CATEGORY = -1


# ---- distributed gather -------------------------------------------------------------------------------------
def _world_and_rank() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def _gather_first_dims(count: int, device: torch.device) -> list[int]:
    counts = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(dist.get_world_size())]
    dist.all_gather(counts, torch.tensor([count], dtype=torch.long, device=device))
    return [int(c.item()) for c in counts]


def _all_gather_parts(tensor: torch.Tensor, sizes: Sequence[int] | None) -> list[torch.Tensor]:
    """Every process's tensor (first dims may differ: padded to the largest for the collective, then cut back)."""
    if sizes is None:
        sizes = _gather_first_dims(tensor.shape[0], tensor.device)
    is_bool = tensor.dtype == torch.bool
    send = tensor.detach().to(torch.uint8) if is_bool else tensor.detach()  # gloo has no bool all_gather
    longest = max(sizes)
    if send.shape[0] < longest:
        send = torch.cat([send, send.new_zeros((longest - send.shape[0], *send.shape[1:]))])
    parts = [torch.empty_like(send) for _ in sizes]
    dist.all_gather(parts, send.contiguous())
    return [(p[:n].bool() if is_bool else p[:n]) for p, n in zip(parts, sizes)]


class _AllGatherWithGrad(torch.autograd.Function):
    """All-gather whose backward sums every process's gradient of the gathered tensor and keeps the local slice,
    so that the gradient reaching each process's inputs is that of the sum of all processes' losses."""

    @staticmethod
    def forward(ctx, tensor, sizes):
        parts = _all_gather_parts(tensor, sizes)
        ctx.sizes = [p.shape[0] for p in parts]
        ctx.rank = dist.get_rank()
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start : start + ctx.sizes[ctx.rank]], None


def all_gather_cat(tensor: torch.Tensor, with_grad: bool = False, sizes: Sequence[int] | None = None) -> torch.Tensor:
    """Every process's ``tensor`` concatenated along dim 0 in rank order (identity without a process group).

    ``with_grad=False`` is the official behaviour: the other processes' parts are constants and the local part is
    the input itself, so gradients flow only through this process's own rows. ``with_grad=True`` also sends back
    the gradient other processes' losses have w.r.t. this process's rows (summed), so that the gradients averaged
    over processes equal those of one process holding the whole batch with the loss averaged over processes.
    ``sizes`` (each process's first dim) saves one collective when already known; first dims may differ.
    """
    world, rank = _world_and_rank()
    if world == 1:
        return tensor
    if with_grad and tensor.requires_grad:
        return _AllGatherWithGrad.apply(tensor, sizes)
    parts = _all_gather_parts(tensor, sizes)
    parts[rank] = tensor
    return torch.cat(parts, dim=0)


def _all_reduce_sum(value: torch.Tensor) -> torch.Tensor:
    if _world_and_rank()[0] > 1:
        value = value.clone()
        dist.all_reduce(value)
    return value


# ---- anchor selection (behind the ATSS matcher) ---------------------------------------------------------------
def _random_subset(n: int, k: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """``k`` distinct indices out of ``range(n)``, sorted (the official code keeps anchor order)."""
    gen_device = generator.device if generator is not None else "cpu"
    pick = torch.randperm(n, generator=generator, device=gen_device)[:k]
    return pick.sort().values.to(device)


@dataclass
class RegionWordAnchors:
    """The anchors of one image that take part in the region-word loss.

    ``positive_indices`` [P] (sorted anchor indices, at most ``max_positive_anchors``), their ``token_maps``
    [P, L] (the matched box's token positive map) and ``category_ids`` [P]; ``background_indices`` [N] random
    unmatched anchors to pad with; ``num_positive`` = ATSS positives before subsampling (the loss normaliser).
    """

    positive_indices: torch.Tensor
    token_maps: torch.Tensor
    category_ids: torch.Tensor
    background_indices: torch.Tensor
    num_positive: int


def select_region_word_anchors(
    matched_idxs: torch.Tensor,
    gt_token_maps: torch.Tensor,
    gt_category_ids: torch.Tensor | None = None,
    max_positive_anchors: int = 100,
    num_background: int | None = None,
    generator: torch.Generator | None = None,
) -> RegionWordAnchors:
    """Positive anchors and background candidates of one image from the ATSS assignment.

    ``matched_idxs`` [A] is ``ATSSMatcher``'s output (box index per anchor, -1 = negative); ``gt_token_maps``
    [G, L] the boxes' token positive maps; ``gt_category_ids`` [G] the boxes' detection category ids (< 0 or None
    for grounding boxes, which then only have in-image positives). ``num_background`` defaults to
    ``max_positive_anchors``, always enough: an image never needs more pads than the largest positive count.
    """
    if matched_idxs.dim() != 1:
        raise ValueError(f"matched_idxs must be [A], got {tuple(matched_idxs.shape)}")
    if gt_token_maps.dim() != 2:
        raise ValueError(f"gt_token_maps must be [G, L], got {tuple(gt_token_maps.shape)}")
    num_gt = gt_token_maps.shape[0]
    if gt_category_ids is None:
        gt_category_ids = torch.full((num_gt,), NO_CATEGORY, dtype=torch.long, device=matched_idxs.device)
    if gt_category_ids.shape != (num_gt,):
        raise ValueError(f"{num_gt} token maps but gt_category_ids has shape {tuple(gt_category_ids.shape)}")
    if num_gt and int(matched_idxs.max()) >= num_gt:
        raise ValueError(f"matched_idxs points at box {int(matched_idxs.max())} but only {num_gt} boxes are given")
    device = matched_idxs.device
    positives = torch.nonzero(matched_idxs >= 0, as_tuple=True)[0]
    num_positive = int(positives.numel())
    if num_positive > max_positive_anchors:
        positives = positives[_random_subset(num_positive, max_positive_anchors, generator, device)]
    negatives = torch.nonzero(matched_idxs < 0, as_tuple=True)[0]
    wanted = max_positive_anchors if num_background is None else num_background
    background = negatives[_random_subset(negatives.numel(), min(wanted, negatives.numel()), generator, device)]
    boxes = matched_idxs[positives]
    return RegionWordAnchors(
        positive_indices=positives,
        token_maps=gt_token_maps.to(device)[boxes],
        category_ids=gt_category_ids.to(device=device, dtype=torch.long)[boxes],
        background_indices=background,
        num_positive=num_positive,
    )


def flatten_anchor_features(features: Sequence[torch.Tensor]) -> torch.Tensor:
    """FPN levels [B, C, H_l, W_l] -> [B, sum H_l*W_l, C] in the anchor generator's order (level, row, column)."""
    return torch.cat([f.flatten(2).transpose(1, 2) for f in features], dim=1)


def region_inputs_from_anchors(flat_features: torch.Tensor, anchors: Sequence[RegionWordAnchors]) -> dict:
    """Keyword arguments of :meth:`RegionWordContrastiveLoss.forward` for the region side, from per-anchor
    features [B, A, C] (e.g. :func:`flatten_anchor_features` of the pre-fusion FPN levels) and each image's
    :class:`RegionWordAnchors`."""
    if flat_features.shape[0] != len(anchors):
        raise ValueError(f"{flat_features.shape[0]} images of features but {len(anchors)} anchor selections")
    return {
        "region_features": [f[a.positive_indices] for f, a in zip(flat_features, anchors)],
        "region_token_maps": [a.token_maps for a in anchors],
        "region_category_ids": [a.category_ids for a in anchors],
        "background_features": [f[a.background_indices] for f, a in zip(flat_features, anchors)],
        "num_positive_anchors": sum(a.num_positive for a in anchors),
    }


# ---- the loss ---------------------------------------------------------------------------------------------------
def _fit_token_dim(maps: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """Token maps cut or zero-padded to ``num_tokens`` columns (positives beyond the caption are an error)."""
    if maps.shape[1] > num_tokens:
        if maps[:, num_tokens:].any():
            raise ValueError(f"a region's token map marks positions >= {num_tokens}, beyond the token features")
        return maps[:, :num_tokens]
    return F.pad(maps, (0, num_tokens - maps.shape[1]))


def _soft_cross_entropy_sum(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """sum(-target/rowsum * log_softmax(logits)); rows without positives contribute 0."""
    weights = targets.float()
    weights = weights / weights.sum(dim=1, keepdim=True).clamp(min=1e-6)
    return -(weights * logits.log_softmax(dim=1)).sum()


class RegionWordContrastiveLoss(nn.Module):
    """Projections, temperature and the loss; see the module docstring for the formula."""

    def __init__(
        self,
        region_in_dim: int,
        token_in_dim: int,
        embed_dim: int = 64,
        log_scale_init: float = 0.0,
        loss_weight: float = 1.0,
        max_positive_anchors: int = 100,
        zero_pads: bool = False,
        gather_with_grad: bool = False,
    ):
        super().__init__()
        if max_positive_anchors <= 0:
            raise ValueError(f"max_positive_anchors must be positive, got {max_positive_anchors}")
        self.region_proj = nn.Linear(region_in_dim, embed_dim)
        self.token_proj = nn.Linear(token_in_dim, embed_dim)
        self.log_scale = nn.Parameter(torch.tensor([float(log_scale_init)]))
        self.loss_weight = float(loss_weight)
        self.max_positive_anchors = int(max_positive_anchors)
        self.zero_pads = bool(zero_pads)
        self.gather_with_grad = bool(gather_with_grad)
        for proj in (self.region_proj, self.token_proj):  # the official initialisation
            nn.init.xavier_uniform_(proj.weight)
            nn.init.zeros_(proj.bias)

    def forward(
        self,
        region_features: Sequence[torch.Tensor],
        region_token_maps: Sequence[torch.Tensor],
        region_category_ids: Sequence[torch.Tensor],
        token_features: torch.Tensor,
        token_mask: torch.Tensor,
        token_category_ids: torch.Tensor,
        background_features: Sequence[torch.Tensor] | None = None,
        num_positive_anchors: int | torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Scalar loss of this process's images (gathering the others').

        Per image i: ``region_features[i]`` [P_i, C] features of its positive anchors, ``region_token_maps[i]``
        [P_i, L] the matched boxes' token maps, ``region_category_ids[i]`` [P_i] their detection category ids
        (< 0: none); ``background_features[i]`` [N_i, C] candidate background anchors for random padding
        (ignored with ``zero_pads``; when missing or too few, the remaining pads are masked zero rows).
        ``token_features`` [B, L, D] the text features (normalised here), ``token_mask`` [B, L] (1 = real
        token), ``token_category_ids`` [B, L] (-1 = none). ``num_positive_anchors``: this process's ATSS
        positives before subsampling (default: sum of P_i). ``generator`` makes subsampling and padding exact.
        """
        num_images, num_tokens = token_mask.shape
        lists = {
            "region_features": region_features,
            "region_token_maps": region_token_maps,
            "region_category_ids": region_category_ids,
        }
        if background_features is not None:
            lists["background_features"] = background_features
        for name, value in lists.items():
            if len(value) != num_images:
                raise ValueError(f"{name} has {len(value)} images but token_mask has {num_images}")
        if token_features.shape[:2] != (num_images, num_tokens) or token_category_ids.shape != token_mask.shape:
            raise ValueError(
                f"token_features {tuple(token_features.shape)} / token_category_ids "
                f"{tuple(token_category_ids.shape)} disagree with token_mask [B, L] = {tuple(token_mask.shape)}"
            )
        if num_positive_anchors is None:
            num_positive_anchors = sum(f.shape[0] for f in region_features)
        with torch.autocast(device_type=token_features.device.type, enabled=False):
            return self._loss(
                [f.float() for f in region_features],
                list(region_token_maps),
                list(region_category_ids),
                token_features.float(),
                token_mask.bool(),
                token_category_ids.long(),
                None if background_features is None else [f.float() for f in background_features],
                num_positive_anchors,
                generator,
            )

    def _loss(self, region_feats, region_maps, region_cats, token_feats, token_mask, token_cats, background,
              num_positive_anchors, generator):
        device = token_feats.device
        world, rank = _world_and_rank()
        num_images, num_tokens = token_mask.shape

        # 1. at most max_positive_anchors per image
        for i, feats in enumerate(region_feats):
            if not (feats.shape[0] == region_maps[i].shape[0] == region_cats[i].shape[0]):
                raise ValueError(
                    f"image {i}: {feats.shape[0]} region features, {region_maps[i].shape[0]} token maps, "
                    f"{region_cats[i].shape[0]} category ids"
                )
            if feats.shape[0] > self.max_positive_anchors:
                keep = _random_subset(feats.shape[0], self.max_positive_anchors, generator, device)
                region_feats[i], region_maps[i], region_cats[i] = feats[keep], region_maps[i][keep], region_cats[i][keep]

        # 2. one padded region count and token length for the whole distributed batch
        local_shape = torch.tensor(
            [num_images, max((f.shape[0] for f in region_feats), default=0), num_tokens], device=device
        )
        shapes = [local_shape]
        if world > 1:
            shapes = [torch.zeros_like(local_shape) for _ in range(world)]
            dist.all_gather(shapes, local_shape)
        images_per_rank = [int(s[0]) for s in shapes]
        num_regions = max(int(s[1]) for s in shapes)
        num_tokens_all = max(int(s[2]) for s in shapes)
        if num_regions == 0:  # no positive anywhere (same decision on every process): a zero touching every weight
            return sum(p.sum() for p in self.parameters()) * 0.0

        # 3. regions: positives, then random background anchors, then masked zero rows
        region_rows, valid_rows, cat_rows, map_rows = [], [], [], []
        for i in range(num_images):
            feats, pads = region_feats[i], num_regions - region_feats[i].shape[0]
            if pads and background is not None and not self.zero_pads:
                pool = background[i]
                feats = torch.cat([feats, pool[_random_subset(pool.shape[0], min(pads, pool.shape[0]), generator, device)]])
            real = feats.shape[0]
            emb = F.normalize(self.region_proj(feats), p=2, dim=-1)
            region_rows.append(torch.cat([emb, emb.new_zeros(num_regions - real, emb.shape[1])]))
            valid_rows.append(torch.arange(num_regions, device=device) < real)
            cats = region_cats[i].to(device=device, dtype=torch.long)
            cat_rows.append(F.pad(cats, (0, num_regions - cats.shape[0]), value=NO_CATEGORY))
            maps = _fit_token_dim(region_maps[i].to(device) > 0, num_tokens_all)
            map_rows.append(F.pad(maps, (0, 0, 0, num_regions - maps.shape[0])))
        region_emb = torch.cat(region_rows)  # [B*A, E]
        region_meta = torch.stack([torch.cat(cat_rows), torch.cat(valid_rows).long()], dim=1)  # [B*A, 2]

        # 4. tokens, padded to the longest token length of the batch
        extra = num_tokens_all - num_tokens
        token_emb = F.normalize(self.token_proj(F.normalize(token_feats, p=2, dim=-1)), p=2, dim=-1)
        token_emb = F.pad(token_emb, (0, 0, 0, extra)).reshape(-1, token_emb.shape[-1])  # [B*L, E]
        token_meta = torch.stack(
            [F.pad(token_cats, (0, extra), value=NO_CATEGORY).reshape(-1),
             F.pad(token_mask.long(), (0, extra)).reshape(-1)],
            dim=1,
        )  # [B*L, 2]

        # 5. gather both sides
        region_sizes = [n * num_regions for n in images_per_rank]
        token_sizes = [n * num_tokens_all for n in images_per_rank]
        region_emb_all = all_gather_cat(region_emb, self.gather_with_grad, region_sizes)
        token_emb_all = all_gather_cat(token_emb, self.gather_with_grad, token_sizes)
        region_meta_all = all_gather_cat(region_meta, False, region_sizes)
        token_meta_all = all_gather_cat(token_meta, False, token_sizes)
        first_image = sum(images_per_rank[:rank])
        region_slice = slice(first_image * num_regions, (first_image + num_images) * num_regions)
        token_slice = slice(first_image * num_tokens_all, (first_image + num_images) * num_tokens_all)
        total_images = sum(images_per_rank)

        region_cat_all, region_valid_all = region_meta_all[:, 0], region_meta_all[:, 1].bool()
        token_cat_all, token_valid_all = token_meta_all[:, 0], token_meta_all[:, 1].bool()
        region_cat, region_valid = region_cat_all[region_slice], region_valid_all[region_slice]
        token_cat, token_valid = token_cat_all[token_slice], token_valid_all[token_slice]
        own_maps = torch.stack(map_rows)  # [B, A, L]

        # 6. logits and positives, region -> all tokens
        temperature = self.log_scale.exp()
        r2t_logits = region_emb_all[region_slice] @ token_emb_all.t() / temperature  # [B*A, N*L]
        r2t_logits = r2t_logits.masked_fill(~token_valid_all[None, :] | ~region_valid[:, None], MASKED_LOGIT)
        r2t_pos = (region_cat[:, None] >= 0) & (region_cat[:, None] == token_cat_all[None, :])
        r2t_pos = r2t_pos.view(num_images, num_regions, total_images, num_tokens_all)
        for i in range(num_images):
            r2t_pos[i, :, first_image + i, :] = own_maps[i]
        r2t_pos = r2t_pos.view(num_images * num_regions, -1) & token_valid_all[None, :] & region_valid[:, None]

        # 7. logits and positives, token -> all regions
        t2r_logits = token_emb_all[token_slice] @ region_emb_all.t() / temperature  # [B*L, N*A]
        t2r_logits = t2r_logits.masked_fill(~region_valid_all[None, :] | ~token_valid[:, None], MASKED_LOGIT)
        t2r_pos = (token_cat[:, None] >= 0) & (token_cat[:, None] == region_cat_all[None, :])
        t2r_pos = t2r_pos.view(num_images, num_tokens_all, total_images, num_regions)
        for i in range(num_images):
            t2r_pos[i, :, first_image + i, :] = own_maps[i].t()
        t2r_pos = t2r_pos.view(num_images * num_tokens_all, -1) & region_valid_all[None, :] & token_valid[:, None]

        # 8. symmetric soft-target cross-entropy, normalised like the grounding loss
        total = _soft_cross_entropy_sum(r2t_logits, r2t_pos) + _soft_cross_entropy_sum(t2r_logits, t2r_pos)
        num_pos = torch.as_tensor(num_positive_anchors, dtype=torch.float32, device=device).reshape(())
        num_pos_avg = max(_all_reduce_sum(num_pos).item() / world, 1.0)
        return total / 2.0 / num_pos_avg * self.loss_weight
