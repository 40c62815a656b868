"""Character spans -> token positive maps (official details 9, 10, 19).

The caption is tokenized once, unpadded and untruncated, with a *fast* tokenizer; each span ``[start, end)`` maps
to the tokens ``char_to_token(start) .. char_to_token(end - 1)``. When the start character owns no token (a space)
the official code tries start+1 then start+2; for the end it tries end-2 then end-3. [CLS]/[SEP]/[PAD] own no
character, so they are never positive. Unlike the official code, a span that still maps to nothing is an error
naming the row, never silently dropped.
"""
from collections.abc import Sequence

import torch

from .prompts import Prompt

__all__ = ["create_positive_map", "encode_prompt", "span_to_token_range", "token_ids_per_row", "tokenize_unpadded"]


def tokenize_unpadded(tokenizer, caption: str):
    """``tokenizer(caption)`` without padding or truncation (a fast tokenizer is required for char offsets)."""
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError(
            f"{type(tokenizer).__name__} is not a fast (Rust) tokenizer; char->token maps need one "
            "(load it with AutoTokenizer.from_pretrained(..., use_fast=True))"
        )
    if not isinstance(caption, str):
        raise TypeError(f"caption must be a str, got {type(caption).__name__}")
    return tokenizer(caption, padding=False, truncation=False, verbose=False)


def _char_to_token(encoding, index: int, length: int) -> int | None:
    return encoding.char_to_token(index) if 0 <= index < length else None


def span_to_token_range(encoding, start: int, end: int, length: int) -> tuple[int, int] | None:
    """Inclusive token range of the char span ``[start, end)`` with the official fallbacks, or None."""
    beg = _char_to_token(encoding, start, length)
    if beg is None:
        beg = _char_to_token(encoding, start + 1, length)
        if beg is None:
            beg = _char_to_token(encoding, start + 2, length)
    last = _char_to_token(encoding, end - 1, length)
    if last is None:
        last = _char_to_token(encoding, end - 2, length)
        if last is None:
            last = _char_to_token(encoding, end - 3, length)
    if beg is None or last is None or last < beg:
        return None
    return beg, last


def create_positive_map(
    tokenizer,
    caption: str,
    spans: Sequence[Sequence[tuple[int, int]]],
    max_len: int = 256,
    names: Sequence[str] | None = None,
    encoding=None,
) -> torch.Tensor:
    """Binary ``FloatTensor[K, max_len]``: row k marks the tokens of all spans of ``spans[k]``.

    ``names`` (optional, one per row) only improves error messages. Raises ``ValueError`` naming the row for an
    empty row, a span outside the caption, a span that maps to no token, a span whose tokens lie beyond the
    ``max_len - 2`` text tokens a prompt holds, and for a caption with more than ``max_len`` tokens.
    """
    if encoding is None:
        encoding = tokenize_unpadded(tokenizer, caption)
    n = len(caption)
    positive_map = torch.zeros((len(spans), max_len), dtype=torch.float32)

    def label(k):
        return f"row #{k}" + (f" ({names[k]!r})" if names is not None and k < len(names) else "")

    for k, row in enumerate(spans):
        if len(row) == 0:
            raise ValueError(f"{label(k)} has no character span (caption {caption!r})")
        for span in row:
            if len(span) != 2:
                raise ValueError(f"{label(k)}: span {span!r} is not a [start, end) pair")
            start, end = int(span[0]), int(span[1])
            if not 0 <= start < end <= n:
                raise ValueError(f"{label(k)}: span [{start}, {end}) is outside its caption {caption!r} (length {n})")
            rng = span_to_token_range(encoding, start, end, n)
            if rng is None:
                raise ValueError(
                    f"{label(k)}: span [{start}, {end}) = {caption[start:end]!r} maps to no token of {caption!r} "
                    "(empty phrase, or only characters the tokenizer drops)"
                )
            beg, last = rng
            if last > max_len - 2:
                raise ValueError(
                    f"{label(k)}: span [{start}, {end}) = {caption[start:end]!r} ends at token {last}, beyond the "
                    f"{max_len - 2} text tokens of MAX_QUERY_LEN={max_len}; shorten the prompt or split it"
                )
            positive_map[k, beg : last + 1] = 1.0
    num_tokens = len(encoding["input_ids"])
    if num_tokens > max_len:
        raise ValueError(
            f"caption has {num_tokens} tokens ([CLS]/[SEP] included), more than MAX_QUERY_LEN={max_len}: "
            f"{caption[:200]!r}{'...' if n > 200 else ''}"
        )
    return positive_map


def encode_prompt(prompt: Prompt, tokenizer, max_len: int = 256) -> dict[str, object]:
    """A :class:`Prompt` as the batch fields of docs/architecture.md: caption, positive_map, positive_map_labels, phrases."""
    if len(prompt) == 0:
        raise ValueError(f"prompt {prompt.caption!r} has no row (nothing to ground)")
    positive_map = create_positive_map(tokenizer, prompt.caption, prompt.spans, max_len, names=prompt.phrases)
    return {
        "caption": prompt.caption,
        "positive_map": positive_map,
        "positive_map_labels": torch.as_tensor(prompt.labels, dtype=torch.long),
        "phrases": list(prompt.phrases),
    }


def token_ids_per_row(positive_map: torch.Tensor) -> list[list[int]]:
    """Token indices of each row (official ``positive_map_label_to_token``), for inspection and tests."""
    return [torch.nonzero(row, as_tuple=True)[0].tolist() for row in positive_map]
