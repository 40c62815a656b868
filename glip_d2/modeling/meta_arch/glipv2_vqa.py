"""``GLIPv2VQA``: GLIP's model fine-tuned for visual question answering, as GLIPv2 does (§3-§4).

The question is the prompt. GLIP's stages run unchanged (``preprocess_image``, ``tokenize`` / ``encode_tokens``,
``extract_features``, ``predict``), so the question is fused with the image in every tower block, and a head of
``VL_HEAD_REGISTRY`` (MODEL.VQA.HEAD_NAME) reads the fused text of the last block (``lang_out["hidden"]``):
``VQAHead`` that alone, ``GroundedVQAHead`` also the grounding head's region-token logits and the regions. The detector heads stay: one checkpoint grounds and answers.

* Training: ``loss_vqa`` (BCE against the soft scores, see ``VQAHead``). With MODEL.VQA.KEEP_DETECTION_LOSS the
  grounding losses of GLIP are kept (weighted by MODEL.VQA.DETECTION_LOSS_WEIGHT) on the samples of the batch whose
  question has grounded boxes (``instances`` from ``VQADatasetMapper``); samples without boxes contribute VQA only.
* Inference: per input ``{"vqa_scores": [num_answers]}`` (sigmoid: each answer's predicted accuracy) and, with
  MODEL.VQA.RETURN_INSTANCES, ``"instances"`` for inputs whose prompt has a ``positive_map`` (the boxes grounded to
  the question's phrases, GLIP's post-processing); other inputs get no instances.
* Answer vocabulary: the head scores MODEL.VQA.NUM_ANSWERS answers, or (0) as many as the registered
  ``answer_vocab`` of MODEL.VQA.ANSWER_VOCAB_DATASET (default the first training set); the vocabulary's strings stay
  with the dataset metadata, where the evaluator and the predictor read them.
* State dict: the head lives under ``glipv2.vqa_head``. ``glipv2.`` is the prefix of the parameters a GLIP checkpoint
  does not have (``GLIPCheckpointer`` lets exactly those start fresh), so VQA fine-tuning starts from an official or
  glip_d2 GLIP checkpoint with only the head initialised fresh. GLIPv2's pre-training objectives (MLM,
  region-word) are pre-training only and must be off here.
"""
import torch
from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.modeling import META_ARCH_REGISTRY
from torch import nn

from ..vl_heads import build_vl_head, dense_answer_targets
from .glip import GLIP

__all__ = ["GLIPv2VQA", "answer_vocab_size"]

_DETECTION_LOSSES = ("loss_dot_product_token", "loss_reg", "loss_centerness")


def answer_vocab_size(cfg) -> int:
    """MODEL.VQA.NUM_ANSWERS, or the size of the registered answer vocabulary it defaults to."""
    if cfg.MODEL.VQA.NUM_ANSWERS > 0:
        return int(cfg.MODEL.VQA.NUM_ANSWERS)
    name = cfg.MODEL.VQA.ANSWER_VOCAB_DATASET or (cfg.DATASETS.TRAIN[0] if cfg.DATASETS.TRAIN else "")
    vocab = MetadataCatalog.get(name).get("answer_vocab", None) if name else None
    if not vocab:
        raise ValueError(
            f"GLIPv2VQA: the answer vocabulary of {name or '(no DATASETS.TRAIN)'!r} is not registered; register the "
            "dataset first (glip_d2.data.datasets.register_datasets_from_cfg / register_vqa) or set "
            "MODEL.VQA.NUM_ANSWERS"
        )
    return len(vocab)


@META_ARCH_REGISTRY.register()
class GLIPv2VQA(GLIP):
    """GLIP + a VQA head on the fused question (module docstring)."""

    @configurable
    def __init__(self, *, vqa_head: nn.Module, keep_detection_loss: bool = False, detection_loss_weight: float = 1.0,
                 return_instances: bool = False, **kwargs):
        super().__init__(**kwargs)
        if self.glipv2 is not None:
            raise ValueError("GLIPv2VQA fine-tunes without GLIPv2's pre-training objectives: set "
                             "MODEL.GLIPV2.MLM.ENABLED and MODEL.GLIPV2.REGION_WORD.ENABLED to False")
        self.glipv2 = nn.ModuleDict({"vqa_head": vqa_head})  # under "glipv2.": fresh from a GLIP checkpoint
        self.keep_detection_loss = bool(keep_detection_loss)
        self.detection_loss_weight = float(detection_loss_weight)
        self.return_instances = bool(return_instances)

    @classmethod
    def from_config(cls, cfg):
        ret = super().from_config(cfg)
        v = cfg.MODEL.VQA
        ret.update(
            vqa_head=build_vl_head(cfg, v.HEAD_NAME, num_answers=answer_vocab_size(cfg)),
            keep_detection_loss=v.KEEP_DETECTION_LOSS,
            detection_loss_weight=v.DETECTION_LOSS_WEIGHT,
            return_instances=v.RETURN_INSTANCES,
        )
        return ret

    @property
    def vqa_head(self) -> nn.Module:
        return self.glipv2["vqa_head"]

    def _run(self, batched_inputs: list[dict]):
        """GLIP's stages on the questions: (images, text dict, head outputs, tower text, answer logits)."""
        for x in batched_inputs:
            if "caption" not in x:
                raise ValueError(f"GLIPv2VQA needs the question as 'caption' (VQADatasetMapper); got {sorted(x)}")
        images = self.preprocess_image(batched_inputs)
        lang = self.encode_tokens(*self.tokenize([x["caption"] for x in batched_inputs]))
        outputs, visual, lang_out = self.predict(self.extract_features(images), lang)
        if self.vqa_head.reads_regions:  # GroundedVQAHead: the grounding head's region-token scores and the regions
            regions = {"logits": outputs["dot_product_logits"], "centerness": outputs["centerness"], "features": visual}
            logits = self.vqa_head(lang_out["hidden"], lang["masks"], regions=regions)
        else:
            logits = self.vqa_head(lang_out["hidden"], lang["masks"])
        return images, lang, outputs, visual, logits

    def forward(self, batched_inputs: list[dict]):
        if not self.training:
            return self.inference(batched_inputs)
        missing = [i for i, x in enumerate(batched_inputs) if "answer_ids" not in x or "answer_scores" not in x]
        if missing:
            raise ValueError(f"GLIPv2VQA training needs 'answer_ids' and 'answer_scores' (VQADatasetMapper); "
                             f"inputs {missing} lack them")
        images, lang, outputs, visual, logits = self._run(batched_inputs)
        targets = dense_answer_targets([x["answer_ids"] for x in batched_inputs],
                                       [x["answer_scores"] for x in batched_inputs], logits.shape[1], logits.device)
        losses = self.vqa_head.losses(logits, targets)
        grounded = [i for i, x in enumerate(batched_inputs) if "instances" in x and len(x["instances"]) > 0]
        if self.keep_detection_loss and grounded:
            losses.update(self._detection_losses(batched_inputs, grounded, lang, outputs, visual))
        else:
            # the detector head ran but has no loss: a zero that touches its outputs keeps every parameter in the
            # graph (DDP without find_unused_parameters), and the logged loss keys stay the same every iteration
            losses["loss_vqa"] = losses["loss_vqa"] + 0.0 * _touch(outputs)
        return losses

    def _detection_losses(self, batched_inputs, grounded, lang, outputs, visual) -> dict[str, torch.Tensor]:
        """GLIP's grounding losses on the ``grounded`` samples only (box regression, centerness, token logits)."""
        idx = torch.as_tensor(grounded, device=self.device)
        anchors = self.anchor_generator(visual)
        gt_boxes, gt_maps = self._targets([batched_inputs[i]["instances"] for i in grounded])
        width = outputs["dot_product_logits"][0].shape[-1]
        gt_maps = [m[:, :width] for m in gt_maps]
        losses = self.loss(
            [b[idx] for b in outputs["box_regression"]], [c[idx] for c in outputs["centerness"]],
            [d[idx] for d in outputs["dot_product_logits"]], anchors, gt_boxes, gt_maps, lang["masks"][idx],
        )
        if len(grounded) < len(batched_inputs):  # the other samples' head outputs: in the graph, no gradient
            losses = {k: v + 0.0 * _touch(outputs) for k, v in losses.items()}
        return {k: v * self.detection_loss_weight for k, v in losses.items()}

    def inference(self, batched_inputs: list[dict], do_postprocess: bool = True):
        """Per input ``{"vqa_scores": [num_answers]}`` (+ ``"instances"``, see the module docstring)."""
        images, lang, outputs, visual, logits = self._run(batched_inputs)
        scores = logits.sigmoid()
        results = [{"vqa_scores": s} for s in scores]
        grounded = [i for i, x in enumerate(batched_inputs) if "positive_map" in x]
        if self.return_instances and grounded:
            idx = torch.as_tensor(grounded, device=self.device)
            dets = self.postprocessor(
                [b[idx] for b in outputs["box_regression"]], [c[idx] for c in outputs["centerness"]],
                [d[idx] for d in outputs["dot_product_logits"]], self.anchor_generator(visual),
                [images.image_sizes[i] for i in grounded], [batched_inputs[i]["positive_map"] for i in grounded],
            )
            for i, det in zip(grounded, dets):
                x = batched_inputs[i]
                inst = self._merge([self._label(det, x)], images.image_sizes[i])
                if do_postprocess:
                    inst = self._rescale(inst, x.get("height", inst.image_size[0]), x.get("width", inst.image_size[1]))
                results[i]["instances"] = inst
        return results


def _touch(outputs: dict) -> torch.Tensor:
    """Sum of every head output (to multiply by zero)."""
    total = 0.0
    for key in ("box_regression", "centerness", "dot_product_logits"):
        for t in outputs[key]:
            total = total + t.float().sum()
    return total
