"""Multi-scale + flip test-time augmentation for GLIP, as the official ``TEST.USE_MULTISCALE`` does it.

detectron2's ``GeneralizedRCNNWithTTA`` pattern: a wrapper module that runs the model on every augmented copy of an
image (made by a TTA mapper, :class:`glip_d2.data.tta_mapper.GLIPDatasetMapperTTA`) and merges the detections.
What the official code does, and so what this does:

* each copy keeps every thresholded candidate of the dense head -- no NMS and no per-image cap at that stage
  (the official ATSS post-processor skips its selection when multi-scale testing is on); with several prompts
  (chunked vocabularies) every prompt's candidates are kept, not the merged top-N;
* per scale, boxes whose sqrt("+1" area) in that copy is outside ``TEST.AUG.SIZE_RANGES`` are dropped;
* a flipped copy's boxes are mapped back in the resized frame with the legacy flip ``x -> W - 1 - x`` (exact),
  then every copy's boxes are scaled to the original size by the size ratio;
* the union goes through class-aware "+1" NMS (``TEST.AUG.NMS_THRESH``) and the k-th-score cut keeps
  ``TEST.AUG.DETECTIONS_PER_IMAGE``.

The official code runs a test batch's images together at each scale, but batch padding changes results
(docs/official_details.md, detail 20), so the copies run one at a time unless ``batch_size`` says otherwise.
"""
import contextlib

import torch
from detectron2.structures import Boxes, Instances
from torch import nn
from torchvision.ops import batched_nms

from ..structures import PhraseList, legacy_to_continuous
from .meta_arch import GroundingRCNN

__all__ = ["GLIPWithTTA", "merge_augmented_detections"]


def merge_augmented_detections(
    detections: list[Instances], image_size: tuple[int, int], nms_thresh: float, max_detections: int
) -> Instances:
    """Union of per-copy detections (legacy "+1" boxes in original-image pixels) -> class-aware NMS -> top-k.

    NMS runs on ``x2 + 1, y2 + 1`` boxes, whose continuous IoU is the "+1" IoU (torchvision's kernel: the legacy
    NMS of the post-processor keeps an [N, N] matrix per class, too large for the union of 24 copies). The cut
    keeps every detection scoring at least the k-th best, as the official ``kthvalue`` rule. Returns detectron2's
    continuous boxes, by decreasing score.
    """
    boxes = torch.cat([d.pred_boxes.tensor for d in detections])
    scores = torch.cat([d.scores for d in detections])
    classes = torch.cat([d.pred_classes for d in detections])
    has_phrases = all(d.has("pred_phrases") for d in detections)
    phrases = PhraseList(p for d in detections for p in d.pred_phrases) if has_phrases else None
    if nms_thresh > 0 and len(scores):
        keep = batched_nms(legacy_to_continuous(boxes).float(), scores.float(), classes, nms_thresh)
    else:
        keep = torch.arange(len(scores), device=scores.device)
    keep = keep[torch.sort(scores[keep], descending=True, stable=True).indices]
    if 0 < max_detections < len(keep):
        kth = torch.kthvalue(scores[keep].detach().cpu().float(), len(keep) - max_detections + 1).values.item()
        keep = keep[scores[keep] >= kth]
    out = Instances(tuple(image_size))
    out.pred_boxes = Boxes(legacy_to_continuous(boxes[keep]))
    out.scores = scores[keep]
    out.pred_classes = classes[keep]
    if phrases is not None:
        out.pred_phrases = phrases[keep]
    return out


class GLIPWithTTA(nn.Module):
    """A GLIP model under multi-scale + flip testing; called like the model on a list of input dicts."""

    def __init__(self, cfg, model: nn.Module, tta_mapper, batch_size: int = 1):
        super().__init__()
        model = getattr(model, "module", model)  # DistributedDataParallel
        if isinstance(model, GroundingRCNN):
            raise NotImplementedError("multi-scale testing follows the official one-stage GLIP; GroundingRCNN has none")
        self.model = model
        self.tta_mapper = tta_mapper
        self.batch_size = int(batch_size)
        self.size_ranges = [tuple(float(v) for v in r) for r in cfg.TEST.AUG.SIZE_RANGES]
        if self.size_ranges and len(self.size_ranges) != len(tta_mapper.min_sizes):
            raise ValueError(
                f"TEST.AUG.SIZE_RANGES has {len(self.size_ranges)} [min, max] entries but TEST.AUG.MIN_SIZES has "
                f"{len(tta_mapper.min_sizes)} sizes; give one per size, or [] to keep every box"
            )
        self.nms_thresh = float(cfg.TEST.AUG.NMS_THRESH)
        self.max_detections = int(cfg.TEST.AUG.DETECTIONS_PER_IMAGE)

    @contextlib.contextmanager
    def _all_candidates(self):
        """No NMS, no per-image cap and no merge cap inside the model while the copies run (restored after)."""
        post = self.model.postprocessor
        saved = (post.nms_threshold, post.detections_per_image, self.model.max_detections_merged)
        post.nms_threshold, post.detections_per_image, self.model.max_detections_merged = 0.0, 0, -1
        try:
            yield
        finally:
            post.nms_threshold, post.detections_per_image, self.model.max_detections_merged = saved

    def augmented_detections(self, dataset_dict: dict) -> list[tuple[dict, Instances]]:
        """(augmented input, its detections) per scale and flip, before the merge: legacy "+1" boxes in
        original-image pixels, size range applied."""
        augmented = self.tta_mapper(dataset_dict)
        outputs = []
        with self._all_candidates(), torch.no_grad():
            for i in range(0, len(augmented), self.batch_size):
                outputs += self.model.inference(augmented[i : i + self.batch_size], do_postprocess=False)
        return [(aug, self._to_original(aug, inst)) for aug, inst in zip(augmented, outputs)]

    def _to_original(self, aug: dict, inst: Instances) -> Instances:
        h, w = inst.image_size
        boxes = inst.pred_boxes.tensor
        keep = torch.ones(len(inst), dtype=torch.bool, device=boxes.device)
        if self.size_ranges:
            lo, hi = self.size_ranges[aug["tta"]["index"]]
            area = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
            keep = (area > lo * lo) & (area < hi * hi)  # strict on both sides, as official remove_boxes
        inst = inst[keep]
        boxes = inst.pred_boxes.tensor
        if aug["tta"]["flip"]:
            boxes = torch.stack([(w - 1) - boxes[:, 2], boxes[:, 1], (w - 1) - boxes[:, 0], boxes[:, 3]], dim=1)
        height, width = int(aug["height"]), int(aug["width"])
        scale = boxes.new_tensor([width / w, height / h, width / w, height / h])
        out = Instances((height, width))
        for name, value in inst.get_fields().items():
            out.set(name, value)
        out.pred_boxes = Boxes(boxes * scale)
        return out

    def forward(self, batched_inputs: list[dict]) -> list[dict]:
        results = []
        for x in batched_inputs:
            dets = [inst for _, inst in self.augmented_detections(x)]
            size = dets[0].image_size
            results.append(
                {"instances": merge_augmented_detections(dets, size, self.nms_thresh, self.max_detections)}
            )
        return results
