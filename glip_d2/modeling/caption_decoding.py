"""Autoregressive caption decoding: greedy search and beam search over a next-token log-probability function.

Why model-agnostic: the model supplies ``step(ids) -> log-probs of the next token`` (it caches the image side
once, see ``GLIPv2Caption``) and these loops only handle tokens, scores and stopping, so they are tested on their
own with a toy step function.

Conventions: sequences start with ``bos_id`` ([CLS]); a sequence ends when ``eos_id`` ([SEP]) is chosen or when it
holds ``max_length`` tokens ([CLS] and [SEP] included). Returned token lists exclude [CLS] and [SEP]. ``banned_ids``
(padding, [CLS], [MASK], [UNK]) are never generated; [SEP] is banned until ``min_length`` words were generated.
Scores are sums of log-probabilities ([SEP] included).
"""
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

__all__ = ["Caption", "beam_search", "greedy_search"]

StepFn = Callable[[torch.Tensor], torch.Tensor]  # ids [N, t] -> log-probs of the next token [N, V]


@dataclass
class Caption:
    """One decoded caption: word-piece ids (no [CLS]/[SEP]), sum of log-probs, and the score beams are ranked by."""

    token_ids: list[int]
    log_prob: float
    score: float


def _check(max_length: int, min_length: int, beam_size: int = 1) -> None:
    if max_length < 2:
        raise ValueError(f"max_length must be >= 2 ([CLS] + [SEP]), got {max_length}")
    if not 0 <= min_length <= max_length - 2:
        raise ValueError(f"min_length must lie in [0, max_length - 2 = {max_length - 2}], got {min_length}")
    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, got {beam_size}")


def _ban(log_probs: torch.Tensor, banned_ids: Sequence[int], eos_id: int, num_words: int, min_length: int):
    log_probs = log_probs.clone()
    if banned_ids:
        log_probs[:, list(banned_ids)] = float("-inf")
    if num_words < min_length:
        log_probs[:, eos_id] = float("-inf")
    return log_probs


@torch.no_grad()
def greedy_search(step: StepFn, num_sequences: int, *, bos_id: int, eos_id: int, pad_id: int, max_length: int,
                  min_length: int = 1, banned_ids: Sequence[int] = (), device=None) -> list[Caption]:
    """The most likely token at every step. Finished sequences are extended with ``pad_id`` (masked by the model)
    until all are done."""
    _check(max_length, min_length)
    ids = torch.full((num_sequences, 1), bos_id, dtype=torch.long, device=device)
    done = torch.zeros(num_sequences, dtype=torch.bool, device=device)
    log_prob = torch.zeros(num_sequences, dtype=torch.float64, device=device)
    for num_words in range(max_length - 1):
        scores = _ban(step(ids).float(), banned_ids, eos_id, num_words, min_length)
        if num_words == max_length - 2:  # the last slot can only hold [SEP]
            chosen = torch.full_like(done, eos_id, dtype=torch.long)
        else:
            chosen = scores.argmax(dim=-1)
        picked = scores.gather(1, chosen[:, None])[:, 0].double()
        log_prob = torch.where(done, log_prob, log_prob + picked)
        chosen = torch.where(done, torch.full_like(chosen, pad_id), chosen)
        ids = torch.cat([ids, chosen[:, None]], dim=1)
        done = done | (chosen == eos_id)
        if bool(done.all()):
            break
    out = []
    for row, lp in zip(ids.tolist(), log_prob.tolist()):
        words = row[1:]
        words = words[: words.index(eos_id)] if eos_id in words else [w for w in words if w != pad_id]
        out.append(Caption(words, lp, lp))
    return out


@torch.no_grad()
def beam_search(step: StepFn, num_images: int, *, beam_size: int, bos_id: int, eos_id: int, pad_id: int,
                max_length: int, min_length: int = 1, length_penalty: float = 0.0, banned_ids: Sequence[int] = (),
                device=None) -> list[Caption]:
    """The best of ``beam_size`` hypotheses per image, ranked by ``log_prob / length ** length_penalty`` (length
    in generated tokens, [SEP] included).

    ``step`` receives ``num_images * beam_size`` sequences, image-major (row ``i * beam_size + j`` is beam j of
    image i). A hypothesis that chooses [SEP] among the best ``beam_size`` candidates of its image is finished; an
    image stops once it has ``beam_size`` finished hypotheses (HF's ``early_stopping=True``) or at ``max_length``,
    where its open beams close as they are. With ``beam_size`` 1 this is greedy search.
    """
    _check(max_length, min_length, beam_size)
    k = beam_size
    ids = torch.full((num_images * k, 1), bos_id, dtype=torch.long, device=device)
    beam_scores = torch.full((num_images, k), float("-inf"), dtype=torch.float64, device=device)
    beam_scores[:, 0] = 0.0  # all beams start identical: expand only the first at step 1
    finished: list[list[Caption]] = [[] for _ in range(num_images)]
    done = [False] * num_images

    def normalised(score: float, length: int) -> float:
        return score / (length ** length_penalty) if length_penalty else score

    for num_words in range(max_length - 1):
        scores = _ban(step(ids).double(), banned_ids, eos_id, num_words, min_length)
        vocab = scores.shape[1]
        if num_words == max_length - 2:  # the last slot can only hold [SEP]
            only_eos = torch.full_like(scores, float("-inf"))
            only_eos[:, eos_id] = scores[:, eos_id]
            scores = only_eos
        total = (beam_scores[:, :, None] + scores.view(num_images, k, vocab)).view(num_images, k * vocab)
        top_scores, top_idx = total.topk(min(2 * k, k * vocab), dim=1)
        next_ids = ids.new_full((num_images * k, ids.shape[1] + 1), pad_id)
        next_scores = torch.full_like(beam_scores, float("-inf"))
        for i in range(num_images):
            if done[i]:
                continue
            slot = 0
            for rank, (score, flat) in enumerate(zip(top_scores[i].tolist(), top_idx[i].tolist())):
                if score == float("-inf"):
                    break
                beam, token = divmod(flat, vocab)
                prefix = ids[i * k + beam]
                if token == eos_id:
                    if rank < k:
                        words = prefix[1:].tolist()
                        finished[i].append(Caption(words, score, normalised(score, len(words) + 1)))
                    continue
                next_ids[i * k + slot, :-1] = prefix
                next_ids[i * k + slot, -1] = token
                next_scores[i, slot] = score
                slot += 1
                if slot == k:
                    break
            if len(finished[i]) >= k or slot == 0:
                done[i] = True
        ids, beam_scores = next_ids, next_scores
        if all(done):
            break
    best = []
    for i in range(num_images):
        hyps = finished[i]
        if not hyps:  # max_length 2 with [SEP] banned cannot happen (_check); kept for safety
            hyps = [Caption(ids[i * k][1:].tolist(), float(beam_scores[i, 0]), float(beam_scores[i, 0]))]
        best.append(max(hyps, key=lambda c: c.score))
    return best
