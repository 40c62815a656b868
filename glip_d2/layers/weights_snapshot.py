"""Whether tensors are still exactly the ones something was computed from: what a cache of derived values checks.

A tensor counts as unchanged while it is the same object, on the same storage, with the same version counter
(every in-place write through PyTorch moves it: ``load_state_dict``, optimizer steps, ``add_`` under ``no_grad``).
The snapshot keeps a view of each tensor, so a freed storage can never be reused at the same address and pass the
check. Writes through ``.data`` bypass the version counter and are not seen.
"""
from collections.abc import Iterable

from torch import Tensor

__all__ = ["WeightsSnapshot"]


class WeightsSnapshot:
    """``matches(tensors)`` is True while ``tensors`` are those of the last ``take(tensors)``, unchanged."""

    def __init__(self):
        self._kept: list[tuple[Tensor, Tensor, int]] = []  # (tensor, a view holding its storage, version)

    def take(self, tensors: Iterable[Tensor]) -> None:
        self._kept = [(t, t.detach(), t._version) for t in tensors]

    def matches(self, tensors: Iterable[Tensor]) -> bool:
        tensors = list(tensors)
        return len(tensors) == len(self._kept) and all(
            t is kept and t.data_ptr() == view.data_ptr() and t._version == version
            for t, (kept, view, version) in zip(tensors, self._kept)
        )

    def clear(self) -> None:
        self._kept = []
