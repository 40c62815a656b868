#!/usr/bin/env python
"""Web demo: upload a picture, type a prompt, see the grounded boxes (a local gradio page).

    make app                                    # http://127.0.0.1:7860, GLIP-T if cached, else the embedded model
    .venv/bin/python demo/app.py --weights GLIP-T --port 8080
    .venv/bin/python demo/app.py --config-file CFG --weights model_final.pth --host 0.0.0.0
    .venv/bin/python demo/app.py --vqa-config VQA_CFG --vqa-weights vqa.pth    # adds an "Ask" tab

Why gradio: it is the library the hosted GLIP and Grounding DINO demos use, it is maintained on PyPI with its
page assets inside the wheel (the page works offline), and its queue serves requests one at a time with a bounded
waiting line, which keeps memory bounded without code of ours. Each model's predictor is built once, on its first
request, and kept: its prompt cache is shared by every request.
"""
import argparse
import dataclasses
import os
import sys
import threading
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "demo"))

#: A picture above this many megapixels is refused (a 48 MP phone photo passes; the model sees ~1 MP anyway).
MAX_MEGAPIXELS = 50.0
#: Requests waiting behind the one being served; more are turned away with gradio's "queue is full".
MAX_QUEUE = 8
TABLE_HEADERS = ["phrase", "score", "x0", "y0", "x1", "y1"]


class BadInput(ValueError):
    """Something in the page's input that the user can fix; shown in the page as it is."""


@dataclasses.dataclass
class ModelChoice:
    """One model the page offers: how to build its predictor and how to draw its detections by default."""

    label: str
    config_file: str
    weights: str
    threshold: float = 0.5
    one_phrase_iou: float = 0.5  # IoU of "one phrase per region" (keep_best_phrase_per_region)
    one_phrase_default: bool = False
    opts: tuple = ()
    _predictor: object = dataclasses.field(default=None, repr=False)
    _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False)

    def predictor(self):
        """The model's predictor, built on first use and reused (with its prompt cache) by every request."""
        with self._lock:
            if self._predictor is None:
                from demo import setup_cfg
                from glip_d2.engine.predictor import GLIPPredictor

                args = argparse.Namespace(config_file=self.config_file, weights=self.weights, opts=list(self.opts))
                cfg = setup_cfg(args)
                if cfg.MODEL.META_ARCHITECTURE == "GLIPv2VQA":  # the answer vocabulary sizes the VQA head
                    from glip_d2.engine.vqa_predictor import answer_vocab_from_cfg

                    answer_vocab_from_cfg(cfg)
                self._predictor = GLIPPredictor(cfg)
            return self._predictor


def read_picture(path: str | None, max_megapixels: float = MAX_MEGAPIXELS) -> np.ndarray:
    """BGR uint8 array of an uploaded file; a missing, non-image or too large upload is a ``BadInput``."""
    from PIL import Image, UnidentifiedImageError

    from demo import read_image

    if not path:
        raise BadInput("No picture: upload one (or pick a sample below the picture box).")
    name = os.path.basename(path)
    try:
        with Image.open(path) as img:  # only the header is read: the size is checked before decoding
            width, height = img.size
    except (UnidentifiedImageError, OSError) as e:
        raise BadInput(f"{name!r} is not an image this demo can read ({type(e).__name__}); upload a PNG, JPEG, "
                       "BMP, TIFF or WebP picture.") from None
    megapixels = width * height / 1e6
    if megapixels > max_megapixels:
        raise BadInput(f"{name!r} is {megapixels:.1f} megapixels ({width}x{height}); this page takes at most "
                       f"{max_megapixels:g}. Resize it, or start the app with --max-megapixels.")
    try:
        return read_image(path)
    except ValueError as e:
        raise BadInput(str(e)) from None


def check_prompt(prompt: str | None, phrases: str | None) -> tuple[str, list[str] | None]:
    """The prompt and the optional ";"-separated phrases of the page's two text boxes."""
    prompt = (prompt or "").strip()
    if not prompt:
        raise BadInput("The prompt is empty: type names ('person. dog') or a sentence to ground.")
    rows = [p.strip() for p in (phrases or "").split(";")] if (phrases or "").strip() else None
    if rows is not None and not all(rows):
        raise BadInput("Phrases: an empty phrase between ';' separators.")
    return prompt, rows


def detection_rows(instances, threshold: float) -> list[list]:
    """The table of the drawn detections, best first: phrase, score, box corners (pixels of the upload)."""
    keep = (instances.scores >= threshold).nonzero().flatten().tolist()
    keep.sort(key=lambda i: -float(instances.scores[i]))
    phrases = instances.pred_phrases if instances.has("pred_phrases") else None
    rows = []
    for i in keep:
        box = [round(float(v), 1) for v in instances.pred_boxes.tensor[i].tolist()]
        phrase = phrases[i] if phrases is not None else str(int(instances.pred_classes[i]))
        rows.append([phrase, round(float(instances.scores[i]), 3), *box])
    return rows


class DemoApp:
    """What the page does, without the page: tested directly, and wired to gradio by :func:`build_page`."""

    def __init__(self, models: list[ModelChoice], max_megapixels: float = MAX_MEGAPIXELS,
                 vqa: ModelChoice | None = None, caption: ModelChoice | None = None):
        if not models:
            raise ValueError("no model to serve")
        self.models = {m.label: m for m in models}
        self.max_megapixels = max_megapixels
        self.vqa, self.caption_model = vqa, caption

    def model(self, label: str) -> ModelChoice:
        if label not in self.models:
            raise BadInput(f"Unknown model {label!r}: choose one of {', '.join(self.models)}.")
        return self.models[label]

    def detect(self, path, prompt, phrases, label, threshold, one_phrase_per_region):
        """(RGB picture, table rows, summary) for one request; ``BadInput`` for what the user must fix."""
        from demo import check_threshold, draw
        from glip_d2.engine.best_phrase import keep_best_phrase_per_region

        choice = self.model(label)
        prompt, rows = check_prompt(prompt, phrases)
        try:
            threshold = check_threshold(float(threshold))
        except (TypeError, ValueError) as e:
            raise BadInput(str(e)) from None
        image = read_picture(path, self.max_megapixels)
        start = time.perf_counter()
        try:
            instances = choice.predictor()(image, prompt, rows)
        except ValueError as e:  # prompt over the token limit, a phrase not in the sentence, ...
            raise BadInput(f"Prompt: {e}") from None
        if one_phrase_per_region:
            instances = keep_best_phrase_per_region(instances, choice.one_phrase_iou)
        seconds = time.perf_counter() - start
        table = detection_rows(instances, threshold)
        summary = (f"{len(table)} detection{'s' * (len(table) != 1)} with score >= {threshold:.2f} in "
                   f"{seconds:.2f} s ({choice.label}, {image.shape[1]}x{image.shape[0]} picture)")
        return draw(image, instances, threshold), table, summary

    def answer(self, path, question, threshold):
        """(RGB picture with the question's boxes, [[answer, score]], summary) from the VQA model."""
        from demo import draw_answer

        question = (question or "").strip()
        if not question:
            raise BadInput("The question is empty: type a question about the picture.")
        image = read_picture(path, self.max_megapixels)
        start = time.perf_counter()
        try:
            answers, instances = self.vqa.predictor().answer(image, question, topk=5, boxes=True)
        except ValueError as e:
            raise BadInput(f"Question: {e}") from None
        summary = f"answered in {time.perf_counter() - start:.2f} s ({self.vqa.label})"
        picture = draw_answer(image, question, answers[:3], instances, float(threshold))
        return picture, [[a, round(float(s), 3)] for a, s in answers], summary

    def describe(self, path, beam_size, threshold):
        """(RGB picture with the caption and its phrases' boxes, caption, summary) from the captioning model."""
        from demo import draw_caption

        image = read_picture(path, self.max_megapixels)
        start = time.perf_counter()
        caption, score, instances = self.caption_model.predictor().caption(
            image, beam_size=int(beam_size), ground=True)
        summary = f"log-probability {score:.2f}, {time.perf_counter() - start:.2f} s ({self.caption_model.label})"
        return draw_caption(image, caption, instances, float(threshold)), caption, summary


def _shown(fn):
    """``fn`` with a ``BadInput`` turned into gradio's message box (the server goes on serving)."""
    import functools

    import gradio as gr

    @functools.wraps(fn)
    def wrapper(*args):
        try:
            return fn(*args)
        except BadInput as e:
            raise gr.Error(str(e), duration=None) from None

    return wrapper


def _picture_input(label: str, elem_id: str):
    """An image upload that hands us the file path: the file is checked and decoded by :func:`read_picture`.

    gradio opens an upload with PIL before our code runs; this one box's ``preprocess`` turns a file that is not an
    image (named ``.png``, so the page let it through) into our message instead of gradio's traceback. (A subclass
    of ``gr.Image`` would do the same but makes gradio write a ``.pyi`` stub next to this file.)
    """
    import functools

    import gradio as gr

    box = gr.Image(type="filepath", label=label, sources=["upload"], elem_id=elem_id, height=360)
    open_upload = box.preprocess

    @functools.wraps(open_upload)
    def preprocess(payload):
        try:
            return open_upload(payload)
        except (OSError, ValueError):
            name = getattr(payload, "orig_name", None) or "the upload"
            raise gr.Error(f"{name!r} is not an image this demo can read; upload a PNG, JPEG, BMP, TIFF or WebP "
                           "picture.", duration=None) from None

    box.preprocess = preprocess
    return box


def build_page(app: DemoApp, samples: list[list[str]] = ()):
    """The gradio page: a "Detect" tab, plus "Ask" (VQA) and "Caption" tabs when those models are given."""
    import gradio as gr

    first = next(iter(app.models.values()))
    with gr.Blocks(title="glip_d2: grounded detection") as page:
        gr.Markdown("## glip_d2 — grounded language-image detection\nUpload a picture and type the names to find "
                    "(`person. dog. bicycle.`) or a sentence (`a man holding a red umbrella`).")
        with gr.Tab("Detect"):
            with gr.Row():
                with gr.Column():
                    picture = _picture_input("Picture", "picture")
                    prompt = gr.Textbox(label="Prompt: names separated by '.' (one name: end it with '.'), or a sentence",
                                        placeholder="person. dog.  — or —  a man holding a red umbrella",
                                        elem_id="prompt")
                    phrases = gr.Textbox(label="Phrases to ground in a sentence (optional, ';'-separated)",
                                         elem_id="phrases")
                    model = gr.Dropdown(list(app.models), value=first.label, label="Model", elem_id="model")
                    threshold = gr.Slider(0.0, 1.0, value=first.threshold, step=0.01, label="Score threshold",
                                          elem_id="threshold")
                    one_phrase = gr.Checkbox(value=first.one_phrase_default, label="One phrase per region",
                                             elem_id="one_phrase")
                    button = gr.Button("Detect", variant="primary", elem_id="detect")
                with gr.Column():
                    result = gr.Image(label="Detections", type="numpy", interactive=False, elem_id="result",
                                      height=360)
                    summary = gr.Markdown(elem_id="summary")
                    table = gr.Dataframe(headers=TABLE_HEADERS, label="Boxes", interactive=False,
                                         elem_id="detections")
            if samples:
                gr.Examples(samples, inputs=[picture, prompt], label="Samples")
            model.change(lambda label: (app.models[label].threshold, app.models[label].one_phrase_default),
                         inputs=model, outputs=[threshold, one_phrase])
            inputs = [picture, prompt, phrases, model, threshold, one_phrase]
            for trigger in (button.click, prompt.submit):
                trigger(_shown(app.detect), inputs=inputs, outputs=[result, table, summary])
        if app.vqa is not None:
            with gr.Tab("Ask"):
                with gr.Row():
                    with gr.Column():
                        vqa_picture = _picture_input("Picture", "vqa_picture")
                        question = gr.Textbox(label="Question", elem_id="question")
                        vqa_threshold = gr.Slider(0.0, 1.0, value=app.vqa.threshold, step=0.01,
                                                  label="Box score threshold")
                        ask = gr.Button("Ask", variant="primary", elem_id="ask")
                    with gr.Column():
                        vqa_result = gr.Image(label="Answer", interactive=False, elem_id="vqa_result")
                        vqa_summary = gr.Markdown()
                        answers = gr.Dataframe(headers=["answer", "score"], interactive=False, elem_id="answers")
                ask.click(_shown(app.answer), inputs=[vqa_picture, question, vqa_threshold],
                          outputs=[vqa_result, answers, vqa_summary])
        if app.caption_model is not None:
            with gr.Tab("Caption"):
                with gr.Row():
                    with gr.Column():
                        cap_picture = _picture_input("Picture", "caption_picture")
                        beams = gr.Slider(1, 5, value=3, step=1, label="Beam size")
                        cap_threshold = gr.Slider(0.0, 1.0, value=app.caption_model.threshold, step=0.01,
                                                  label="Box score threshold")
                        describe = gr.Button("Caption", variant="primary", elem_id="describe")
                    with gr.Column():
                        cap_result = gr.Image(label="Caption", interactive=False, elem_id="caption_result")
                        caption = gr.Textbox(label="Caption", interactive=False, elem_id="caption")
                        cap_summary = gr.Markdown()
                describe.click(_shown(app.describe), inputs=[cap_picture, beams, cap_threshold],
                               outputs=[cap_result, caption, cap_summary])
    return page


def default_models() -> tuple[list[ModelChoice], list[list[str]]]:
    """The models and sample pictures of a plain ``make app``, those of ``make demo``: GLIP-T when its weights are
    cached (nothing is downloaded), the embedded model shipped in the package, and the quick-schedule tiny model
    when it is cached and current (or, with neither of the others, trained now)."""
    import make_demo

    from glip_d2 import model_zoo

    models, samples = [], []
    glip_t = make_demo.cached_glip_t()
    if glip_t is not None:
        models.append(ModelChoice("GLIP-T (official weights)", model_zoo.get_config_file("GLIP-T"), glip_t))
        import matplotlib.cbook

        samples.append([matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False),
                        ". ".join(make_demo.GLIP_T_PROMPT)])
    os.chdir(REPO)  # the synthetic configs name their data and output folders relative to the checkout
    embedded = make_demo.embedded_model()
    if embedded is not None:
        models.append(ModelChoice("embedded model (synthetic colour-shape names)", *embedded,
                                  threshold=make_demo.EMBEDDED_THRESHOLD,
                                  one_phrase_iou=make_demo.EMBEDDED_AGNOSTIC_NMS, one_phrase_default=True))
    tiny = make_demo.cached_tiny_model() or (None if models else make_demo.ensure_tiny_model())
    if tiny is not None:
        models.append(ModelChoice("quick-schedule tiny model", make_demo.TINY_CONFIG, tiny,
                                  threshold=0.3, one_phrase_iou=make_demo.TINY_AGNOSTIC_NMS, one_phrase_default=True))
    if glip_t is None or len(models) > 1:
        record = make_demo.synthetic_sample()
        samples.append([record["file_name"], make_demo.tiny_prompt(record) + "."])
    return models, samples


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default: this machine only)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--weights", default="", help="serve this checkpoint or model-zoo name instead of the defaults")
    p.add_argument("--config-file", default="", help="its config (default: the zoo entry's)")
    p.add_argument("--confidence-threshold", type=float, default=0.5, help="--weights: the threshold shown first")
    p.add_argument("--one-phrase-per-region", type=float, default=None, metavar="IOU",
                   help="--weights: switch 'one phrase per region' on, at this IoU (default: off, at 0.5)")
    p.add_argument("--sample", nargs=2, action="append", default=[], metavar=("IMAGE", "PROMPT"),
                   help="a sample picture and prompt listed under the upload box (repeatable)")
    p.add_argument("--vqa-config", default="", help="a GLIPv2VQA config: adds the 'Ask' tab")
    p.add_argument("--vqa-weights", default="")
    p.add_argument("--caption-config", default="", help="a GLIPv2Caption config: adds the 'Caption' tab")
    p.add_argument("--caption-weights", default="")
    p.add_argument("--max-megapixels", type=float, default=MAX_MEGAPIXELS, help="larger uploads are refused")
    p.add_argument("--opts", default=[], nargs=argparse.REMAINDER, help="config overrides: KEY VALUE pairs")
    return p


def main(argv=None):
    args = get_parser().parse_args(argv)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # a local demo phones nowhere
    from detectron2.utils.logger import setup_logger

    import demo  # noqa: F401  (demo/demo.py: reading, drawing, checks)

    setup_logger(name="glip_d2")
    if args.weights or args.config_file:
        iou = args.one_phrase_per_region
        models = [ModelChoice(os.path.basename(args.weights) or args.config_file, args.config_file, args.weights,
                              threshold=args.confidence_threshold, one_phrase_iou=0.5 if iou is None else iou,
                              one_phrase_default=iou is not None, opts=tuple(args.opts))]
        samples = []
    else:
        models, samples = default_models()
    samples += [[image, prompt] for image, prompt in args.sample]
    vqa = ModelChoice("VQA", args.vqa_config, args.vqa_weights) if args.vqa_config else None
    caption = ModelChoice("captioning", args.caption_config, args.caption_weights) if args.caption_config else None
    app = DemoApp(models, args.max_megapixels, vqa=vqa, caption=caption)
    models[0].predictor()  # the page's default model is ready before the first request (the others on first use)
    page = build_page(app, samples)
    print(f"[app] serving {', '.join(app.models)} on http://{args.host}:{args.port}", flush=True)
    page.queue(default_concurrency_limit=1, max_size=MAX_QUEUE).launch(
        server_name=args.host, server_port=args.port, show_error=True, max_file_size="100mb", quiet=True)


if __name__ == "__main__":
    main()
