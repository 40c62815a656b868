#!/usr/bin/env python
"""Ground a text prompt in images or a video and draw the detections (detectron2's demo interface + --prompt).

    python demo/demo.py --weights GLIP-T --input photo.jpg "more/*.png" --prompt "person. dog" --output out/
    python demo/demo.py --config-file CFG --weights model_final.pth --input img.png --prompt "a cat on a sofa"
    python demo/demo.py --weights GLIP-T --video-input clip.mp4 --prompt "car. bicycle" --output out.mp4
    python demo/demo.py --config-file VQA_CFG --weights model_final.pth --input img.png --question "what color is the star?"
    python demo/demo.py --config-file CAPTION_CFG --weights model_final.pth --input img.png --caption --beam-size 3

``--weights`` is a checkpoint path or a model-zoo name (``GLIP-T``, ``GLIP-L``, ...; its config is used when
``--config-file`` is not given). Each box is labelled with its phrase and score; masks are drawn when the model
predicts them. Without ``--output`` the pictures go to ``output/demo/``.
"""
import argparse
import glob
import logging
import math
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from detectron2.structures import Instances
from detectron2.utils.colormap import colormap
from detectron2.utils.logger import setup_logger
from detectron2.utils.visualizer import ColorMode, Visualizer

import glip_d2  # noqa: F401  (registers GLIP's models and datasets)
from glip_d2.engine.best_phrase import check_iou_threshold, keep_best_phrase_per_region
from glip_d2.engine.defaults import load_cli_cfg
from glip_d2.engine.predictor import GLIPPredictor, to_uint8_image

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
#: What a folder given as --input expands to.
INPUT_EXTENSIONS = IMAGE_EXTENSIONS + (".bmp", ".tif", ".tiff", ".webp")
_PIL_16BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")

logger = logging.getLogger("glip_d2.demo")


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config-file", default="", metavar="FILE", help="model config (default: the zoo entry's)")
    p.add_argument("--weights", default="", help="checkpoint path or model-zoo name (e.g. GLIP-T)")
    p.add_argument("--input", nargs="+", help="image files or glob patterns ('imgs/*.jpg')")
    p.add_argument("--video-input", help="a video file")
    p.add_argument("--output", help="output file (one input) or folder; default output/demo/")
    p.add_argument("--prompt", help="'name. name. name', or a sentence to ground (default for a tuned task file: "
                                    "the vocabulary it was tuned for)")
    p.add_argument("--question", help="with a GLIPv2VQA model: a question to answer (drawn with its top answers)")
    p.add_argument("--caption", action="store_true",
                   help="with a GLIPv2Caption model: write a caption (drawn with the boxes of its noun phrases)")
    p.add_argument("--beam-size", type=int, default=None, help="--caption: beams (default MODEL.CAPTION.BEAM_SIZE)")
    p.add_argument("--phrases", nargs="+", help="for a sentence prompt: the phrases to ground in it")
    p.add_argument("--confidence-threshold", type=float, default=0.5, help="minimum score drawn (official 0.5)")
    p.add_argument(
        "--agnostic-nms", type=float, default=None, metavar="IOU",
        help="draw one phrase per region: drop boxes overlapping a higher-scoring box of any phrase by IoU > IOU",
    )
    p.add_argument("--skip-bad-images", action="store_true",
                   help="go on past unreadable images, list them at the end (the exit code is still 1)")
    p.add_argument("--verbose", action="store_true", help="show the traceback of an error")
    p.add_argument("--opts", default=[], nargs=argparse.REMAINDER, help="config overrides: KEY VALUE pairs")
    return p


def setup_cfg(args):
    """Config from --config-file / --weights (zoo name or path) / --opts."""
    return load_cli_cfg(args.config_file, args.weights, list(args.opts))


def read_image(path: str) -> np.ndarray:
    """BGR uint8 HxWx3 image from a file (EXIF orientation applied; gray, alpha, palette and 16-bit converted).

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` for a file that is not a readable image.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    if not os.path.isfile(path):
        raise FileNotFoundError(f"cannot read image {path!r}: no such file")
    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            if img.mode in _PIL_16BIT_MODES:
                arr = np.clip(np.asarray(img), 0, 65535).astype(np.uint16)
            elif img.mode in ("L", "RGB", "RGBA"):
                arr = np.asarray(img)
            else:  # palette, LA, CMYK, 1-bit, float, ...
                has_alpha = "A" in img.mode or "transparency" in img.info
                arr = np.asarray(img.convert("RGBA" if has_alpha else "RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ValueError(f"cannot read image {path!r}: {e}") from None
    if arr.ndim == 3:  # PIL gives RGB(A); the predictor takes BGR(A)
        arr = arr[:, :, [2, 1, 0] + ([3] if arr.shape[2] == 4 else [])]
    return to_uint8_image(arr, f"image {path!r}")


def draw(image_bgr: np.ndarray, instances: Instances, threshold: float, min_side: int = 640) -> np.ndarray:
    """RGB picture with the boxes (and masks) scoring >= ``threshold``, each labelled "phrase score".

    Pictures whose long side is below ``min_side`` are enlarged (by an integer factor) so the labels stay legible.
    """
    keep = instances.scores >= threshold
    inst = instances[keep]
    scale = max(1, int(np.ceil(min_side / max(image_bgr.shape[:2]))))
    vis = Visualizer(image_bgr[:, :, ::-1], metadata=None, scale=scale, instance_mode=ColorMode.IMAGE)
    if len(inst) == 0:
        return vis.output.get_image()
    palette = colormap(rgb=True, maximum=1)
    phrases = inst.pred_phrases if inst.has("pred_phrases") else [str(int(c)) for c in inst.pred_classes]
    labels = [f"{p} {s:.2f}" for p, s in zip(phrases, inst.scores.tolist())]
    colors = [palette[int(c) % len(palette)] for c in inst.pred_classes.tolist()]
    masks = inst.pred_masks.numpy() if inst.has("pred_masks") else None
    out = vis.overlay_instances(
        boxes=inst.pred_boxes.tensor.numpy(), labels=labels, masks=masks, assigned_colors=colors, alpha=0.4
    )
    return out.get_image()


def expand_inputs(patterns: list[str]) -> list[str]:
    """Files named by the arguments: globs expanded (sorted), folders expanded to their images (sorted).

    An argument that matches nothing, or a folder without images, is an error: a run that writes nothing must not
    look like a success.
    """
    files = []
    for pattern in patterns:
        matches = sorted(glob.glob(os.path.expanduser(pattern)))
        if not matches:
            raise FileNotFoundError(f"--input {pattern!r}: no such file (and no file matches it as a pattern)")
        for match in matches:
            if os.path.isdir(match):
                images = sorted(os.path.join(match, f) for f in os.listdir(match)
                                if f.lower().endswith(INPUT_EXTENSIONS) and os.path.isfile(os.path.join(match, f)))
                if not images:
                    raise FileNotFoundError(f"--input {match!r} is a folder without images ({', '.join(INPUT_EXTENSIONS)})")
                files.extend(images)
            elif os.path.isfile(match):
                files.append(match)
    return files


def check_threshold(value: float) -> float:
    """``--confidence-threshold`` must be a score in [0, 1]; 1.5 or nan would silently draw nothing."""
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f"--confidence-threshold must be a score between 0 and 1, got {value}")
    return value


def check_outputs(output: str | None, files: list[str]) -> None:
    """Every output the run will write is writable, checked before the model is built."""
    targets = {output_path(output, f, len(files)) for f in files}
    for target in sorted(targets):
        if os.path.splitext(target)[1].lower() not in IMAGE_EXTENSIONS:
            raise ValueError(f"output {target!r}: use a .png or .jpg file name (or a folder)")
    for folder in sorted({os.path.dirname(os.path.abspath(t)) for t in targets}):
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as e:
            raise OSError(f"cannot create the output folder {folder!r}: {e.strerror}") from None
        if not os.access(folder, os.W_OK):
            raise PermissionError(f"cannot write into the output folder {folder!r}")


def output_path(output: str | None, source: str, n_inputs: int, ext: str | None = None) -> str:
    base = os.path.splitext(os.path.basename(source))[0] + (ext or ".png")
    if not output:
        return os.path.join("output", "demo", base)
    if n_inputs == 1 and os.path.splitext(output)[1]:
        return output
    return os.path.join(output, base)


def _write_image(path: str, rgb: np.ndarray) -> None:
    import cv2

    if os.path.splitext(path)[1].lower() not in IMAGE_EXTENSIONS:
        raise ValueError(f"output {path!r}: use a .png or .jpg file name (or a folder)")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if not cv2.imwrite(path, np.ascontiguousarray(rgb[:, :, ::-1])):
        raise OSError(f"could not write {path!r}")


def draw_answer(image_bgr: np.ndarray, question: str, answers, instances: Instances, threshold: float) -> np.ndarray:
    """RGB picture with the question's grounded boxes (score >= ``threshold``) and "Q: ... A: answer (score)"."""
    rgb = draw(image_bgr, instances, threshold)
    vis = Visualizer(rgb, metadata=None)
    text = f"Q: {question}\nA: " + ", ".join(f"{a} ({s:.2f})" for a, s in answers)
    vis.draw_text(text, (4, 4), font_size=max(10, rgb.shape[0] // 30), color="w", horizontal_alignment="left")
    return vis.output.get_image()


def draw_caption(image_bgr: np.ndarray, caption: str, instances: Instances, threshold: float) -> np.ndarray:
    """RGB picture with the caption's grounded boxes (score >= ``threshold``) and the caption on top."""
    import textwrap

    rgb = draw(image_bgr, instances, threshold)
    vis = Visualizer(rgb, metadata=None)
    font_size = max(10, rgb.shape[0] // 30)
    text = textwrap.fill(caption, width=max(20, int(rgb.shape[1] / (0.75 * font_size))))  # ~0.75 em a character
    vis.draw_text(text, (4, 4), font_size=font_size, color="w", horizontal_alignment="left")
    return vis.output.get_image()


def _is_task_file(weights: str) -> bool:
    """A prompt- or linear-probe-tuned task file that records its vocabulary (the predictor's prompt then)."""
    if not weights or not os.path.isfile(weights):
        return False
    from glip_d2.checkpoint.task_file import peek_task_info

    info = peek_task_info(weights)
    return info is not None and bool(info.thing_classes)


def predict(predictor: GLIPPredictor, image: np.ndarray, args) -> Instances:
    """The predictor's detections, reduced to one phrase per region when --agnostic-nms is given."""
    instances = predictor(image, args.prompt, args.phrases)
    if args.agnostic_nms is not None:
        instances = keep_best_phrase_per_region(instances, args.agnostic_nms)
    return instances


def run_images(predictor: GLIPPredictor, files: list[str], args, skipped: list[str] | None = None) -> list[str]:
    """Draw every image; with --skip-bad-images an unreadable one is noted in ``skipped`` and the run goes on."""
    from tqdm import tqdm

    written = []
    for path in tqdm(files, desc="demo", unit="img", disable=len(files) < 2):
        try:
            image = read_image(path)
        except (OSError, ValueError) as e:
            if not args.skip_bad_images:
                raise
            logger.warning("skipped: %s", e)
            if skipped is not None:
                skipped.append(f"{path}: {e}")
            continue
        out = output_path(args.output, path, len(files))
        if args.caption:  # captioning: the caption and the boxes of its noun phrases
            caption, score, instances = predictor.caption(image, beam_size=args.beam_size, ground=True)
            _write_image(out, draw_caption(image, caption, instances, args.confidence_threshold))
            logger.info("%s: %r (log-prob %.2f) -> %s", path, caption, score, out)
            written.append(out)
            continue
        if args.question:  # VQA: the top answers and the boxes of the question's phrases
            answers, instances = predictor.answer(image, args.question, topk=3, boxes=True)
            _write_image(out, draw_answer(image, args.question, answers, instances, args.confidence_threshold))
            logger.info("%s: %r -> %s -> %s", path, args.question, answers, out)
            written.append(out)
            continue
        instances = predict(predictor, image, args)
        n = int((instances.scores >= args.confidence_threshold).sum())
        _write_image(out, draw(image, instances, args.confidence_threshold))
        logger.info("%s: %d detections >= %.2f -> %s", path, n, args.confidence_threshold, out)
        written.append(out)
    return written


def run_video(predictor: GLIPPredictor, path: str, args) -> str:
    import cv2
    from tqdm import tqdm

    cap = cv2.VideoCapture(path)
    if not cap.isOpened():
        raise ValueError(f"cannot read video {path!r}")
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    out = output_path(args.output, path, 1, ".mp4")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    writer = None
    try:
        for _ in tqdm(range(total) if total else iter(int, 1), desc="video", unit="frame"):
            ok, frame = cap.read()
            if not ok:
                break
            rgb = draw(frame, predict(predictor, frame, args), args.confidence_threshold)
            if writer is None:
                h, w = rgb.shape[:2]
                writer = cv2.VideoWriter(out, cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
            writer.write(np.ascontiguousarray(rgb[:, :, ::-1]))
    finally:
        cap.release()
        if writer is not None:
            writer.release()
    return out


def main(argv=None, skipped: list[str] | None = None) -> list[str]:
    """Run the demo; returns the files written. Inputs, outputs and thresholds are checked before the model is
    built, so a typo costs seconds, not a model load. Unreadable images skipped with --skip-bad-images are
    appended to ``skipped``."""
    args = get_parser().parse_args(argv)
    setup_logger(name="glip_d2")
    setup_logger(name="fvcore")
    if bool(args.input) == bool(args.video_input):
        raise SystemExit("give either --input (images) or --video-input (a video)")
    modes = [bool(args.prompt), bool(args.question), bool(args.caption)]
    if sum(modes) > 1 or ((args.question or args.caption) and args.video_input) or (
        not any(modes) and not _is_task_file(args.weights)
    ):
        raise SystemExit("give either --prompt (grounding) or --question (VQA) or --caption (captioning; these two "
                         "with --input images); --prompt may be left out when --weights is a tuned task file (its "
                         "own vocabulary is the prompt)")
    if args.beam_size is not None and args.beam_size < 1:
        raise SystemExit(f"--beam-size must be >= 1, got {args.beam_size}")
    if args.agnostic_nms is not None:
        try:
            check_iou_threshold(args.agnostic_nms)
        except ValueError as e:
            raise SystemExit(f"--agnostic-nms: {e}") from None
    check_threshold(args.confidence_threshold)
    if args.phrases is not None and not all(p.strip() for p in args.phrases):
        raise ValueError("--phrases: empty phrase")
    if args.video_input:
        if not os.path.isfile(args.video_input):
            raise FileNotFoundError(f"--video-input {args.video_input!r}: no such file")
        predictor = GLIPPredictor(setup_cfg(args))
        return [run_video(predictor, args.video_input, args)]
    files = expand_inputs(args.input)
    check_outputs(args.output, files)
    cfg = setup_cfg(args)
    if args.question:  # the answer vocabulary is registered before the model is built (it sizes the VQA head)
        from glip_d2.engine.vqa_predictor import answer_vocab_from_cfg

        answer_vocab_from_cfg(cfg)
    predictor = GLIPPredictor(cfg)
    return run_images(predictor, files, args, skipped)


def cli(argv=None) -> int:
    """``main`` as a command: the written files on stdout; exit 0 only when every requested output was written;
    an error is one line (its traceback only with --verbose)."""
    from glip_d2.checkpoint import CheckpointError

    skipped: list[str] = []
    try:
        for written_path in main(argv, skipped):
            print(written_path)
    # bad input, weights or text model not available / unreadable: one clear message
    except (OSError, ValueError, TypeError, CheckpointError) as e:
        if "--verbose" in (sys.argv[1:] if argv is None else argv):
            raise
        print(f"demo.py: error: {e}", file=sys.stderr)
        return 1
    if skipped:
        print(f"demo.py: {len(skipped)} image(s) skipped, no picture written for them:", file=sys.stderr)
        for line in skipped:
            print(f"  {line}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(cli())
