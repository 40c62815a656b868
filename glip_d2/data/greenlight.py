"""Per-sample token maps for GLIPv2's two extra objectives, built from the token positive maps a sample already has.

* greenlight map [L] for masked language modelling: 1 = a masked token here counts in the loss, 0 = it may be
  corrupted but carries no loss, -1 everywhere = no MLM for this sample. Detection data turned into a prompt only
  teaches the names of the classes present in the image (their tokens are green); grounding / caption data teaches
  the whole caption (every text token, [CLS]/[SEP] and padding excluded).
* token category ids [L] for the inter-image region-word loss: each token's detection category id, -1 for none,
  so that a region matches the same category's words in other images' prompts.

Both work on token positive maps (``glip_d2.data.tokens.create_positive_map`` output), so the char-span -> token
rule stays in one place. Only torch is needed, so the dataset mapper can call these per sample.
"""
import torch

__all__ = [
    "DATA_KINDS",
    "GREENLIGHT_OFF",
    "build_greenlight_map",
    "caption_greenlight",
    "detection_greenlight",
    "disabled_greenlight",
    "token_category_ids",
]

#: Value of a position where nothing may be masked; a row of it disables MLM for the sample (official sentinel).
GREENLIGHT_OFF = -1.0
#: Data kinds: detection data turned into a prompt of class names, or captioned / referring grounding data.
DATA_KINDS = ("detection", "grounding")


def detection_greenlight(positive_map: torch.Tensor, positive_rows: torch.Tensor | None = None) -> torch.Tensor:
    """[L] float: 1 on the tokens of the rows of ``positive_map`` [K, L] selected by ``positive_rows`` [K] (bool;
    None = every row), 0 elsewhere. Pass the prompt's map with the rows of classes present in the image, or the
    boxes' own maps (``instances.gt_positive_map``) with ``positive_rows=None``."""
    if positive_map.dim() != 2:
        raise ValueError(f"positive_map must be [K, L], got {tuple(positive_map.shape)}")
    rows = positive_map > 0
    if positive_rows is not None:
        positive_rows = torch.as_tensor(positive_rows, dtype=torch.bool, device=positive_map.device)
        if positive_rows.shape != (positive_map.shape[0],):
            raise ValueError(f"positive_rows must be [K={positive_map.shape[0]}], got {tuple(positive_rows.shape)}")
        rows = rows[positive_rows]
    return rows.any(dim=0).float()


def caption_greenlight(num_tokens: int, max_len: int) -> torch.Tensor:
    """[max_len] float: 1 on the caption's text tokens, i.e. positions 1 .. num_tokens-2 of an encoding of
    ``num_tokens`` tokens ([CLS] first and [SEP] last included in the count), 0 elsewhere."""
    if num_tokens < 2:
        raise ValueError(f"an encoded caption has at least [CLS] and [SEP], got num_tokens={num_tokens}")
    greenlight = torch.zeros(max_len, dtype=torch.float32)
    greenlight[1 : min(num_tokens - 1, max_len - 1)] = 1.0
    return greenlight


def disabled_greenlight(max_len: int) -> torch.Tensor:
    """[max_len] filled with the "no MLM for this sample" sentinel."""
    return torch.full((max_len,), GREENLIGHT_OFF, dtype=torch.float32)


def build_greenlight_map(
    kind: str,
    *,
    max_len: int,
    positive_map: torch.Tensor | None = None,
    positive_rows: torch.Tensor | None = None,
    num_tokens: int | None = None,
    no_mask: bool = False,
) -> torch.Tensor:
    """The greenlight map [max_len] of one sample of data ``kind`` ("detection" or "grounding").

    "detection" needs ``positive_map`` (and optionally ``positive_rows``, see :func:`detection_greenlight`);
    "grounding" needs ``num_tokens`` (unpadded encoding length). ``no_mask`` (official ``NO_MASK_FOR_OD`` for
    detection, ``NO_MASK_FOR_GOLD`` for grounding data) returns the sentinel.
    """
    if kind not in DATA_KINDS:
        raise ValueError(f"data kind must be one of {DATA_KINDS}, got {kind!r}")
    if no_mask:
        return disabled_greenlight(max_len)
    if kind == "detection":
        if positive_map is None:
            raise ValueError("a detection sample's greenlight map needs its token positive_map")
        greenlight = detection_greenlight(positive_map, positive_rows).cpu()
        if greenlight.shape[0] > max_len:
            if greenlight[max_len:].any():
                raise ValueError(f"positive_map marks token positions >= max_len={max_len}")
            return greenlight[:max_len]
        return torch.nn.functional.pad(greenlight, (0, max_len - greenlight.shape[0]))
    if num_tokens is None:
        raise ValueError("a grounding sample's greenlight map needs num_tokens (its unpadded encoding length)")
    return caption_greenlight(num_tokens, max_len)


def token_category_ids(positive_map: torch.Tensor, row_category_ids: torch.Tensor) -> torch.Tensor:
    """[L] long: the detection category id of each token (-1 for none), from the prompt's ``positive_map``
    [K, L] and each row's category id ``row_category_ids`` [K] (negative ids mark rows without a category).
    A token covered by several rows takes the last row's id, as the official code does."""
    if positive_map.dim() != 2:
        raise ValueError(f"positive_map must be [K, L], got {tuple(positive_map.shape)}")
    row_category_ids = torch.as_tensor(row_category_ids, dtype=torch.long, device=positive_map.device)
    if row_category_ids.shape != (positive_map.shape[0],):
        raise ValueError(f"row_category_ids must be [K={positive_map.shape[0]}], got {tuple(row_category_ids.shape)}")
    ids = torch.full((positive_map.shape[1],), -1, dtype=torch.long, device=positive_map.device)
    for row, category in zip(positive_map > 0, row_category_ids.tolist()):
        if category >= 0:
            ids[row] = category
    return ids
