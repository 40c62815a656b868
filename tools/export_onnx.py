#!/usr/bin/env python
"""Export a GLIP model to one ONNX file that ``glip_d2.export.OnnxGLIP`` (ONNX Runtime) runs (docs/export.md).

    python tools/export_onnx.py --weights GLIP-T --output glip_t.onnx                 # 800 x 1344, 256 tokens
    python tools/export_onnx.py --config-file configs/GLIP-T_C.yaml --weights model.pth --output m.onnx \
        --height 800 --width 1344 --max-text-len 64 MODEL.ATSS.INFERENCE_TH 0.1
    python tools/export_onnx.py ... --check photo.jpg --prompt "person. dog"   # also compare with PyTorch

The file takes raw pixels (the padded size is fixed at export: --height/--width, multiples of 32, default the
config's test size for landscape images), the prompt's token ids, attention mask and positive map (up to
--max-text-len tokens, default MODEL.LANGUAGE.MAX_QUERY_LEN), and returns the pre-NMS candidates; ``OnnxGLIP``
finishes with GLIP's "+1" NMS. Needs the [export] extra: ``pip install -e .[export]``.
"""
import argparse
import logging
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from detectron2.utils.logger import setup_logger  # noqa: E402

import glip_d2  # noqa: E402,F401  (registers GLIP's models)
from glip_d2.engine.defaults import load_cli_cfg  # noqa: E402

logger = logging.getLogger("glip_d2.export_onnx")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", default="", metavar="FILE", help="model config (default: the zoo entry's)")
    p.add_argument("--weights", default="", help="checkpoint path or model-zoo name (e.g. GLIP-T)")
    p.add_argument("--output", required=True, help="the .onnx file to write")
    p.add_argument("--max-text-len", type=int, default=None, help="tokens per prompt (default MAX_QUERY_LEN)")
    p.add_argument("--height", type=int, default=None, help="padded image height (multiple of 32)")
    p.add_argument("--width", type=int, default=None, help="padded image width (multiple of 32)")
    p.add_argument("--text-features", action="store_true",
                   help="take the text encoder's outputs as inputs; the encoder goes to OUTPUT's .text.onnx "
                        "(OnnxGLIP then encodes each prompt once)")
    p.add_argument("--check", metavar="IMAGE", help="run the file and the PyTorch model on IMAGE and compare")
    p.add_argument("--prompt", default="person. dog. car", help="prompt for --check")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE pairs")
    return p.parse_args(argv)


def setup_cfg(args):
    """Config from --config-file / --weights (zoo name or path) / opts, as demo/demo.py reads them."""
    cfg = load_cli_cfg(args.config_file, args.weights, list(args.opts), freeze=False)
    cfg.MODEL.DEVICE = "cpu"  # the graph is traced on the CPU; ONNX Runtime picks its own device
    return cfg


def check(path: str, model, cfg, image_file: str, prompt: str) -> None:
    """Detections of the file and of the PyTorch model on one image: count and largest differences."""
    import cv2
    import torch

    from glip_d2.engine.predictor import GLIPPredictor
    from glip_d2.export import OnnxGLIP

    image = cv2.imread(image_file)
    if image is None:
        raise SystemExit(f"--check: cannot read image {image_file!r}")
    runtime = OnnxGLIP(path, threads=torch.get_num_threads())
    start = time.perf_counter()
    ours = runtime(image, prompt)
    seconds = time.perf_counter() - start
    ref = GLIPPredictor(cfg, model=model)(image, prompt)
    logger.info("ONNX Runtime: %d detections in %.2f s; PyTorch: %d", len(ours), seconds, len(ref))
    if len(ours) == len(ref) and len(ref):
        logger.info("max |box| %.3g px, max |score| %.3g (in score order; near-equal scores may swap)",
                    (ours.pred_boxes.tensor - ref.pred_boxes.tensor).abs().max().item(),
                    (ours.scores - ref.scores).abs().max().item())


def main(argv=None) -> None:
    args = parse_args(argv)
    setup_logger(name="glip_d2")
    cfg = setup_cfg(args)
    from glip_d2.engine.trainer import GLIPTrainer
    from glip_d2.export import export_onnx

    try:
        import onnx  # noqa: F401
    except ImportError:
        raise SystemExit("tools/export_onnx.py needs onnx and onnxruntime: pip install -e .[export]") from None
    model = GLIPTrainer.build_model_for_eval(cfg)
    summary = export_onnx(cfg, args.output, model=model, height=args.height, width=args.width,
                          max_text_len=args.max_text_len, text_features=args.text_features)
    print(f"wrote {', '.join(summary['files'])}: {summary['bytes'] / 2**20:.1f} MiB, {summary['export_seconds']:.1f} s; "
          f"images padded to {summary['height']}x{summary['width']}, prompts up to {summary['max_text_len']} tokens")
    if args.check:
        check(args.output, model, cfg, args.check, args.prompt)


if __name__ == "__main__":
    main()
