"""Deployment: GLIP as one ONNX file (``export_onnx``) run by ONNX Runtime behind ``GLIPPredictor``'s interface
(``OnnxGLIP``). Needs the optional ``[export]`` extra (onnx, onnxruntime), imported only when used; ``import
glip_d2`` does not import this package. How it works: docs/export.md."""
from .graph import (
    INPUT_NAMES,
    OUTPUT_NAMES,
    TEXT_FEATURE_NAMES,
    GLIPExportModule,
    GLIPFromTextExportModule,
    TextEncoderExportModule,
)
from .nms import legacy_nms_np, select_detections_np
from .onnx_export import default_export_size, export_onnx, text_encoder_path
from .runtime import OnnxGLIP, read_export_metadata

__all__ = [
    "GLIPExportModule",
    "GLIPFromTextExportModule",
    "INPUT_NAMES",
    "OUTPUT_NAMES",
    "OnnxGLIP",
    "TEXT_FEATURE_NAMES",
    "TextEncoderExportModule",
    "default_export_size",
    "export_onnx",
    "legacy_nms_np",
    "read_export_metadata",
    "select_detections_np",
    "text_encoder_path",
]
