"""The exported computation: ``GLIP`` from raw pixels and token ids to its pre-NMS candidates, as one traceable module.

Why a wrapper: ``GLIP.inference`` works on dicts, Python ints and data-dependent sizes (``int(candidate.sum())``),
which a traced graph would freeze. This module calls the model's own stages (``backbone``, ``encode_tokens``,
``predict``, ``anchor_generator``, the post-processor's ``box_coder``) and rewrites only the candidate selection of
``GLIPPostProcessor._candidates`` with fixed shapes:

* per level, every (location, label) score ``mean token prob x centerness`` that passes the threshold (*before*
  the centerness multiply, official detail 11) competes in ``topk(min(pre_nms_top_n, locations x labels))``;
  pairs below the threshold get the score -1, so the top k holds every real candidate (all of them when there are
  at most ``pre_nms_top_n``, else the ``pre_nms_top_n`` best, which is what ``scores[candidate].topk`` picks);
* outputs are fixed-size: ``valid`` marks the real candidates, the runtime drops the rest.

Everything else (normalisation, zero padding after normalisation, decoding, "+1" clipping, ``sqrt``) is the same
arithmetic as the PyTorch model. Deformable convolutions run the gather implementation (``MODEL.DYHEAD
.DEFORM_IMPL`` "gather", equal forward values; ``gather_deform_conv`` while tracing), which ONNX expresses
with Gather and MatMul.
"""
import contextlib

import torch
from torch import Tensor, nn

from ..layers.modulated_deform_conv import ModulatedDeformConv2d
from ..modeling.dense_heads.postprocess import token_to_label_scores

__all__ = [
    "gather_deform_conv",
    "GLIPExportModule",
    "GLIPFromTextExportModule",
    "INPUT_NAMES",
    "OUTPUT_NAMES",
    "TEXT_FEATURE_NAMES",
    "TextEncoderExportModule",
]

#: Graph inputs: raw pixels [1, 3, H, W] (INPUT.FORMAT order, 0-255, float32), valid (unpadded) size (h, w) int64,
#: token ids and attention mask [1, L] int64, positive map [K, L] float32 (one row per label, zero rows unused).
INPUT_NAMES = ["image", "image_size", "input_ids", "attention_mask", "positive_map"]
#: Graph outputs: legacy "+1" xyxy boxes in the resized frame [M, 4], scores [M], positive-map rows [M] (int64),
#: and ``valid`` [M] (bool): which of the fixed M slots hold a real candidate.
OUTPUT_NAMES = ["boxes", "scores", "labels", "valid"]
#: The text encoder's outputs [1, L, D], [1, L, D], [1, L] (``GLIP.encode_tokens``): what a fixed prompt's cache
#: holds, and the text inputs of the detector exported with ``text_features=True``.
TEXT_FEATURE_NAMES = ["text_hidden", "text_embedded", "text_masks"]


@contextlib.contextmanager
def gather_deform_conv(model: nn.Module):
    """Inside the block every deformable conv of ``model`` uses the gather implementation, so the graph needs no
    ``DeformConv`` operator (opset 19, not in every runtime); the values are the same. The model's own setting
    comes back afterwards."""
    convs = [m for m in model.modules() if isinstance(m, ModulatedDeformConv2d)]
    saved = [m.impl for m in convs]
    try:
        for m in convs:
            m.impl = "gather"
        yield model
    finally:
        for m, impl in zip(convs, saved):
            m.impl = impl


class GLIPExportModule(nn.Module):
    """``GLIP`` (one image, one prompt) up to the pre-NMS candidates; see the module docstring."""

    def __init__(self, model: nn.Module):
        super().__init__()
        if getattr(model, "roi_heads", None) is not None:
            raise ValueError("ONNX export supports the one-stage GLIP meta-architecture, not GroundingRCNN")
        self.model = model.eval()
        post = model.postprocessor
        self.box_coder = post.box_coder
        self.score_threshold = float(post.score_threshold)
        self.pre_nms_top_n = int(post.pre_nms_top_n)
        self.eval()  # the exporter restores the wrapper's mode afterwards, recursively: keep it (and GLIP) in eval

    def forward(self, image: Tensor, image_size: Tensor, input_ids: Tensor, attention_mask: Tensor,
                positive_map: Tensor):
        return self.detect(image, image_size, self.model.encode_tokens(input_ids, attention_mask), positive_map)

    def detect(self, image: Tensor, image_size: Tensor, lang: dict[str, Tensor], positive_map: Tensor):
        """Candidates from pixels and the encoded prompt (``lang`` as ``GLIP.encode_tokens`` returns it)."""
        model = self.model
        x = (image - model.pixel_mean) / model.pixel_std
        height, width = image_size[0], image_size[1]
        rows = torch.arange(x.shape[2], device=x.device)[:, None] < height
        cols = torch.arange(x.shape[3], device=x.device)[None, :] < width
        x = x * (rows & cols).to(x.dtype)  # zero padding after normalisation, as ImageList.from_tensors
        features = model.backbone(x)
        features = [features[f] for f in model.in_features]
        outputs, visual, _ = model.predict(features, lang)
        anchors = model.anchor_generator(visual)
        levels = [
            self._level(reg[0], ctr[0], logits[0], anc, height, width, positive_map)
            for reg, ctr, logits, anc in zip(
                outputs["box_regression"], outputs["centerness"], outputs["dot_product_logits"], anchors
            )
        ]
        return tuple(torch.cat([lvl[i] for lvl in levels]) for i in range(4))

    def _level(self, box_reg, ctr, logits, anchors, height, width, positive_map):
        """``GLIPPostProcessor._candidates`` with a fixed number of slots (module docstring)."""
        scores = token_to_label_scores(logits.sigmoid(), positive_map)  # [HW, K]
        num_labels = scores.shape[1]
        candidate = scores > self.score_threshold
        scores = scores * ctr.reshape(-1).sigmoid()[:, None]
        masked = torch.where(candidate, scores, torch.full_like(scores, -1.0)).reshape(-1)
        k = min(self.pre_nms_top_n, masked.shape[0])
        top_scores, top = masked.topk(k, sorted=False)
        loc = torch.div(top, num_labels, rounding_mode="floor")
        label = top - loc * num_labels
        deltas = box_reg.permute(1, 2, 0).reshape(-1, 4)[loc]
        boxes = self.box_coder.decode(deltas, anchors[loc])
        boxes = _legacy_clip(boxes, height, width)
        valid = top_scores >= 0
        return boxes, torch.sqrt(top_scores.clamp(min=0)), label, valid


class GLIPFromTextExportModule(GLIPExportModule):
    """The detector with the text encoder's outputs as inputs (``TEXT_FEATURE_NAMES`` in place of the token ids),
    so that a fixed vocabulary is encoded once (``TextEncoderExportModule``) and only the image part runs per image.
    Fusion still updates the text features with every image: only the text encoder's work is saved."""

    def forward(self, image: Tensor, image_size: Tensor, text_hidden: Tensor, text_embedded: Tensor,
                text_masks: Tensor, positive_map: Tensor):
        lang = {"hidden": text_hidden, "embedded": text_embedded, "masks": text_masks}
        return self.detect(image, image_size, lang, positive_map)


class TextEncoderExportModule(nn.Module):
    """``GLIP.encode_tokens``: token ids and attention mask [1, L] -> ``TEXT_FEATURE_NAMES``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model.eval()
        self.eval()

    def forward(self, input_ids: Tensor, attention_mask: Tensor):
        lang = self.model.encode_tokens(input_ids, attention_mask)
        return lang["hidden"], lang["embedded"], lang["masks"]


def _legacy_clip(boxes: Tensor, height: Tensor, width: Tensor) -> Tensor:
    """``legacy_clip`` with the bounds as tensors (the valid size is a graph input)."""
    x_max = (width - 1).to(boxes.dtype)
    y_max = (height - 1).to(boxes.dtype)
    x = torch.minimum(boxes[:, 0::2].clamp(min=0), x_max)
    y = torch.minimum(boxes[:, 1::2].clamp(min=0), y_max)
    return torch.stack((x[:, 0], y[:, 0], x[:, 1], y[:, 1]), dim=1)
