"""Text features of prompts seen before, reused while a model evaluates a dataset with a fixed vocabulary.

The chunked LVIS evaluation sends the same 31 prompts with every image (COCO the same one or two); the text
encoder's outputs depend only on the prompt and the weights, so while ``TextFeatureCache.enabled()`` is open
(``GLIPTrainer.test`` opens it around each evaluation) each prompt is encoded once. Outside that block nothing is
kept. The entries belong to one state of the weights the features come from: when any parameter or buffer is
another tensor, has other storage or has been changed in place (its version counter moved: ``load_state_dict``, an
optimizer step), they are dropped, so updated weights are never served stale features. With autograd on, the cache
is bypassed: cached tensors carry no graph.
"""
import contextlib
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable

import torch
from torch import nn

from ..layers.weights_snapshot import WeightsSnapshot

__all__ = ["TextFeatureCache"]


def _weight_tensors(modules: Iterable[nn.Module | None]) -> list[torch.Tensor]:
    return [t for m in modules if m is not None for t in (*m.parameters(), *m.buffers())]


class TextFeatureCache:
    """Least-recently-used prompt -> text-feature dict, active only inside ``enabled()``."""

    def __init__(self, max_entries: int = 256):
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        self.max_entries = max_entries
        self._entries: OrderedDict = OrderedDict()
        self._weights = WeightsSnapshot()  # the weights the entries were computed from
        self._depth = 0

    @contextlib.contextmanager
    def enabled(self):
        """Cache inside the block (nested blocks share it); the entries are dropped when the outermost one ends."""
        self._depth += 1
        try:
            yield self
        finally:
            self._depth -= 1
            if self._depth == 0:
                self._entries.clear()
                self._weights.clear()

    @property
    def active(self) -> bool:
        return self._depth > 0 and not torch.is_grad_enabled()

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, key: Hashable, modules: Iterable[nn.Module | None], compute: Callable[[], dict]) -> dict:
        """``compute()``'s dict for ``key`` and the current weights of ``modules``, computed at most once while
        active. Returns a new dict each time (its tensors are shared: callers must not modify them in place)."""
        if not self.active:
            return compute()
        weights = _weight_tensors(modules)
        if not self._weights.matches(weights):
            self._entries.clear()
            self._weights.take(weights)
        entry = self._entries.get(key)
        if entry is None:
            entry = compute()
            self._entries[key] = entry
            if len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        else:
            self._entries.move_to_end(key)
        return dict(entry)
