"""The ``GLIP`` meta-architecture: image + prompt -> grounded boxes.

Data flow, as the official ``GeneralizedVLRCNN`` with ``RPN_ONLY``: normalise BGR 0-255 pixels with the Caffe
mean/std and zero-pad to a multiple of 32; tokenize each image's caption and run the language encoder; run the
visual backbone (FPN p3..p7); run the VL tower (fusion -> BERT layer -> DyConv blocks); the grounding head
predicts box deltas, centerness and region-token logits on legacy "+1" anchors. Training returns the ATSS losses
(plus GLIPv2's MLM and region-word losses when MODEL.GLIPV2 enables them, ``glipv2/objectives.py``); inference
turns token scores into label scores through each prompt's positive map and returns ``Instances``.

Ground-truth boxes arrive in detectron2's continuous convention (``x2 = x + w``) and are converted to GLIP's
pixel-index convention (``x2 = x + w - 1``) in exactly one place: ``GLIP._targets`` (via
``box_coder.continuous_to_legacy``). Predictions are computed in GLIP's convention, rescaled to the original
image size by a plain ratio multiply as official, and returned in detectron2's continuous convention (x2 + 1,
``legacy_to_continuous``) so that detectron2's COCO export gives the official ``w = x2 - x1 + 1``.
"""
import contextlib
from collections.abc import Sequence

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone
from detectron2.structures import Boxes, ImageList, Instances
from torch import nn

from ...structures import PhraseList, continuous_to_legacy, legacy_to_continuous
from ..dense_heads import GLIPAnchorGenerator, GLIPBoxCoder, GLIPLoss, GLIPPostProcessor, GroundingHead
from ..glipv2.objectives import GLIPv2Objectives, build_glipv2_objectives
from ..language import build_language_encoder
from ..prompt_offset import PromptOffset
from ..text_cache import TextFeatureCache
from ..tuning import apply_tuning_mode, mode_uses_prompt_offset
from ..vl_tower import VLTower
from .stage_record import stage_dict

__all__ = ["GLIP", "PhraseList"]


def _single_prompt(record: dict) -> dict:
    """The dict's own caption/positive map as one prompt (the common case without ``prompts``)."""
    for key in ("caption", "positive_map"):
        if key not in record:
            raise ValueError(f"GLIP inference needs '{key}' in each input dict (or a 'prompts' list); got {sorted(record)}")
    return {k: record[k] for k in ("caption", "positive_map", "positive_map_labels", "phrases") if k in record}


@META_ARCH_REGISTRY.register()
class GLIP(nn.Module):
    """One-stage grounded detector (GLIP-T/L); see the module docstring for the data flow."""

    @configurable
    def __init__(
        self,
        *,
        backbone: nn.Module,
        language_encoder: nn.Module,
        vl_tower: nn.Module,
        head: GroundingHead,
        anchor_generator: GLIPAnchorGenerator,
        loss: GLIPLoss,
        postprocessor: GLIPPostProcessor,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        in_features: Sequence[str] = ("p3", "p4", "p5", "p6", "p7"),
        use_fused_text: bool = True,
        max_detections_merged: int = 100,
        input_format: str = "BGR",
        glipv2: GLIPv2Objectives | None = None,
        prompt_offset: PromptOffset | None = None,
        test_pad_to_longest: bool = True,
    ):
        super().__init__()
        self.test_pad_to_longest = test_pad_to_longest
        self.backbone = backbone
        self.language_encoder = language_encoder
        self.vl_tower = vl_tower
        self.head = head
        self.anchor_generator = anchor_generator
        self.loss = loss
        self.postprocessor = postprocessor
        self.in_features = list(in_features)
        self.use_fused_text = use_fused_text
        self.max_detections_merged = max_detections_merged
        self.input_format = input_format
        self.glipv2 = glipv2  # GLIPv2's training objectives (MLM head, region-word loss); None for GLIP
        self.prompt_offset = prompt_offset  # prompt tuning's per-position text offset; None when not prompt-tuned
        self._frozen_parts: list[nn.Module] = []  # kept in eval mode while training (``set_tuning_mode``)
        self._stage_record = None  # a dict while inside ``stage_outputs()``
        self.text_cache = TextFeatureCache()  # prompts' text features, kept only inside ``text_cache.enabled()``
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(-1, 1, 1), False)
        if self.pixel_mean.shape != self.pixel_std.shape:
            raise ValueError(f"PIXEL_MEAN {pixel_mean} and PIXEL_STD {pixel_std} have different lengths")
        shapes = backbone.output_shape()
        missing = [f for f in self.in_features if f not in shapes]
        if missing:
            raise ValueError(f"MODEL.ATSS.IN_FEATURES {missing} are not backbone outputs ({list(shapes)})")
        strides = [shapes[f].stride for f in self.in_features]
        if strides != anchor_generator.strides:
            raise ValueError(f"MODEL.ATSS.ANCHOR_STRIDES {anchor_generator.strides} != feature strides {strides}")

    @classmethod
    def from_config(cls, cfg):
        if not cfg.MODEL.GLIP.RPN_ONLY and cls is GLIP:  # the two-stage subclass is GroundingRCNN
            raise ValueError(
                "MODEL.GLIP.RPN_ONLY False adds ROI heads: set MODEL.META_ARCHITECTURE 'GroundingRCNN'"
            )
        if cfg.INPUT.FORMAT != "BGR":
            raise ValueError(f"GLIP expects BGR 0-255 input (official detail 6); INPUT.FORMAT is {cfg.INPUT.FORMAT!r}")
        language_encoder = build_language_encoder(cfg)
        if getattr(language_encoder, "hidden_dim", cfg.MODEL.LANGUAGE.HIDDEN_DIM) != cfg.MODEL.LANGUAGE.HIDDEN_DIM:
            raise ValueError(
                f"MODEL.LANGUAGE.HIDDEN_DIM={cfg.MODEL.LANGUAGE.HIDDEN_DIM} but the text encoder "
                f"'{cfg.MODEL.LANGUAGE.MODEL_NAME}' produces {language_encoder.hidden_dim}-d features"
            )
        box_coder = GLIPBoxCoder(cfg.MODEL.ATSS.BBOX_REG_WEIGHTS)
        return {
            "backbone": build_backbone(cfg),
            "language_encoder": language_encoder,
            "vl_tower": VLTower(cfg),
            "head": GroundingHead(cfg),
            "anchor_generator": GLIPAnchorGenerator(cfg),
            "loss": GLIPLoss(cfg, box_coder=box_coder),
            "postprocessor": GLIPPostProcessor(cfg, box_coder=box_coder),
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "in_features": cfg.MODEL.ATSS.IN_FEATURES,
            # official: the tower's lang["hidden"] (without fusion: the unmasked BERT output), else "embedded"
            "use_fused_text": cfg.MODEL.GLIP.USE_FUSED_FEATURES_DOT_PRODUCT,
            "max_detections_merged": cfg.TEST.DETECTIONS_PER_IMAGE,
            "input_format": cfg.INPUT.FORMAT,
            "glipv2": build_glipv2_objectives(cfg, language_encoder),
            "prompt_offset": (
                PromptOffset(cfg.MODEL.LANGUAGE.HIDDEN_DIM) if mode_uses_prompt_offset(cfg.SOLVER.TUNING_MODE) else None
            ),
            "test_pad_to_longest": cfg.MODEL.LANGUAGE.TEST_PAD_TO_LONGEST,
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    # ---- stages -------------------------------------------------------------------------------------------
    def preprocess_image(self, batched_inputs: list[dict]) -> ImageList:
        """Normalise (x - mean) / std and zero-pad (after normalisation) to a multiple of 32."""
        images = [(x["image"].to(self.device).float() - self.pixel_mean) / self.pixel_std for x in batched_inputs]
        divisibility = max(32, int(getattr(self.backbone, "size_divisibility", 0) or 0))
        return ImageList.from_tensors(images, divisibility)

    def encode_text(self, captions: list[str]) -> dict[str, torch.Tensor]:
        """Tokenize and encode prompts for inference: {"hidden", "embedded", "masks", "input_ids"}. Padded to the
        longest prompt (TEST_PAD_TO_LONGEST) or to MAX_QUERY_LEN; the detections are the same either way.
        Inside ``self.text_cache.enabled()`` (an evaluation, without autocast) each list of captions is encoded once."""
        pad_max = False if self.test_pad_to_longest and not self.training else None

        def encode():
            return self.encode_tokens(*self.tokenize(captions, pad_max=pad_max))

        if torch.is_autocast_enabled(self.device.type):
            return encode()
        key = (tuple(captions), pad_max, self.training, str(self.device))
        return self.text_cache.lookup(key, (self.language_encoder, self.prompt_offset), encode)

    def tokenize(self, captions: list[str], pad_max: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids, attention_mask) [B, L] on the model's device; ``pad_max`` None = MODEL.LANGUAGE.PAD_MAX."""
        tokens = self.language_encoder.tokenize(list(captions), pad_max=pad_max)
        return tokens["input_ids"].to(self.device), tokens["attention_mask"].to(self.device)

    def encode_tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """The text encoder's outputs (plus ``input_ids``), with the prompt-tuning offset added when there is one."""
        lang = dict(self.language_encoder(input_ids, attention_mask))
        if self.prompt_offset is not None:
            lang = self.prompt_offset(lang)
        lang["input_ids"] = input_ids
        return lang

    # ---- transfer -----------------------------------------------------------------------------------------
    def set_tuning_mode(self, mode: str) -> None:
        """Train only what ``SOLVER.TUNING_MODE`` ``mode`` says (:mod:`glip_d2.modeling.tuning`); the frozen parts
        stay in eval mode through later ``train()`` calls."""
        self._frozen_parts = apply_tuning_mode(self, mode)
        self.train(self.training)

    def add_prompt_offset(self) -> PromptOffset:
        """A zero prompt offset (the base model's outputs unchanged), for loading a prompt-tuned task into a model
        built without one."""
        if self.prompt_offset is None:
            self.prompt_offset = PromptOffset(self.head.lang_dim).to(self.device)
        return self.prompt_offset

    def train(self, mode: bool = True):
        super().train(mode)
        for part in self._frozen_parts:
            part.eval()
        return self

    def extract_features(self, images: ImageList) -> list[torch.Tensor]:
        features = self.backbone(images.tensor)
        return [features[f] for f in self.in_features]

    def predict(self, features: list[torch.Tensor], lang: dict[str, torch.Tensor]):
        """Tower + head. Returns (head outputs, tower visual output, tower language output)."""
        visual, lang_out = self.vl_tower(list(features), dict(lang))
        text = lang_out["hidden"] if self.use_fused_text else lang["embedded"]
        return self.head(visual, text), visual, lang_out

    # ---- training -----------------------------------------------------------------------------------------
    def forward(self, batched_inputs: list[dict]):
        if not self.training:
            return self.inference(batched_inputs)
        for x in batched_inputs:
            if "caption" not in x or "instances" not in x:
                raise ValueError(f"GLIP training needs 'caption' and 'instances' in each input dict; got {sorted(x)}")
        images = self.preprocess_image(batched_inputs)
        lang, mlm_labels = self._training_text(batched_inputs)
        features = self.extract_features(images)
        outputs, visual, lang_out = self.predict(features, lang)
        anchors = self.anchor_generator(visual)
        gt_boxes, gt_maps = self._targets([x["instances"] for x in batched_inputs])
        matched = self._glipv2_matching(anchors, gt_boxes)
        losses = self.loss(
            outputs["box_regression"], outputs["centerness"], outputs["dot_product_logits"], anchors,
            gt_boxes, gt_maps, lang["masks"], matched_idxs=matched,
        )
        losses.update(self._glipv2_losses(features, lang, lang_out, mlm_labels, matched, gt_maps, batched_inputs))
        return losses

    def _training_text(self, batched_inputs: list[dict]):
        """(encoded captions, MLM labels or None). With GLIPv2's MLM the ids are masked before the encoder, so the
        whole model, grounding loss included, reads the masked text (as official)."""
        input_ids, attention_mask = self.tokenize([x["caption"] for x in batched_inputs])
        labels = None
        if self.glipv2 is not None:
            input_ids, labels = self.glipv2.mask_input_ids(input_ids, attention_mask, batched_inputs)
        return self.encode_tokens(input_ids, attention_mask), labels

    def _glipv2_matching(self, anchors, gt_boxes):
        """The ATSS assignment when GLIPv2's region-word loss needs it as well (computed once); else None."""
        if self.glipv2 is None or not self.glipv2.needs_matching:
            return None
        return self.loss.match(anchors, gt_boxes)

    def _glipv2_losses(self, features, lang, lang_out, mlm_labels, matched, gt_maps, batched_inputs) -> dict:
        if self.glipv2 is None:
            return {}
        return self.glipv2(
            features=features, lang=lang, lang_out=lang_out,
            head_text=lang_out["hidden"] if self.use_fused_text else lang["embedded"],
            mlm_labels=mlm_labels, matched_idxs=matched, gt_maps=gt_maps, batched_inputs=batched_inputs,
        )

    def _targets(self, instances: list[Instances]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """GT boxes in GLIP's "+1" convention (the single conversion point) and their token maps."""
        boxes, maps = [], []
        for inst in instances:
            if not inst.has("gt_positive_map"):
                raise ValueError("instances need 'gt_positive_map' [N, L] (token map of each box) for GLIP training")
            boxes.append(continuous_to_legacy(inst.gt_boxes.tensor.to(self.device)))
            maps.append(inst.gt_positive_map.to(self.device))
        return boxes, maps

    # ---- inference ----------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def stage_outputs(self):
        """Record what ``inference`` computes, for stage-by-stage comparisons (docs/architecture.md).

        Inside the block every ``inference`` call writes the stages of its *first* prompt into the yielded dict
        (the last call wins), keyed like the official reference run: ``inputs``, ``backbone.fpn``, ``language``
        (``backbone_hidden``, ``backbone_embedded``, ``masks``, ``fused_hidden``, ``dot_product_proj_tokens``),
        ``tower_visual`` (head input), ``head`` (``bbox_reg``, ``centerness``, ``dot_product_logits``),
        ``anchors``, and per image ``pre_nms`` / ``final_sorted`` (``boxes_xyxy`` in resized coordinates,
        ``scores``, ``labels`` = 1-based positive-map rows as the official label ids; final also
        ``boxes_xyxy_orig``). Outside the block nothing is kept.
        """
        if self._stage_record is not None:
            raise RuntimeError("stage_outputs() blocks cannot be nested")
        self._stage_record = {}
        try:
            yield self._stage_record
        finally:
            self._stage_record = None

    def inference(self, batched_inputs: list[dict], do_postprocess: bool = True):
        """Detections per image; the image backbone runs once, every prompt through language + tower + head."""
        if any("prompts" in x and not x["prompts"] for x in batched_inputs):
            raise ValueError("an input dict has an empty 'prompts' list")
        prompts = [x["prompts"] if "prompts" in x else [_single_prompt(x)] for x in batched_inputs]
        images = self.preprocess_image(batched_inputs)
        features = self.extract_features(images)
        per_image = [[] for _ in batched_inputs]
        record = self._stage_record
        anchors = None
        for j in range(max(len(p) for p in prompts)):
            idx = [i for i, p in enumerate(prompts) if len(p) > j]
            feats = features if len(idx) == len(batched_inputs) else [f[idx] for f in features]
            lang = self.encode_text([prompts[i][j]["caption"] for i in idx])
            outputs, visual, lang_out = self.predict(feats, lang)
            if anchors is None:
                anchors = self.anchor_generator(visual)
            dets = self.postprocessor(
                outputs["box_regression"], outputs["centerness"], outputs["dot_product_logits"], anchors,
                [images.image_sizes[i] for i in idx], [prompts[i][j]["positive_map"] for i in idx],
                return_pre_nms=record is not None and j == 0,
            )
            for i, det in zip(idx, dets):
                per_image[i].append(self._label(det, prompts[i][j]))
            if record is not None and j == 0:
                record.update(stage_dict(images, features, lang, lang_out, visual, outputs, anchors, dets))
                for i, final in zip(idx, record["final_sorted"]):
                    h, w = images.image_sizes[i]
                    out_hw = (batched_inputs[i].get("height", h), batched_inputs[i].get("width", w))
                    final["boxes_xyxy_orig"] = self._scale_boxes(final["boxes_xyxy"], (h, w), out_hw)
        results = []
        for i, x in enumerate(batched_inputs):
            inst = self._merge(per_image[i], images.image_sizes[i])
            if do_postprocess:
                inst = self._rescale(inst, x.get("height", inst.image_size[0]), x.get("width", inst.image_size[1]))
            results.append({"instances": inst} if do_postprocess else inst)
        return results

    @staticmethod
    def _label(det: dict[str, torch.Tensor], prompt: dict) -> dict[str, object]:
        """Map positive-map rows to ``pred_classes`` (``positive_map_labels[row]``) and phrases."""
        rows = det["labels"]
        labels = prompt.get("positive_map_labels")
        if labels is None:
            classes = rows.clone()
        else:
            classes = torch.as_tensor(labels, dtype=torch.long).to(rows.device)[rows]
        out = {"boxes": det["boxes"], "scores": det["scores"], "classes": classes, "rows": rows}
        phrases = prompt.get("phrases")
        if phrases is not None:
            out["phrases"] = PhraseList(phrases[r] for r in rows.tolist())
        return out

    def _merge(self, dets: list[dict[str, object]], image_size: tuple[int, int]) -> Instances:
        """One prompt: as is (the k-th-score rule may keep ties beyond the cap, as official). Several prompts
        (chunked vocabularies): concatenate and keep the top TEST.DETECTIONS_PER_IMAGE by score (<= 0: all of them,
        as the LVIS configs, whose Fixed AP picks per class over the dataset)."""
        boxes = torch.cat([d["boxes"] for d in dets])
        scores = torch.cat([d["scores"] for d in dets])
        classes = torch.cat([d["classes"] for d in dets])
        has_phrases = all("phrases" in d for d in dets)
        phrases = PhraseList(p for d in dets for p in d["phrases"]) if has_phrases else None
        if len(dets) > 1:
            order = torch.sort(scores, descending=True, stable=True).indices
            if self.max_detections_merged > 0:
                order = order[: self.max_detections_merged]
            boxes, scores, classes = boxes[order], scores[order], classes[order]
            phrases = phrases[order] if phrases is not None else None
        inst = Instances(tuple(image_size))
        inst.pred_boxes = Boxes(boxes)
        inst.scores = scores
        inst.pred_classes = classes
        if phrases is not None:
            inst.pred_phrases = phrases
        return inst

    @staticmethod
    def _scale_boxes(boxes: torch.Tensor, from_hw: tuple[int, int], to_hw: tuple[int, int]) -> torch.Tensor:
        """Resized -> original coordinates by the size ratio (official BoxList.resize; no re-clip, no filtering)."""
        scale_y = float(to_hw[0]) / from_hw[0]
        scale_x = float(to_hw[1]) / from_hw[1]
        return boxes * boxes.new_tensor([scale_x, scale_y, scale_x, scale_y])

    def _rescale(self, inst: Instances, height: int, width: int) -> Instances:
        out = Instances((int(height), int(width)))
        for name, value in inst.get_fields().items():
            out.set(name, value)
        scaled = self._scale_boxes(inst.pred_boxes.tensor, inst.image_size, (height, width))
        out.pred_boxes = Boxes(legacy_to_continuous(scaled))  # detectron2's convention from here on
        return out
