"""PhraseList: the phrases of detections, indexable like the tensors of an ``Instances``."""
import torch

__all__ = ["PhraseList"]


class PhraseList(list):
    """A list of strings that ``Instances`` can index with tensors (boolean masks or indices) like its tensors."""

    def __getitem__(self, item):
        if isinstance(item, torch.Tensor):
            if item.dtype == torch.bool:
                item = item.nonzero().flatten()
            return PhraseList(list.__getitem__(self, int(i)) for i in item.reshape(-1).tolist())
        if isinstance(item, slice):
            return PhraseList(list.__getitem__(self, item))
        return list.__getitem__(self, item)
