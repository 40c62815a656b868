#!/usr/bin/env python
"""A picture of what the VQA and captioning quick schedules do on held-out synthetic pictures: for each picture, a
question from synthetic_vqa_test with the model's answer (and the annotators' answer), and the model's caption.

Train the two quick schedules first (their OUTPUT_DIRs hold the default weights), then
    python tools/understanding_gallery.py --output docs/images/understanding.png
"""
import argparse
import os
import sys
import textwrap

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from detectron2.data import DatasetCatalog  # noqa: E402
from detectron2.data.detection_utils import read_image  # noqa: E402

import glip_d2  # noqa: E402,F401  (registers GLIP's models and datasets)
from glip_d2.engine.defaults import load_glip_cfg  # noqa: E402

VQA_CONFIG = "configs/quick_schedules/glipv2_tiny_vqa_synthetic.yaml"
CAPTION_CONFIG = "configs/quick_schedules/glipv2_tiny_caption_synthetic.yaml"
VQA_SET, CAPTION_SET = "synthetic_vqa_test", "synthetic_captions_test"


def _predictor(config: str, weights: str, vqa: bool = False):
    from glip_d2.data.datasets import register_datasets_from_cfg
    from glip_d2.engine.predictor import GLIPPredictor

    if not os.path.isfile(weights):
        raise FileNotFoundError(f"{weights}: no such checkpoint; train with train_net.py --config-file {config}")
    cfg = load_glip_cfg(config, ["MODEL.WEIGHTS", weights])
    register_datasets_from_cfg(cfg)
    if vqa:
        from glip_d2.engine.vqa_predictor import answer_vocab_from_cfg

        answer_vocab_from_cfg(cfg)  # sizes the head
    return GLIPPredictor(cfg)


def gallery_rows(vqa_weights: str, caption_weights: str, num_pictures: int) -> list[dict]:
    """One row per picture: image (RGB), question, the model's answer and score, the annotators' answer, caption."""
    vqa, captioner = _predictor(VQA_CONFIG, vqa_weights, vqa=True), _predictor(CAPTION_CONFIG, caption_weights)
    captions_by_file = {os.path.basename(r["file_name"]): r for r in DatasetCatalog.get(CAPTION_SET)}
    rows, seen = [], set()
    for record in DatasetCatalog.get(VQA_SET):
        name = os.path.basename(record["file_name"])
        if name in seen or name not in captions_by_file:
            continue
        seen.add(name)
        image = read_image(record["file_name"], format="BGR")
        (answer, score), = vqa.answer(image, record["question"], topk=1)
        caption, _ = captioner.caption(image)
        rows.append({"image": image[:, :, ::-1], "question": record["question"], "answer": answer, "score": score,
                     "truth": record["multiple_choice_answer"], "caption": caption})
        if len(rows) == num_pictures:
            break
    return rows


def draw_gallery(rows: list[dict], output: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(rows), figsize=(3.2 * len(rows), 4.6))
    for ax, row in zip(list(getattr(axes, "flat", [axes])), rows):
        ax.imshow(row["image"])
        ax.set_axis_off()
        mark = "right" if row["answer"] == row["truth"] else f"annotators: {row['truth']}"
        text = (f"Q: {row['question']}\nA: {row['answer']} ({row['score']:.2f}; {mark})\n\n"
                + textwrap.fill(f"caption: {row['caption']}", 38))
        ax.text(0.0, -0.03, text, transform=ax.transAxes, va="top", ha="left", fontsize=8.5)
    fig.suptitle("Held-out synthetic pictures: the VQA and captioning quick schedules (fine-tuned from the embedded model)",
                 fontsize=10)
    fig.subplots_adjust(left=0.02, right=0.98, top=0.9, bottom=0.36, wspace=0.08)
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    fig.savefig(output, dpi=110)
    plt.close(fig)


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vqa-weights", default="output/glipv2_tiny_vqa_synthetic/model_final.pth")
    parser.add_argument("--caption-weights", default="output/glipv2_tiny_caption_synthetic/model_final.pth")
    parser.add_argument("--num-pictures", type=int, default=5)
    parser.add_argument("--output", default="output/understanding.png")
    args = parser.parse_args(argv)
    if args.num_pictures < 1:
        parser.error("--num-pictures must be at least 1")
    rows = gallery_rows(args.vqa_weights, args.caption_weights, args.num_pictures)
    draw_gallery(rows, args.output)
    right = sum(r["answer"] == r["truth"] for r in rows)
    print(f"{len(rows)} pictures, {right} answers as the annotators' majority -> {args.output}")
    return args.output


if __name__ == "__main__":
    main()
