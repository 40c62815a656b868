#!/usr/bin/env python
"""Check the datasets of a config (the checks training runs at load time) and draw what the model is given.

    python tools/check_dataset.py --config-file configs/GLIP-T_C.yaml DATASETS.TRAIN '("my_set_train",)'
    python tools/check_dataset.py --config-file CFG --num-vis 8 --output vis/   # + 8 mapped samples per dataset

Prints the report of every dataset of DATASETS.TRAIN and DATASETS.TEST under DATASETS.ON_INVALID: missing or empty
image files (every file is stat-ed; DATASETS.DECODE_CHECK_IMAGES of them are decoded), NaN/negative/zero/outside
boxes, empty or duplicate category names, unknown category ids, caption spans outside the caption. Exit status 1
when training would stop on the data. With --num-vis, samples go through the real ``GroundingDatasetMapper``
(resize, flip, prompt sampling) and are drawn with detectron2's ``Visualizer``: the prompt above the picture, each
box labelled with the prompt words it is positive for (train) or its category / phrase (test).
"""
import argparse
import os
import random
import sys
import textwrap

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import glip_d2  # noqa: F401,E402  (first: detectron2 shims, builtin datasets)

_BAND_FONT, _LINE_PX, _MIN_WIDTH = 0.5, 18, 640


def _validate(cfg, name: str, policy: str):
    """(dicts or None, report, failed) for one dataset."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from glip_d2.data.validation import DatasetValidationError, validate_dataset_dicts

    try:
        dicts, report = validate_dataset_dicts(
            DatasetCatalog.get(name), MetadataCatalog.get(name), policy, name=name,
            decode_sample=cfg.DATASETS.DECODE_CHECK_IMAGES, image_format=cfg.INPUT.FORMAT,
        )
        return dicts, report, False
    except DatasetValidationError as e:
        return None, e.reports[0], True


def _token_phrase(caption: str, encoding, token_ids) -> str:
    """The caption text covered by ``token_ids`` (runs of adjacent characters joined, separate runs with " | ")."""
    spans = sorted(s for s in (encoding.token_to_chars(int(t)) for t in token_ids) if s is not None)
    runs = []
    for start, end in spans:
        if runs and start <= runs[-1][1] + 1:
            runs[-1][1] = max(runs[-1][1], end)
        else:
            runs.append([start, end])
    return " | ".join(caption[s:e] for s, e in runs) or "(no token)"


def _boxes_and_labels(out: dict, record: dict, mapper, classes):
    """Boxes on the mapped image and their labels: token text in training, category / phrase at test time."""
    import numpy as np

    from glip_d2.data.tokens import tokenize_unpadded

    if "instances" in out:
        inst = out["instances"]
        enc = tokenize_unpadded(mapper.tokenizer, out["caption"])
        labels = [_token_phrase(out["caption"], enc, row.nonzero().flatten().tolist()) for row in inst.gt_positive_map]
        return inst.gt_boxes.tensor.numpy(), labels
    from detectron2.structures import BoxMode

    h, w = out["image"].shape[1:]
    sy, sx = h / record.get("height", h), w / record.get("width", w)
    boxes, labels = [], []
    for a in record.get("annotations", []):
        x1, y1, x2, y2 = BoxMode.convert(list(a["bbox"]), a.get("bbox_mode", BoxMode.XYWH_ABS), BoxMode.XYXY_ABS)
        boxes.append([x1 * sx, y1 * sy, x2 * sx, y2 * sy])
        if classes and "category_id" in a:
            labels.append(classes[a["category_id"]])
        else:
            spans = a.get("tokens_positive") or []
            labels.append(" | ".join(record.get("caption", "")[s:e] for s, e in spans))
    return np.asarray(boxes, dtype=np.float32).reshape(-1, 4), labels


def _draw(out: dict, record: dict, mapper, cfg, classes):
    """RGB picture: the mapped image with its boxes (detectron2 Visualizer) under a band holding the prompt."""
    import cv2
    import numpy as np
    from detectron2.data import detection_utils as utils
    from detectron2.utils.visualizer import Visualizer

    image = utils.convert_image_to_rgb(out["image"].permute(1, 2, 0).numpy(), cfg.INPUT.FORMAT)
    boxes, labels = _boxes_and_labels(out, record, mapper, classes)
    scale = max(1.0, _MIN_WIDTH / image.shape[1])
    picture = Visualizer(image, None, scale=scale).overlay_instances(boxes=boxes, labels=labels).get_image()
    if "prompts" in out:
        prompt = f"[prompt 1 of {len(out['prompts'])}] {out['prompts'][0]['caption']}"
    else:
        prompt = out.get("caption", "")
    width = picture.shape[1]
    lines = textwrap.wrap(f"prompt: {prompt}", width=max(20, width // 8)) or [""]
    band = np.full((_LINE_PX * len(lines) + 8, width, 3), 255, dtype=np.uint8)
    for i, line in enumerate(lines):
        cv2.putText(band, line, (4, _LINE_PX * (i + 1)), cv2.FONT_HERSHEY_SIMPLEX, _BAND_FONT, (0, 0, 0), 1,
                    cv2.LINE_AA)
    return np.concatenate([band, picture], axis=0), prompt, len(boxes)


def visualize(cfg, name: str, dicts: list, *, is_train: bool, num: int, output: str, seed: int) -> list[str]:
    """Draw ``num`` records of ``name`` as the model gets them; return the written paths."""
    import cv2
    from detectron2.data import MetadataCatalog

    from glip_d2.data.mapper import GroundingDatasetMapper

    random.seed(seed)  # the training prompt sampler and flips draw from `random`
    mapper = GroundingDatasetMapper(cfg, is_train=is_train, dataset_name=name)
    classes = MetadataCatalog.get(name).get("thing_classes", None)
    os.makedirs(output, exist_ok=True)
    paths = []
    for k, i in enumerate(sorted(random.Random(seed).sample(range(len(dicts)), min(num, len(dicts))))):
        record = dicts[i]
        picture, prompt, num_boxes = _draw(mapper(record), record, mapper, cfg, classes)
        split = "train" if is_train else "test"
        path = os.path.join(output, f"{split}_{name}_{k:03d}_image{record.get('image_id', i)}.jpg")
        cv2.imwrite(path, picture[:, :, ::-1])
        print(f"  {path}: {num_boxes} boxes; prompt {prompt!r}")
        paths.append(path)
    return paths


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--split", choices=("train", "test", "both"), default="both",
                        help="check DATASETS.TRAIN, DATASETS.TEST or both")
    parser.add_argument("--num-vis", type=int, default=0, help="draw N mapped samples of each checked dataset")
    parser.add_argument("--output", default="output/check_dataset", help="folder for the --num-vis pictures")
    parser.add_argument("--seed", type=int, default=0, help="which samples are drawn, and their prompt sampling")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args(argv)

    from glip_d2.data.datasets import register_datasets_from_cfg
    from glip_d2.engine.defaults import load_glip_cfg

    cfg = load_glip_cfg(args.config_file, args.opts)
    register_datasets_from_cfg(cfg)
    splits = {"train": [True], "test": [False], "both": [True, False]}[args.split]
    failed = False
    for is_train in splits:
        for name in dict.fromkeys(cfg.DATASETS.TRAIN if is_train else cfg.DATASETS.TEST):
            dicts, report, bad = _validate(cfg, name, cfg.DATASETS.ON_INVALID)
            failed |= bad
            print(report.summary() + ("\n  => training would stop here (DATASETS.ON_INVALID)" if bad else ""))
            if args.num_vis <= 0:
                continue
            if dicts is None:  # draw what 'skip' would keep
                dicts, _, bad_skip = _validate(cfg, name, "skip")
                if bad_skip:
                    print(f"  ({name}: nothing to draw, the data cannot be used even with DATASETS.ON_INVALID skip)")
                    continue
                print(f"  drawing from what DATASETS.ON_INVALID 'skip' keeps of {name}:")
            visualize(cfg, name, dicts, is_train=is_train, num=args.num_vis, output=args.output, seed=args.seed)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
