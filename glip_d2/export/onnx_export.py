"""``export_onnx``: write a GLIP model as one ONNX file (image + prompt tokens -> pre-NMS candidates).

The graph is ``GLIPExportModule`` (or, with ``text_features``, ``GLIPFromTextExportModule`` plus the text encoder
in a second file) traced with ``torch.onnx.export`` (the TorchScript exporter: it records the
model's own operations, and the fixed-shape candidate selection keeps the trace valid for every input). Shapes are
fixed at export time: the padded image size (``height`` x ``width``, multiples of 32; the valid size is an input)
and the text length (``max_text_len`` tokens; the positive map has as many rows, unused rows zero). What the
runtime needs to finish the job (NMS threshold, detection caps, the config the model was built from) travels in
the file's metadata, so ``OnnxGLIP(path)`` needs nothing else.
"""
import logging
import math
import os
import time
import warnings

import torch

from .graph import (
    INPUT_NAMES,
    OUTPUT_NAMES,
    TEXT_FEATURE_NAMES,
    GLIPExportModule,
    GLIPFromTextExportModule,
    TextEncoderExportModule,
    gather_deform_conv,
)

__all__ = ["META_PREFIX", "default_export_size", "export_onnx", "text_encoder_path"]

logger = logging.getLogger(__name__)

#: Prefix of the metadata keys written into the ONNX file.
META_PREFIX = "glip_d2."
DEFAULT_OPSET = 17


def _ceil32(x: int) -> int:
    return int(math.ceil(x / 32.0) * 32)


def default_export_size(cfg) -> tuple[int, int]:
    """(height, width) a landscape image takes after the test resize (short side MIN_SIZE_TEST, long side at most
    MAX_SIZE_TEST), padded to a multiple of 32."""
    short = cfg.INPUT.MIN_SIZE_TEST
    short = short[0] if isinstance(short, (list, tuple)) else short
    return _ceil32(short), _ceil32(max(cfg.INPUT.MAX_SIZE_TEST, short))


def _check_sizes(cfg, height: int, width: int, max_text_len: int) -> None:
    for name, value in (("height", height), ("width", width)):
        if value <= 0 or value % 32:
            raise ValueError(f"export {name} must be a positive multiple of 32 (the padded image size), got {value}")
    limit = cfg.MODEL.LANGUAGE.MAX_QUERY_LEN
    if not 3 <= max_text_len <= limit:
        raise ValueError(f"max_text_len must be in [3, MODEL.LANGUAGE.MAX_QUERY_LEN={limit}], got {max_text_len}")


def text_encoder_path(output: str) -> str:
    """Where ``export_onnx(..., text_features=True)`` writes the text encoder: ``model.onnx`` -> ``model.text.onnx``."""
    root, ext = os.path.splitext(output)
    return root + ".text" + (ext or ".onnx")


def _trace(module, args, path: str, input_names, output_names, opset: int) -> None:
    with torch.no_grad(), warnings.catch_warnings(), gather_deform_conv(module):
        # shape checks read as Python values: constants of a fixed-shape graph, which is what is exported
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        # indices are top-k positions, never negative: the case this warning is about does not arise
        warnings.filterwarnings("ignore", message="Exporting aten::index operator of advanced indexing")
        torch.onnx.export(module, args, path, input_names=input_names, output_names=output_names,
                          opset_version=opset, dynamo=False, do_constant_folding=True)


def _add_metadata(path: str, meta: dict, doc: str) -> None:
    import onnx  # the optional [export] extra

    proto = onnx.load(path)
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = META_PREFIX + key, str(value)
    proto.doc_string = doc
    onnx.save(proto, path)


def _dummy_inputs(model, height: int, width: int, max_text_len: int) -> tuple[torch.Tensor, ...]:
    from ..tokenization import tokenize_captions

    tokens = tokenize_captions(model.language_encoder.tokenizer, ["object"], max_text_len, pad_max=True)
    positive_map = torch.zeros(max_text_len, max_text_len)
    positive_map[0, 1] = 1.0
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, height, width, generator=generator) * 255
    return image, torch.tensor([height, width]), tokens["input_ids"], tokens["attention_mask"], positive_map


def export_onnx(
    cfg,
    output: str,
    *,
    model: torch.nn.Module | None = None,
    height: int | None = None,
    width: int | None = None,
    max_text_len: int | None = None,
    text_features: bool = False,
    opset: int = DEFAULT_OPSET,
) -> dict:
    """Export ``model`` (default: built from ``cfg`` with ``cfg.MODEL.WEIGHTS`` loaded, as ``GLIPPredictor`` does)
    to ``output``. With ``text_features`` the file takes the text encoder's outputs instead of token ids, and the
    text encoder goes to its own file (``text_encoder_path(output)``), so that ``OnnxGLIP`` encodes each prompt
    once. Returns a summary (paths, sizes in bytes, export seconds, the fixed shapes)."""
    try:
        import onnx  # noqa: F401  (the optional [export] extra: fail before the model is built)
    except ImportError as e:
        raise ImportError("export_onnx needs onnx (and OnnxGLIP onnxruntime): pip install -e .[export]") from e

    h0, w0 = default_export_size(cfg)
    height, width = height or h0, width or w0
    max_text_len = max_text_len or cfg.MODEL.LANGUAGE.MAX_QUERY_LEN
    _check_sizes(cfg, height, width, max_text_len)
    if cfg.MODEL.META_ARCHITECTURE != "GLIP":
        raise ValueError(f"ONNX export supports MODEL.META_ARCHITECTURE 'GLIP', got {cfg.MODEL.META_ARCHITECTURE!r}")
    if model is None:
        from ..engine.trainer import GLIPTrainer

        model = GLIPTrainer.build_model_for_eval(cfg)
    model = model.to("cpu").eval()
    image, size, ids, mask, positive_map = _dummy_inputs(model, height, width, max_text_len)
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    post = model.postprocessor
    meta = {
        "height": height,
        "width": width,
        "max_text_len": max_text_len,
        "nms_threshold": post.nms_threshold,
        "detections_per_image": post.detections_per_image,
        "min_size": post.min_size,
        "max_detections_merged": model.max_detections_merged,
    }
    start = time.perf_counter()
    if text_features:
        text_file = text_encoder_path(output)
        encoder = TextEncoderExportModule(model)
        _trace(encoder, (ids, mask), text_file, ["input_ids", "attention_mask"], TEXT_FEATURE_NAMES, opset)
        _add_metadata(text_file, {"max_text_len": max_text_len}, "GLIP (glip_d2) text encoder: token ids -> features")
        with torch.no_grad():
            text = encoder(ids, mask)
        detector = GLIPFromTextExportModule(model)
        _trace(detector, (image, size, *text, positive_map), output,
               ["image", "image_size", *TEXT_FEATURE_NAMES, "positive_map"], OUTPUT_NAMES, opset)
        meta["text_encoder_file"] = os.path.basename(text_file)
    else:
        _trace(GLIPExportModule(model), (image, size, ids, mask, positive_map), output, INPUT_NAMES, OUTPUT_NAMES,
               opset)
    seconds = time.perf_counter() - start
    _add_metadata(output, {**meta, "config": cfg.dump()},
                  "GLIP (glip_d2) image + prompt -> pre-NMS candidates; run with glip_d2.export.OnnxGLIP")
    files = [output] + ([text_encoder_path(output)] if text_features else [])
    summary = {"path": output, "files": files, "bytes": sum(os.path.getsize(f) for f in files),
               "export_seconds": seconds, **meta}
    logger.info("wrote %s (%.1f MiB, traced and converted in %.1f s)", ", ".join(files), summary["bytes"] / 2**20,
                seconds)
    return summary
