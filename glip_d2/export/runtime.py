"""``OnnxGLIP``: an exported GLIP file in ONNX Runtime behind ``GLIPPredictor``'s interface.

Everything around the graph is the package's own code, not a copy: ``GLIPPredictor`` parses and encodes the
prompt (names, dotted lists, free text, chunking of long vocabularies), resizes the image and adds
``pred_phrases``; ``GLIP``'s labelling, merging and rescaling turn each prompt's detections into ``Instances``.
This module only feeds the graph (pads the image to the exported size, pads tokens and positive map to the
exported text length) and runs the NMS post-step of ``nms.py`` on its candidates.
"""
import math
import os
from collections import OrderedDict
from types import SimpleNamespace

import numpy as np
import torch
from detectron2.config import CfgNode

from ..engine.defaults import get_glip_cfg
from ..engine.predictor import GLIPPredictor
from ..modeling.meta_arch.glip import GLIP
from ..tokenization import build_tokenizer, tokenize_captions
from .graph import TEXT_FEATURE_NAMES
from .nms import select_detections_np
from .onnx_export import META_PREFIX

__all__ = ["OnnxGLIP", "read_export_metadata"]

#: Prompts whose text features ``OnnxGLIP`` keeps (files exported with ``text_features``).
TEXT_CACHE_SIZE = 64


def read_export_metadata(session) -> dict:
    """The ``glip_d2.*`` metadata ``export_onnx`` wrote (shapes, NMS settings, config), typed."""
    props = session.get_modelmeta().custom_metadata_map
    meta = {k[len(META_PREFIX):]: v for k, v in props.items() if k.startswith(META_PREFIX)}
    missing = {"height", "width", "max_text_len", "nms_threshold", "detections_per_image", "config"} - set(meta)
    if missing:
        raise ValueError(f"not an ONNX file written by glip_d2.export.export_onnx: metadata lacks {sorted(missing)}")
    meta.setdefault("max_detections_merged", "100")
    meta.setdefault("min_size", "0")
    for key in ("height", "width", "max_text_len", "detections_per_image", "max_detections_merged"):
        meta[key] = int(meta[key])
    meta["nms_threshold"] = float(meta["nms_threshold"])
    meta["min_size"] = float(meta["min_size"])
    return meta


def _config_from_yaml(text: str):
    """The config the file was exported from (``cfg.dump()`` in its metadata)."""
    cfg = get_glip_cfg()
    cfg.merge_from_other_cfg(CfgNode.load_cfg(text))
    return cfg


class _Tail:
    """``GLIP``'s labelling, merging and rescaling of per-prompt detections, without a model."""

    _label = staticmethod(GLIP._label)
    _scale_boxes = staticmethod(GLIP._scale_boxes)
    _merge = GLIP._merge
    _rescale = GLIP._rescale

    def __init__(self, max_detections_merged: int):
        self.max_detections_merged = max_detections_merged


class _OnnxModel:
    """Stands in for the ``GLIP`` module inside ``GLIPPredictor``: ``model(list of input dicts)`` -> outputs."""

    def __init__(self, session, meta: dict, tokenizer, allow_padding: bool, text_session=None):
        self.session = session
        self.input_names = [i.name for i in session.get_inputs()]
        self.text_session = text_session  # set when the file takes text features (exported with text_features)
        self.text_cache: OrderedDict[str, dict[str, np.ndarray]] = OrderedDict()
        self.text_cache_hits = 0
        self.meta = meta
        self.language_encoder = SimpleNamespace(tokenizer=tokenizer)
        self.allow_padding = allow_padding
        self.tail = _Tail(meta["max_detections_merged"])

    def eval(self):
        return self

    def _canvas(self, image: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """The resized image in a zero canvas of the exported size, and its valid (h, w)."""
        _, h, w = image.shape
        height, width = self.meta["height"], self.meta["width"]
        padded = (int(math.ceil(h / 32) * 32), int(math.ceil(w / 32) * 32))
        if padded != (height, width) and not (self.allow_padding and h <= height and w <= width):
            hint = "" if h > height or w > width else " (or pass allow_padding=True to pad it, see docs/export.md)"
            raise ValueError(
                f"this ONNX file was exported for {height}x{width} padded images; the image resizes to {h}x{w}, "
                f"which pads to {padded[0]}x{padded[1]}: export with --height {padded[0]} --width {padded[1]}{hint}"
            )
        canvas = np.zeros((1, 3, height, width), dtype=np.float32)
        canvas[0, :, :h, :w] = image.numpy()
        return canvas, np.array([h, w], dtype=np.int64)

    def _text_inputs(self, prompt: dict) -> dict[str, np.ndarray]:
        n = self.meta["max_text_len"]
        tokens = tokenize_captions(self.language_encoder.tokenizer, [prompt["caption"]], n, pad_max=True)
        pm = torch.as_tensor(prompt["positive_map"]).float()
        if pm.shape[0] > n or (pm.shape[1] > n and bool(pm[:, n:].any())):
            raise ValueError(f"the prompt has {pm.shape[0]} labels over {pm.shape[1]} token positions; this ONNX "
                             f"file takes at most {n} of each (--max-text-len)")
        full = torch.zeros(n, n)
        full[: pm.shape[0], : min(n, pm.shape[1])] = pm[:, :n]
        text = {"input_ids": tokens["input_ids"].numpy(), "attention_mask": tokens["attention_mask"].numpy()}
        if self.text_session is not None:
            text = self._text_features(prompt["caption"], text)
        return {**text, "positive_map": full.numpy()}

    def _text_features(self, caption: str, tokens: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The text encoder's outputs for ``caption``, computed once per caption (LRU of ``TEXT_CACHE_SIZE``)."""
        hit = self.text_cache.get(caption)
        if hit is not None:
            self.text_cache.move_to_end(caption)
            self.text_cache_hits += 1
            return hit
        features = dict(zip(TEXT_FEATURE_NAMES, self.text_session.run(TEXT_FEATURE_NAMES, tokens)))
        self.text_cache[caption] = features
        if len(self.text_cache) > TEXT_CACHE_SIZE:
            self.text_cache.popitem(last=False)
        return features

    def detect(self, canvas: np.ndarray, size: np.ndarray, prompt: dict) -> dict[str, torch.Tensor]:
        """One prompt's detections in the resized frame (legacy boxes), as ``GLIPPostProcessor`` returns them."""
        feeds = {"image": canvas, "image_size": size, **self._text_inputs(prompt)}
        boxes, scores, labels, valid = self.session.run(None, {k: feeds[k] for k in self.input_names})
        boxes, scores, labels = boxes[valid], scores[valid], labels[valid]
        if self.meta["min_size"] > 0:
            big = ((boxes[:, 2] - boxes[:, 0] + 1 >= self.meta["min_size"])
                   & (boxes[:, 3] - boxes[:, 1] + 1 >= self.meta["min_size"]))
            boxes, scores, labels = boxes[big], scores[big], labels[big]
        boxes, scores, labels = select_detections_np(
            boxes, scores, labels, self.meta["nms_threshold"], self.meta["detections_per_image"]
        )
        return {"boxes": torch.from_numpy(np.ascontiguousarray(boxes)), "scores": torch.from_numpy(scores),
                "labels": torch.from_numpy(labels.astype(np.int64))}

    def __call__(self, batched_inputs: list[dict]) -> list[dict]:
        results = []
        for x in batched_inputs:
            canvas, size = self._canvas(x["image"])
            prompts = x["prompts"] if "prompts" in x else [x]
            dets = [self.tail._label(self.detect(canvas, size, p), p) for p in prompts]
            inst = self.tail._merge(dets, (int(size[0]), int(size[1])))
            results.append({"instances": self.tail._rescale(inst, x["height"], x["width"])})
        return results


class OnnxGLIP(GLIPPredictor):
    """``GLIPPredictor`` on an ONNX file from ``tools/export_onnx.py``: ``OnnxGLIP(path)(image, prompt)`` ->
    ``Instances`` (``pred_boxes``, ``scores``, ``pred_classes``, ``pred_phrases``), no PyTorch model built.

    The config comes from the file (pass ``cfg`` to override it). Prompts longer than the exported text length are
    refused, as are images whose padded size differs from the exported one; ``allow_padding=True`` runs smaller
    ones in the larger canvas (the outputs then equal PyTorch's on an image padded that far, not on the image
    alone). ``threads`` sets ONNX Runtime's intra-op threads. A file exported with ``text_features`` runs its
    text encoder (the ``.text.onnx`` beside it) once per prompt and reuses the features for the next images.
    """

    def __init__(self, onnx_path: str, cfg=None, *, threads: int | None = None, allow_padding: bool = False,
                 providers: list[str] | None = None):
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise ImportError("OnnxGLIP needs onnxruntime: pip install -e .[export]") from e
        if not os.path.isfile(onnx_path):
            raise FileNotFoundError(f"ONNX file not found: {onnx_path}")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
        providers = providers or ["CPUExecutionProvider"]
        session = ort.InferenceSession(onnx_path, options, providers=providers)
        meta = read_export_metadata(session)
        text_session = None
        if meta.get("text_encoder_file"):  # exported with text_features: the text encoder is its own file
            text_file = os.path.join(os.path.dirname(os.path.abspath(onnx_path)), meta["text_encoder_file"])
            if not os.path.isfile(text_file):
                raise FileNotFoundError(f"{onnx_path} takes text features from {meta['text_encoder_file']}, which "
                                        f"is not beside it ({text_file})")
            text_session = ort.InferenceSession(text_file, options, providers=providers)
        cfg = (cfg if cfg is not None else _config_from_yaml(meta["config"])).clone()
        cfg.defrost()
        cfg.MODEL.LANGUAGE.MAX_QUERY_LEN = meta["max_text_len"]  # prompts are encoded (and chunked) for the file
        self.meta = meta
        super().__init__(cfg, model=_OnnxModel(session, meta, build_tokenizer(cfg), allow_padding, text_session))

    def add_task(self, path: str, name: str | None = None) -> str:
        """Task files change weights, which an exported file has fixed."""
        raise NotImplementedError(f"OnnxGLIP cannot load task file {path!r}: the weights are fixed in the ONNX file "
                                  "(tuned tasks are not supported by the ONNX export)")

    def encode_prompt(self, prompt, phrases=None) -> list[dict]:
        try:
            return super().encode_prompt(prompt, phrases)
        except ValueError as e:
            if "token" not in str(e).lower():
                raise
            raise ValueError(f"{e} (this ONNX file was exported with --max-text-len {self.max_len}: shorten the "
                             "prompt or export with a larger one)") from e
